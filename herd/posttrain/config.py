"""Config trees of the post-training stages that have their own loop: `herd rm`, `herd dpo`, `herd rs`, `herd ppo`
(`herd sft` uses the pretraining tree, herd/train/config.py, with its [posttrain] section).

They share [job], [model] (the starting model, LoRA and precision), [data] and [optim]; each adds its own section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from herd.config import ConfigError


@dataclass(kw_only=True, slots=True)
class JobSection:
    dump_folder: str = "runs/posttrain"
    """Run directory: config.toml, metrics.jsonl and the exported model (model/) go here."""
    seed: int = 0
    """Seeds LoRA/head initialization, the data order, the held-out split and sampling."""


@dataclass(kw_only=True, slots=True)
class ModelSection:
    init_from: str = ""
    """The model to start from: empty for the embedded smollm2-135m-instruct, an HF/Meta directory or a .gguf."""
    dtype: str = "bfloat16"
    """Compute precision: bfloat16 (autocast over float32 weights, the fast path on CPUs with AVX-512 bf16) or
    float32."""
    lora_rank: int = 0
    """0 trains every weight; > 0 trains rank-r LoRA adapters on `lora_targets` only (merged into the export)."""
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["wq", "wk", "wv", "wo", "w1", "w2", "w3"])
    export_dtype: str = "float32"
    """Precision of the exported model/ directory (float32 or bfloat16)."""


@dataclass(kw_only=True, slots=True)
class DataSection:
    train: list[str] = field(default_factory=list)
    """jsonl files (preference pairs for rm/dpo, prompts for rs/ppo)."""
    eval_fraction: float = 0.1
    """Share of records held out (by a hash of the prompt, so a prompt never sits on both sides)."""
    on_error: str = "skip"
    """A bad jsonl line: skip (counted, reported with file:line) or stop."""
    max_seq_len: int = 512
    """Prompt + response tokens; longer examples are left out and counted."""


@dataclass(kw_only=True, slots=True)
class OptimSection:
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    epochs: float = 1.0
    """Passes over the training examples (steps = epochs x examples / batch_size, rounded up)."""
    batch_size: int = 8
    """Examples (pairs for rm/dpo) per optimizer step."""
    micro_batch_size: int = 4
    """Examples per forward pass; gradients are accumulated up to batch_size."""
    grad_clip: float = 1.0


@dataclass(kw_only=True, slots=True)
class RewardSection:
    margin_edited: bool = True
    """With an `edited` response, also rank edited > chosen and edited > rejected (Llama 3's three-way ranking)."""


@dataclass(kw_only=True, slots=True)
class DPOSection:
    beta: float = 0.1
    """Llama 3 used 0.1."""
    nll_coef: float = 0.2
    """Weight of the NLL term on the chosen response (Llama 3: 0.2)."""


@dataclass(kw_only=True, slots=True)
class RejectionSection:
    reward_model: str = ""
    """A `herd rm` export (its model/ directory); empty scores with the verifiable checker of each prompt."""
    samples: int = 4
    """K responses sampled per prompt (Llama 3: 10-30)."""
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 16
    """Rows decoded together by the engine."""
    output: str = ""
    """The SFT jsonl written (default: <dump_folder>/rs.jsonl)."""


@dataclass(kw_only=True, slots=True)
class PPOSection:
    reward_model: str = ""
    """A `herd rm` export; empty uses the verifiable checker of each prompt's item as the reward."""
    steps: int = 20
    """Sample-then-update rounds."""
    prompts_per_step: int = 8
    """Prompts (one response each) per round."""
    max_new_tokens: int = 32
    """Response length limit; a response cut there gets its score on its last token."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities (policy and reference) are taken at the same temperature."""
    kl_coef: float = 0.05
    """Weight of the per-token KL penalty against the reference model."""
    gamma: float = 1.0
    """Discount per token."""
    lam: float = 0.95
    """GAE lambda."""
    clip_ratio: float = 0.2
    """The probability ratio is clipped to [1 - clip_ratio, 1 + clip_ratio]."""
    value_clip: float = 0.2
    """New values are clipped to within this of the values at sampling time."""
    ppo_epochs: int = 2
    """Optimizer steps on each round's samples (full batch)."""
    value_coef: float = 0.1
    """Weight of the value loss in the total loss."""


@dataclass(kw_only=True, slots=True)
class RewardJobConfig:
    job: JobSection = field(default_factory=lambda: JobSection(dump_folder="runs/rm"))
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    rm: RewardSection = field(default_factory=RewardSection)


@dataclass(kw_only=True, slots=True)
class DPOJobConfig:
    job: JobSection = field(default_factory=lambda: JobSection(dump_folder="runs/dpo"))
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    dpo: DPOSection = field(default_factory=DPOSection)


@dataclass(kw_only=True, slots=True)
class RejectionJobConfig:
    job: JobSection = field(default_factory=lambda: JobSection(dump_folder="runs/rs"))
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=lambda: DataSection(eval_fraction=0.0))
    rs: RejectionSection = field(default_factory=RejectionSection)


