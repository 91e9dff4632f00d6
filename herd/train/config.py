"""`herd train` config: one dataclass tree, loaded from TOML with `--section.key=value` overrides.

Sizes follow the paper's vocabulary: a batch is counted in tokens (Llama 3: 4M tokens of 4K-token sequences,
then 8M of 8K, then 16M), the ramp raises both at given token counts, and the anneal phase is the last tokens.
`TrainJobConfig.check()` validates everything that can be checked before a model is built, so a bad run fails
in the first second with the key it is about.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from herd.config import ConfigError
from herd.model import PRESETS


@dataclass(kw_only=True, slots=True)
class JobSection:
    dump_folder: str = "runs/pretrain"
    """Run directory: config.toml, metrics.jsonl, events.jsonl, tensorboard/ and checkpoints/ go here."""
    seed: int = 0
    """Seeds the weights and the data order."""
    deterministic: bool = True
    """Ask torch for deterministic kernels (bit-identical resume on CPU needs nothing else)."""


@dataclass(kw_only=True, slots=True)
class ModelSection:
    preset: str = "tiny"
    """A preset of `herd model info` (tiny, debug, llama3-8b, ...); the fields below override its shape."""
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    ffn_dim_multiplier: float | None = None
    multiple_of: int | None = None
    rope_theta: float | None = None
    tie_embeddings: bool | None = None
    max_seq_len: int | None = None
    """Defaults to the longest sequence the schedule uses."""
    init_std: float = 0.02


@dataclass(kw_only=True, slots=True)
class DataSection:
    shards: list[str] = field(default_factory=list)
    """Directories written by `herd data pack` (their tokenizers must agree; the model takes its vocabulary)."""
    weights: dict[str, float] = field(default_factory=dict)
    """Mix weight per source name; empty means in proportion to each source's tokens."""
    chunk_tokens: int = 0
    """Documents are cut into chunks of at most this many tokens, shuffled within each shard; 0 means the longest
    sequence of the schedule (+1 for the shifted target), so a chunk fills at most one sequence."""


@dataclass(kw_only=True, slots=True)
class OptimSection:
    lr: float = 3e-4
    """Peak learning rate (Llama 3 405B: 8e-5)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norms: bool = False
    """Apply weight decay to RMSNorm weights too."""
    decay_embeddings: bool = False
    """Apply weight decay to the token embeddings (and a tied output) too."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""


@dataclass(kw_only=True, slots=True)
class ScheduleSection:
    warmup_steps: int = 100
    """Linear warmup from 0 to optim.lr (Llama 3 405B: 8000)."""
    decay: str = "cosine"
    """cosine, linear or constant, from the end of warmup to the anneal phase (or the last step)."""
    min_lr_ratio: float = 0.1
    """Floor of the decay as a fraction of optim.lr (Llama 3 405B: 8e-7 / 8e-5 = 0.01)."""


@dataclass(kw_only=True, slots=True)
class RampStage:
    at_tokens: int
    """Training tokens after which this stage starts."""
    batch_tokens: int
    seq_len: int


@dataclass(kw_only=True, slots=True)
class TrainingSection:
    steps: int = 200
    """Optimizer steps."""
    seq_len: int = 256
    batch_tokens: int = 8192
    """Tokens per optimizer step over all ranks (batch_tokens / seq_len sequences)."""
    micro_batch_tokens: int = 0
    """Tokens per forward/backward on one rank; the rest is gradient accumulation. 0 means no accumulation."""
    ramp: list[RampStage] = field(default_factory=list)
    """Later stages of (batch_tokens, seq_len), as `[[training.ramp]] at_tokens = ..., batch_tokens = ...`."""
    dtype: str = "float32"
    """float32, or bfloat16 (autocast; master weights and optimizer state stay float32)."""
    compile: bool = False
    """torch.compile each transformer block."""
    activation_checkpoint: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them."""
    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""


@dataclass(kw_only=True, slots=True)
class ParallelSection:
    """The mesh under torchrun (see herd/parallel/dims.py); one process ignores it."""

    dp_replicate: int = 1
    """Whole-model replicas (HSDP with dp_shard); 2 or more enables the silent-data-corruption check."""
    dp_shard: int = -1
    """FSDP2 shards; -1 fills what the other axes leave of the world size."""
    tp: int = 1
    """Tensor parallel (DTensor plans for attention and MLP, sequence parallel on the norms)."""
    pp: int = 1
    """Pipeline stages: the model split by layers, one stage per rank (torch.distributed.pipelining)."""
    pp_schedule: str = "1F1B"
    """1F1B (one forward, one backward in turn: at most pp micro-batches of activations) or GPipe."""
    pp_microbatches: int = 0
    """Micro-batches a data-parallel rank's rows are cut into for the pipeline; 0 means pp. The bubble, the
    idle share of a step, is (pp - 1) / (microbatches + pp - 1)."""
    reshard_after_forward: bool = True
    """FSDP2 frees gathered parameters after each block's forward (less memory, one more all-gather)."""
    sdc_check_interval: int = 0
    """Every this many steps, data-parallel replicas compare parameter checksums. 0 = off."""
    watchdog_timeout: float = 0.0
    """Seconds a step may take before every rank dumps its stacks and exits for torchrun to restart. 0 = off."""


