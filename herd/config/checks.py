"""Values that cannot work, caught when a config is loaded: each error names the key and the value, so a bad run
fails in its first second. `check` looks only at what the command reads; `check_layout` adds what depends on
the number of ranks, which only the trainer knows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from herd.config.loader import ConfigError

if TYPE_CHECKING:
    from herd.config.job import JobConfig

_TRAINS = ("train", "sft", "rm", "dpo", "ppo")
_POSTTRAIN = ("sft", "rm", "dpo", "ppo", "rs", "synth", "round")
_QUANTS = ("none", "int8", "int4")  # herd.inference.quantize.QUANTS (this package imports no other stage)


def check(cfg: JobConfig, command: str, *, inputs: bool = True) -> None:
    """`inputs=False` leaves out the checks that a model and data files are named (for a caller that hands the
    trainer its model and data in Python)."""
    m, d, o, t, s = cfg.model, cfg.data, cfg.optim, cfg.training, cfg.lr_schedule
    if inputs and command in _POSTTRAIN and not m.init_from:
        raise ConfigError(f"model.init_from is empty: herd {command} starts from a model (an embedded name such as "
                          "smollm2-135m-instruct, an HF/Meta directory or a .gguf)")  # fmt: skip
    if command == "train" and m.init_from and (shape := m.shape()):
        raise ConfigError(f"model.{next(iter(shape))} shapes a new model, but model.init_from={m.init_from!r} "
                          "gives the shape; set one or the other")  # fmt: skip
    if command in (*_TRAINS, "rs"):
        _choice("model.dtype", m.dtype, ("float32", "bfloat16"))
        _choice("training.device", t.device, ("auto", "cpu", "cuda"))
    if command in ("sft", "rm", "dpo", "ppo"):
        _choice("model.export_dtype", m.export_dtype, ("float32", "bfloat16"))
        if cfg.lora.rank < 0:
            raise ConfigError(f"lora.rank must be >= 0, got {cfg.lora.rank}")
    if inputs and command == "train" and not d.shards:
        raise ConfigError("data.shards: no shard directories given (write them with `herd data pack`)")
    if inputs and command in ("sft", "rm", "dpo", "ppo", "rs") and not d.files:
        raise ConfigError(f"data.files: no jsonl files given for herd {command}")
    _choice("data.on_error", d.on_error, ("skip", "stop"))
    if command in ("rm", "dpo") and not 0 <= d.eval_fraction < 1:
        raise ConfigError(f"data.eval_fraction must be in [0, 1), got {d.eval_fraction}")
    if command in (*_TRAINS, "scaling"):
        if o.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        _choice("lr_schedule.decay", s.decay, ("cosine", "linear", "constant"))
        if not 0 <= s.min_lr_ratio <= 1:
            raise ConfigError(f"lr_schedule.min_lr_ratio must be in [0, 1], got {s.min_lr_ratio}")
    if command in _TRAINS:
        _check_run(cfg, command)
    if command == "dpo" and cfg.dpo.beta <= 0:
        raise ConfigError(f"dpo.beta must be > 0, got {cfg.dpo.beta}")
    if command == "ppo":
        _check_ppo(cfg)
    if command == "rs":
        for name in ("samples", "max_new_tokens", "batch_size"):
            _positive(f"rs.{name}", getattr(cfg.rs, name))
        _choice("rs.quant", cfg.rs.quant, _QUANTS)
        if cfg.rs.quant != "none" and t.device == "cuda":
            raise ConfigError(f"rs.quant={cfg.rs.quant!r} samples on herd's CPU decode kernels, but training.device="
                              "'cuda'; set training.device to cpu or auto, or rs.quant to none")  # fmt: skip
    if command == "curate":
        _choice("curate.quality.judge_dtype", cfg.curate.quality.judge_dtype, ("float32", "bfloat16"))
        _choice("curate.quality.judge_quant", cfg.curate.quality.judge_quant, _QUANTS)
    if command in ("synth", "round"):
        _check_synth(cfg)
    if command == "scaling":
        _check_scaling(cfg)


def _check_run(cfg: JobConfig, command: str) -> None:
    t, s = cfg.training, cfg.lr_schedule
    if t.epochs < 0:
        raise ConfigError(f"training.epochs must be >= 0, got {t.epochs}")
    if not t.epochs:
        _positive("training.steps", t.steps)
        if s.warmup_steps < 0 or s.warmup_steps >= t.steps:
            raise ConfigError(f"lr_schedule.warmup_steps={s.warmup_steps} must be in [0, training.steps={t.steps})")
    elif s.warmup_steps < 0:
        raise ConfigError(f"lr_schedule.warmup_steps must be >= 0, got {s.warmup_steps}")
    if command in ("rm", "dpo", "ppo"):
        _positive("training.batch_size", t.batch_size)
        if t.micro_batch_size < 0:
            raise ConfigError(f"training.micro_batch_size must be >= 0, got {t.micro_batch_size}")
    if command in ("rm", "dpo") and t.seq_len < 8:
        raise ConfigError(f"training.seq_len must be >= 8 (prompt + response tokens), got {t.seq_len}")
    _choice("recovery.spike_action", cfg.recovery.spike_action, ("skip", "rollback"))
    _positive("recovery.max_bad_steps", cfg.recovery.max_bad_steps)
    _positive("checkpoint.keep_last", cfg.checkpoint.keep_last)
    for key in ("checkpoint.interval", "metrics.log_interval"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 0:
            raise ConfigError(f"{key} must be >= 0")
    _choice("parallel.pp_schedule", cfg.parallel.pp_schedule, ("1F1B", "GPipe"))
    _choice("metrics.wandb_mode", cfg.metrics.wandb_mode, ("auto", "online", "offline"))
    if command == "train":
        if cfg.data.chunk_tokens < 0 or cfg.data.chunk_tokens == 1:
            raise ConfigError(f"data.chunk_tokens must be 0 (automatic) or at least 2, got {cfg.data.chunk_tokens}")
        if cfg.anneal.tokens < 0:
            raise ConfigError(f"anneal.tokens must be >= 0, got {cfg.anneal.tokens}")
        for key, weights in (("data.weights", cfg.data.weights), ("anneal.weights", cfg.anneal.weights)):
            if bad := [name for name, w in weights.items() if w < 0]:
                raise ConfigError(f"{key}.{bad[0]}={weights[bad[0]]} must be >= 0")


def check_layout(cfg: JobConfig, command: str, *, world_size: int, tp: int, pp: int) -> None:
    """What the parallel layout must divide: world_size is the number of data-parallel ranks (each batch is split
    over them), tp the tensor-parallel ranks (they split every seq_len), pp the pipeline stages."""
    t = cfg.training
    if command == "ppo" and world_size * tp * pp > 1:
        raise ConfigError("herd ppo runs in one process (its rollouts decode on the inference engine over the live "
                          "weights); launch it without torchrun")  # fmt: skip
    if command in ("rm", "dpo", "ppo"):
        if tp > 1 or pp > 1:
            raise ConfigError(f"herd {command} shards over data-parallel ranks only (parallel.dp_shard, "
                              f"dp_replicate); parallel.tp={tp} and parallel.pp={pp} must be 1")  # fmt: skip
        per_rank = t.batch_size // world_size
        if t.batch_size % world_size or (t.micro_batch_size and per_rank % t.micro_batch_size):
            raise ConfigError(f"training.batch_size={t.batch_size} must split into {world_size} data-parallel ranks"
                              + (f" x micro-batches of training.micro_batch_size={t.micro_batch_size}"
                                 if t.micro_batch_size else ""))  # fmt: skip
        return
    stages = [("training", t.batch_tokens, t.seq_len, 0), *(
        (f"training.ramp[{i}]", r.batch_tokens, r.seq_len, r.at_tokens) for i, r in enumerate(t.ramp))]  # fmt: skip
    previous = -1
    for key, batch_tokens, seq_len, at_tokens in stages:
        _positive(f"{key}.seq_len", seq_len)
        _positive(f"{key}.batch_tokens", batch_tokens)
        if seq_len % tp:
            raise ConfigError(f"{key}.seq_len={seq_len} must be a multiple of parallel.tp={tp} "
                              "(sequence parallelism splits it)")  # fmt: skip
        if at_tokens <= previous:
            raise ConfigError(f"{key}.at_tokens={at_tokens} must grow from stage to stage")
        previous = at_tokens
        rows = batch_tokens // seq_len
        if batch_tokens % (seq_len * world_size):
            raise ConfigError(f"{key}.batch_tokens={batch_tokens} is not a multiple of seq_len={seq_len}"
                              + (f" x {world_size} data-parallel ranks" if world_size > 1 else ""))  # fmt: skip
        micro = t.micro_batch_tokens or batch_tokens // world_size
        if micro % seq_len or (rows // world_size) % (micro // seq_len):
            raise ConfigError(f"training.micro_batch_tokens={t.micro_batch_tokens} must be a multiple of {key}.seq_len="
                              f"{seq_len} that divides the {batch_tokens // world_size} tokens per rank")  # fmt: skip
        if pp > 1:
            pp_micro = cfg.parallel.pp_microbatches or pp
            if (rows // world_size) % pp_micro:
                raise ConfigError(f"parallel.pp_microbatches={pp_micro} does not divide the {rows // world_size} "
                                  f"sequences per data-parallel rank of {key}")  # fmt: skip


def _check_ppo(cfg: JobConfig) -> None:
    p = cfg.ppo
    for name in ("epochs", "max_new_tokens"):
        _positive(f"ppo.{name}", getattr(p, name))
    if p.temperature <= 0:
        raise ConfigError(f"ppo.temperature must be > 0 (PPO needs sampled responses), got {p.temperature}")
    if cfg.checkpoint.interval % p.epochs:
        # A checkpoint between two updates on one batch of samples could not replay that batch on resume.
        raise ConfigError(f"checkpoint.interval={cfg.checkpoint.interval} must be a multiple of ppo.epochs="
                          f"{p.epochs} (checkpoints fall between batches of samples)")  # fmt: skip


def _check_synth(cfg: JobConfig) -> None:
    s = cfg.synth
    for name in ("tool_dialogs", "tasks", "rs_prompts", "facts", "eval_tools", "eval_tasks", "eval_facts",
                 "max_tools"):  # fmt: skip
        if getattr(s, name) < 0:
            raise ConfigError(f"synth.{name} must be >= 0, got {getattr(s, name)}")
    for name in ("fact_samples", "max_new_tokens", "batch_size"):
        _positive(f"synth.{name}", getattr(s, name))
    for name in ("no_tool_share", "fact_open_book", "fact_fictitious"):
        if not 0 <= getattr(s, name) <= 1:
            raise ConfigError(f"synth.{name} must be in [0, 1], got {getattr(s, name)}")


def _check_scaling(cfg: JobConfig) -> None:
    s, t = cfg.scaling, cfg.training
    if len(s.sizes) < 3:
        raise ConfigError(f"scaling.sizes has {len(s.sizes)} shapes; an IsoFLOP parabola needs at least 3")
    if len(s.budgets) < 2:
        raise ConfigError(f"scaling.budgets has {len(s.budgets)} budgets; a power law needs at least 2")
    if any(b <= 0 for b in s.budgets) or s.holdout_budget < 0:
        raise ConfigError(f"scaling.budgets must be positive FLOP counts, got {s.budgets}")
    if not 0 < s.val_fraction < 0.5:
        raise ConfigError(f"scaling.val_fraction={s.val_fraction} must be in (0, 0.5)")
    _positive("training.seq_len", t.seq_len)
    if t.batch_tokens % t.seq_len:
        raise ConfigError(f"training.batch_tokens={t.batch_tokens} is not a multiple of seq_len={t.seq_len}")


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(allowed)}")
