"""The sections every training stage shares. Each keeps one meaning in every command that reads it:

    [job]           where the stage writes and how it is seeded
    [model]         the model: a new one from a preset and shape, or the weights of `init_from`; compute precision
    [lora]          low-rank adapters instead of full fine-tuning
    [data]          what the stage reads: token shards (pretraining) or jsonl files (post-training)
    [optim]         AdamW
    [lr_schedule]   warmup, decay, floor
    [training]      how long, how big a batch, how long a sequence, on which device
    [parallel]      the torchrun mesh
    [anneal]        pretraining's final phase
    [checkpoint]    DCP checkpoints and resume
    [metrics]       metrics.jsonl, TensorBoard, console
    [recovery]      NaN and loss-spike handling
    [faults]        injected faults for drills

A command reads some sections (and some keys of them): herd/config/commands.py says which, so a key that the
command would ignore is an error instead of a setting that silently has no effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True, slots=True)
class JobSection:
    dump_folder: str = "runs/job"
    """Run directory: everything the command writes (config.toml, metrics, checkpoints, outputs) goes here."""
    seed: int = 0
    """Seeds the weights, the data order, held-out splits and sampling."""
    deterministic: bool = True
    """Ask torch for deterministic kernels (bit-identical resume on CPU needs nothing else)."""


@dataclass(kw_only=True, slots=True)
class ModelSection:
    init_from: str = ""
    """Start from these weights: an embedded model's name (smollm2-135m-instruct), an HF or Meta directory, or a
    .gguf file. Empty: a new model from `preset` and the shape keys below."""
    preset: str = "tiny"
    """A preset of `herd model info` (tiny, debug, llama3-8b, ...) for a new model; the keys below override it."""
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
    """Standard deviation of a new model's initial weights."""
    dtype: str = "float32"
    """Compute precision: float32, or bfloat16 (autocast; master weights and optimizer state stay float32; the
    fast path on CPUs with AVX-512 bf16 and on GPUs)."""
    export_dtype: str = "float32"
    """Precision of the exported model/ directory (float32 or bfloat16)."""

    def shape(self) -> dict[str, int | float | bool]:
        """The shape keys that were set."""
        keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim_multiplier", "multiple_of", "rope_theta",
                "tie_embeddings", "max_seq_len")  # fmt: skip
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass(kw_only=True, slots=True)
class LoraSection:
    rank: int = 0
    """0 trains every weight; > 0 trains rank-r adapters on `targets` only (merged into the export)."""
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["wq", "wk", "wv", "wo", "w1", "w2", "w3"])
    last_layers: int = 0
    """> 0: adapters on the last that many blocks only (the backward pass stops there: faster); 0: every block."""


@dataclass(kw_only=True, slots=True)
class DataSection:
    shards: list[str] = field(default_factory=list)
    """Pretraining: directories written by `herd data pack` (their tokenizers must agree)."""
    weights: dict[str, float] = field(default_factory=dict)
    """Pretraining: mix weight per source name; empty means in proportion to each source's tokens."""
    chunk_tokens: int = 0
    """Pretraining: documents are cut into chunks of at most this many tokens, shuffled within each shard; 0 means
    the longest sequence of the schedule (+1 for the shifted target), so a chunk fills at most one sequence."""
    files: list[str] = field(default_factory=list)
    """Post-training: jsonl files of dialogs (sft), preference pairs (rm, dpo) or prompts (rs, ppo)."""
    eval_fraction: float = 0.1
    """Share of pairs held out for evaluation (by a hash of the prompt, so a prompt never sits on both sides)."""
    on_error: str = "skip"
    """A bad jsonl line: skip (counted, reported with file:line) or stop."""


@dataclass(kw_only=True, slots=True)
class OptimSection:
    lr: float = 3e-4
    """Peak learning rate (Llama 3 405B pretraining: 8e-5; its DPO: 1e-5)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norms: bool = False
    """Apply weight decay to RMSNorm weights too."""
    decay_embeddings: bool = False
    """Apply weight decay to the token embeddings (and a tied output) too."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    fused: bool = True
    """AdamW as one fused kernel per parameter group (torch's fused=True), not a loop over tensors (foreach): on a
    CPU one step over 135M parameters takes 0.1 s fused against 0.45-1.2 s foreach (benchmarks/README.md)."""


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
    epochs: float = 0.0
    """Passes over the examples (rm, dpo): when > 0, steps = ceil(epochs x examples / batch_size)."""
    seq_len: int = 256
    """Tokens per row (train, sft); for rm and dpo the longest prompt + response kept (longer pairs are counted
    and left out)."""
    batch_tokens: int = 8192
    """Tokens per optimizer step over all ranks (train, sft: batch_tokens / seq_len rows)."""
    micro_batch_tokens: int = 0
    """Tokens per forward/backward on one rank; the rest is gradient accumulation. 0 means no accumulation."""
    ramp: list[RampStage] = field(default_factory=list)
    """Later stages of (batch_tokens, seq_len), as `[[training.ramp]] at_tokens = ..., batch_tokens = ...`."""
    batch_size: int = 8
    """Examples per optimizer step over all ranks (rm, dpo: pairs; ppo: sampled responses)."""
    micro_batch_size: int = 0
    """Examples per forward/backward on one rank; the rest is gradient accumulation. 0 means no accumulation."""
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
    wandb: bool = False
    """Also log to Weights & Biases (rank 0; needs the wandb extra: pip install 'herd[wandb]')."""
    wandb_project: str = "herd"
    """The W&B project. The run is named after the last part of job.dump_folder, which keeps its id in wandb_id."""
    wandb_mode: str = "auto"
    """auto (online when WANDB_API_KEY is set, else offline), online or offline. Offline runs stay in
    <dump_folder>/wandb for `wandb sync`."""


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