@dataclass(kw_only=True, slots=True)
class PPOJobConfig:
    job: JobSection = field(default_factory=lambda: JobSection(dump_folder="runs/ppo"))
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=lambda: DataSection(eval_fraction=0.0))
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=1e-5))
    ppo: PPOSection = field(default_factory=PPOSection)


def check(cfg: RewardJobConfig | DPOJobConfig | RejectionJobConfig | PPOJobConfig) -> None:
    """Raise ConfigError naming the first key whose value cannot work, before anything is loaded or written."""
    m, d = cfg.model, cfg.data
    if m.dtype not in ("bfloat16", "float32"):
        raise ConfigError(f"model.dtype={m.dtype!r}: expected bfloat16 or float32")
    if m.export_dtype not in ("bfloat16", "float32"):
        raise ConfigError(f"model.export_dtype={m.export_dtype!r}: expected bfloat16 or float32")
    if m.lora_rank < 0:
        raise ConfigError(f"model.lora_rank must be >= 0, got {m.lora_rank}")
    if not d.train:
        raise ConfigError("data.train: no jsonl files given")
    if not 0 <= d.eval_fraction < 1:
        raise ConfigError(f"data.eval_fraction must be in [0, 1), got {d.eval_fraction}")
    if d.on_error not in ("skip", "stop"):
        raise ConfigError(f"data.on_error={d.on_error!r}: expected skip or stop")
    if d.max_seq_len < 8:
        raise ConfigError(f"data.max_seq_len must be >= 8, got {d.max_seq_len}")
    o = getattr(cfg, "optim", None)
    if o is not None:
        if o.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
        if o.batch_size < 1 or o.micro_batch_size < 1 or o.batch_size % o.micro_batch_size:
            raise ConfigError(f"optim.batch_size={o.batch_size} must be a positive multiple of "
                              f"optim.micro_batch_size={o.micro_batch_size}")  # fmt: skip
        if o.epochs <= 0:
            raise ConfigError(f"optim.epochs must be > 0, got {o.epochs}")
    if isinstance(cfg, DPOJobConfig) and cfg.dpo.beta <= 0:
        raise ConfigError(f"dpo.beta must be > 0, got {cfg.dpo.beta}")
    if isinstance(cfg, RejectionJobConfig) and cfg.rs.samples < 1:
        raise ConfigError(f"rs.samples must be >= 1, got {cfg.rs.samples}")
    if isinstance(cfg, PPOJobConfig):
        for name in ("steps", "prompts_per_step", "max_new_tokens", "ppo_epochs"):
            if getattr(cfg.ppo, name) < 1:
                raise ConfigError(f"ppo.{name} must be >= 1, got {getattr(cfg.ppo, name)}")
        if cfg.ppo.temperature <= 0:
            raise ConfigError(f"ppo.temperature must be > 0 (PPO needs sampled responses), got {cfg.ppo.temperature}")