@dataclass(kw_only=True, slots=True)
class AnnealSection:
    tokens: int = 0
    """Anneal over the last this many tokens: learning rate linearly to 0 (Llama 3: the final 40M). 0 = off."""
    weights: dict[str, float] = field(default_factory=dict)
    """Mix weights during the anneal (upsample the high-quality sources); empty keeps data.weights."""


@dataclass(kw_only=True, slots=True)
class CheckpointSection:
    interval: int = 100
    """Save every this many steps (and always at the end). 0 saves only at the end."""
    keep_last: int = 3
    """Keep this many latest checkpoints; older ones are deleted once a newer one is complete."""
    resume: bool = True
    """Continue from the latest complete checkpoint in the run directory, if any."""
    async_save: bool = False
    """Write checkpoints from a background thread (DCP async_save) while training goes on."""


@dataclass(kw_only=True, slots=True)
class MetricsSection:
    log_interval: int = 10
    """Console line every this many steps when the console is not a terminal (a terminal gets a progress bar)."""
    tensorboard: bool = True
    progress: bool = True
    """A progress bar when the console is a terminal (off for runs driven by another tool, such as sweeps)."""
    peak_tflops: float = 0.0
    """Peak matmul TFLOP/s for MFU; 0 measures this machine's peak for the training dtype at start-up."""


@dataclass(kw_only=True, slots=True)
class RecoverySection:
    max_bad_steps: int = 3
    """Non-finite loss or gradients skip the update; this many in a row roll back to the last checkpoint."""
    spike_factor: float = 3.0
    """A loss above spike_factor x its running mean is a spike. 0 turns spike detection off."""
    spike_action: str = "skip"
    """skip (drop the update) or rollback (to the last checkpoint, skipping the batch)."""
    spike_warmup: int = 20
    """Good steps before spikes are looked for (the loss falls fast at first)."""
    max_rollbacks: int = 10
    """Stop with an error after this many rollbacks in one run."""


@dataclass(kw_only=True, slots=True)
class FaultsSection:
    """Injected faults, for drills and tests. Batches are numbered from 0 in the order the loader draws them."""

    nan_grad_batches: list[int] = field(default_factory=list)
    """Put NaN into the gradients computed on these batches."""
    spike_batches: list[int] = field(default_factory=list)
    """Multiply the loss (and so the gradients) of these batches by spike_scale."""
    spike_scale: float = 100.0
    kill_at_step: int = 0
    """SIGKILL rank kill_rank at the start of this step (first launch only, not after a torchrun restart)."""
    kill_rank: int = 0
    corrupt_at_step: int = 0
    """Add noise to one parameter of rank corrupt_rank after this step (a silent data corruption)."""
    corrupt_rank: int = 0
    hang_at_step: int = 0
    """Rank kill_rank sleeps at the start of this step, for the watchdog to catch (first launch only)."""


@dataclass(kw_only=True, slots=True)
class PosttrainSection:
    """Fine-tuning a model on dialogs instead of pretraining on shards (`herd sft`)."""

    init_from: str = ""
    """The model to start from: an embedded name (smollm2-135m-instruct), an HF/Meta directory or a .gguf file."""
    sft_data: list[str] = field(default_factory=list)
    """jsonl files of dialogs ({"messages": [...]}); the loss is on the assistant turns only."""
    on_error: str = "skip"
    """A bad jsonl line: skip (counted, reported with file:line) or stop."""
    lora_rank: int = 0
    """0 trains every weight; > 0 trains rank-r LoRA adapters only (one process), merged into the export."""
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["wq", "wk", "wv", "wo", "w1", "w2", "w3"])


@dataclass(kw_only=True, slots=True)
class TrainJobConfig:
    job: JobSection = field(default_factory=JobSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    lr_schedule: ScheduleSection = field(default_factory=ScheduleSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    anneal: AnnealSection = field(default_factory=AnnealSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    recovery: RecoverySection = field(default_factory=RecoverySection)
    faults: FaultsSection = field(default_factory=FaultsSection)
    posttrain: PosttrainSection = field(default_factory=PosttrainSection)

    def check(self, *, world_size: int = 1, tp: int = 1) -> None:
        """Raise ConfigError naming the key of the first value that cannot work (world_size: data-parallel
        ranks, which must divide every batch; tp: tensor-parallel ranks, which must divide every seq_len)."""
        t, o, s = self.training, self.optim, self.lr_schedule
        _positive("training.steps", t.steps)
        _choice("training.dtype", t.dtype, ("float32", "bfloat16"))
        _choice("training.device", t.device, ("auto", "cpu", "cuda"))
        _choice("lr_schedule.decay", s.decay, ("cosine", "linear", "constant"))
        _choice("recovery.spike_action", self.recovery.spike_action, ("skip", "rollback"))
        if self.model.preset not in PRESETS:
            raise ConfigError(f"model.preset={self.model.preset!r}: unknown; presets are {', '.join(PRESETS)}")
        _choice("posttrain.on_error", self.posttrain.on_error, ("skip", "stop"))
        if not self.data.shards and not self.posttrain.sft_data:
            raise ConfigError("data.shards: no shard directories given (write them with `herd data pack`)")
        if o.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        if not 0 <= s.min_lr_ratio <= 1:
            raise ConfigError(f"lr_schedule.min_lr_ratio must be in [0, 1], got {s.min_lr_ratio}")
        if s.warmup_steps < 0 or s.warmup_steps >= t.steps:
            raise ConfigError(f"lr_schedule.warmup_steps={s.warmup_steps} must be in [0, training.steps={t.steps})")
        for key, weights in (("data.weights", self.data.weights), ("anneal.weights", self.anneal.weights)):
            if bad := [name for name, w in weights.items() if w < 0]:
                raise ConfigError(f"{key}.{bad[0]}={weights[bad[0]]} must be >= 0")
        stages = [("training", RampStage(at_tokens=0, batch_tokens=t.batch_tokens, seq_len=t.seq_len)), *(
            (f"training.ramp[{i}]", r) for i, r in enumerate(t.ramp))]  # fmt: skip
        previous = -1
        for key, stage in stages:
            _positive(f"{key}.seq_len", stage.seq_len)
            _positive(f"{key}.batch_tokens", stage.batch_tokens)
            if stage.seq_len % tp:
                raise ConfigError(f"{key}.seq_len={stage.seq_len} must be a multiple of parallel.tp={tp} "
                                  "(sequence parallelism splits it)")  # fmt: skip
            if stage.at_tokens <= previous:
                raise ConfigError(f"{key}.at_tokens={stage.at_tokens} must grow from stage to stage")
            previous = stage.at_tokens
            rows = stage.batch_tokens // stage.seq_len
            if stage.batch_tokens % (stage.seq_len * world_size):
                raise ConfigError(
                    f"{key}.batch_tokens={stage.batch_tokens} is not a multiple of seq_len={stage.seq_len}"
                    + (f" x {world_size} data-parallel ranks" if world_size > 1 else "")
                )
            micro = t.micro_batch_tokens or stage.batch_tokens // world_size
            if micro % stage.seq_len or (rows // world_size) % (micro // stage.seq_len):
                raise ConfigError(
                    f"training.micro_batch_tokens={t.micro_batch_tokens} must be a multiple of {key}.seq_len="
                    f"{stage.seq_len} that divides the {stage.batch_tokens // world_size} tokens per rank"
                )
        if self.data.chunk_tokens < 0 or self.data.chunk_tokens == 1:
            raise ConfigError(f"data.chunk_tokens must be 0 (automatic) or at least 2, got {self.data.chunk_tokens}")
        if self.anneal.tokens < 0:
            raise ConfigError(f"anneal.tokens must be >= 0, got {self.anneal.tokens}")
        for key in ("checkpoint.interval", "metrics.log_interval"):
            section, name = key.split(".")
            if getattr(getattr(self, section), name) < 0:
                raise ConfigError(f"{key} must be >= 0")
        _choice("parallel.pp_schedule", self.parallel.pp_schedule, ("1F1B", "GPipe"))
        if self.parallel.pp > 1:
            micro = self.parallel.pp_microbatches or self.parallel.pp
            for key, stage in stages:
                rows = stage.batch_tokens // stage.seq_len // world_size
                if rows % micro:
                    raise ConfigError(f"parallel.pp_microbatches={micro} does not divide the {rows} sequences per "
                                      f"data-parallel rank of {key}")  # fmt: skip
        _positive("checkpoint.keep_last", self.checkpoint.keep_last)
        _positive("recovery.max_bad_steps", self.recovery.max_bad_steps)


def _positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(allowed)}")
