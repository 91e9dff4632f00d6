"""The sections that belong to one stage each: what the shared sections (herd/config/sections.py) do not say.

[rm] [dpo] [ppo] [rs]    post-training objectives and rejection sampling
[synth] [round]          post-training data and the whole round
[curate] [pack]          data curation and token shards
[scaling]                IsoFLOP sweeps
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# Post-training


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
    """A `herd rm` export (its model/ directory) that ranks the samples; prompts with a verifiable item are
    ranked by their checker first and by the reward model among samples the checker scores alike. Empty: the
    checkers alone."""
    samples: int = 4
    """K responses sampled per prompt (Llama 3: 10-30)."""
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 16
    """Rows decoded together by the engine."""
    quant: str = "none"
    """Weights of the sampling model: none (herd's Transformer in model.dtype on training.device), or int8 / int4
    (weight-only, on herd's CPU decode kernels, so training.device is auto or cpu; model.dtype sets the weights
    that stay unquantized). The reward model scores as without it."""


@dataclass(kw_only=True, slots=True)
class PPOSection:
    reward_model: str = ""
    """A `herd rm` export; empty uses the verifiable checker of each prompt's item as the reward."""
    epochs: int = 2
    """Optimizer steps on each batch of sampled responses before the next batch is sampled (so training.steps
    = rollouts x epochs, and checkpoint.interval must be a multiple of it)."""
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
    value_coef: float = 0.1
    """Weight of the value loss in the total loss."""


@dataclass(kw_only=True, slots=True)
class SynthSection:
    tool_dialogs: int = 160
    no_tool_share: float = 0.1
    """Share of tool dialogs whose request needs no tool (so the model does not call tools blindly)."""
    max_tools: int = 2
    """Tools offered per dialog (0: a random subset of all); short prompts keep CPU runs fast."""
    tasks: int = 240
    """Verifiable-task SFT dialogs (the answer as the assistant turn)."""
    rs_prompts: int = 64
    """Train-split task and tool prompts written to prompts.jsonl for rejection sampling / PPO."""
    facts: int = 96
    """Train-split closed-book fact questions probed (open-book variants come on top)."""
    fact_samples: int = 3
    fact_open_book: float = 1.0
    """Share of real fact questions also asked with their snippet in the prompt (answerable from context)."""
    fact_fictitious: float = 0.15
    fact_families: list[str] = field(
        default_factory=lambda: [
            "language", "currency", "continent", "time_unit", "unit", "weekday", "opposite", "month", "http_status",
        ]
    )  # fmt: skip
    """Fact families probed. Everyday closed-book knowledge (language, currency, continent, time_unit, unit,
    weekday, opposite, arithmetic; held-out questions phrased unlike the train ones) and reference data
    (http_status, html_entity, unicode_name, errno, mime_type, month). The default mixes families where a small
    model knows part of the answers, so the probe finds knowledge to keep as well as gaps to refuse, with one
    family it barely knows (HTTP reason phrases). Arithmetic is left out: the verifiable tasks teach it as a skill,
    and refusing "what is 7 times 8?" would contradict them."""
    max_new_tokens: int = 32
    batch_size: int = 32
    """Rows decoded together when probing and evaluating."""
    eval_tools: int = 24
    eval_tasks: int = 36
    eval_facts: int = 36
    """Closed-book held-out questions (open-book variants come on top)."""


@dataclass(kw_only=True, slots=True)
class RoundSection:
    sft_config: str = "configs/posttrain/sft.toml"
    """Each stage's own settings (optimizer, steps, batch...); the round sets where they read and write."""
    rm_config: str = "configs/posttrain/rm.toml"
    rs_config: str = "configs/posttrain/rs.toml"
    dpo_config: str = "configs/posttrain/dpo.toml"
    eval_max_new_tokens: int = 48
    average: bool = False
    """Also average the SFT and DPO models (`herd ckpt average`) and evaluate the average. Off by default: on the
    shipped round the average takes back part of what DPO's answer-over-refusal pairs fixed (README)."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(kw_only=True, slots=True)
class UrlSection:
    enabled: bool = True
    blocklist: str | None = None
    """File of blocked domains, one per line; None uses herd/data/lists/url_blocklist.txt."""
    allowlist: str | None = None
    banned_substrings: str | None = None


@dataclass(kw_only=True, slots=True)
class LanguageSection:
    enabled: bool = True
    languages: list[str] = field(default_factory=list)
    """Languages to keep (ISO 639-1); empty keeps every language that passes its threshold."""
    min_score: float = 0.5
    """Minimum lid.176 confidence to keep a document."""
    thresholds: dict[str, float] = field(default_factory=dict)
    """Per-language minimum confidence, overriding min_score."""


@dataclass(kw_only=True, slots=True)
class DedupSection:
    url: bool = True
    exact: bool = True
    minhash: bool = True
    minhash_min_jaccard: float = 0.5
    lines: bool = True
    line_threshold: int = 6
    """Lines found in more than this many documents of a bucket are removed (Llama 3: 6 per 30M documents)."""
    line_buckets: int = 1
    semantic: bool = False
    semantic_threshold: float = 0.95


@dataclass(kw_only=True, slots=True)
class HeuristicsSection:
    enabled: bool = True
    """Gopher/C4 quality rules and Gopher repetition rules."""
    languages: list[str] = field(default_factory=lambda: ["en"])
    """The prose rules are written for these languages; other documents skip them."""
    dirty_words: bool = True
    dirty_max_fraction: float = 0.03
    token_kl: bool = True
    token_kl_quantile: float = 0.99
    """Documents whose token-distribution KL divergence exceeds this quantile of the fitting sample are dropped."""


@dataclass(kw_only=True, slots=True)
class QualitySection:
    domain: bool = True
    """Tag documents with code / math / general / multilingual (classifier trained on heuristic seed labels)."""
    enabled: bool = True
    """Score documents with a fast classifier trained on an LLM judge's labels."""
    classifier: str | None = None
    """A saved quality classifier to use instead of training one."""
    judge: str = "smollm2-135m-instruct"
    """Model that labels the training sample (an embedded name or a checkpoint path)."""
    judge_sample: int = 160
    judge_dtype: str = "bfloat16"
    """The judge's weights: bfloat16 (the fast CPU path for its long prompts) or float32."""
    judge_quant: str = "none"
    """none, or int8 / int4: weight-only quantized judge on herd's decode kernels (the judge only scores: one
    forward per batch, no generation)."""
    threshold: float | None = None
    """Drop documents whose quality score (0..1) is below this; None only scores them."""


@dataclass(kw_only=True, slots=True)
class CurateSection:
    input: list[str] = field(default_factory=list)
    """jsonl / HTML / text files or directories."""
    tasks: int = 4
    """Shards of work; the output depends on this, not on workers."""
    workers: int = 1
    executor: str = "local"
    """local (datatrove's LocalPipelineExecutor) or ray (RayPipelineExecutor on the cluster at ray_address)."""
    ray_address: str | None = None
    """Ray cluster to join ("auto", "ray://host:10001"); None starts a local Ray instance."""
    text_field: str = "text"
    id_field: str = "id"
    max_doc_bytes: int = 1 << 21
    """Larger documents are skipped and counted."""
    fit_sample: int = 2000
    """Documents (the first, in a fixed order) used to fit the token reference and the domain classifier."""
    extract: bool = True
    pii: bool = True
    url: UrlSection = field(default_factory=UrlSection)
    language: LanguageSection = field(default_factory=LanguageSection)
    dedup: DedupSection = field(default_factory=DedupSection)
    heuristics: HeuristicsSection = field(default_factory=HeuristicsSection)
    quality: QualitySection = field(default_factory=QualitySection)


@dataclass(kw_only=True, slots=True)
class PackSection:
    input: list[str] = field(default_factory=list)
    """jsonl files or directories of them (one document per line, a text field, optional source)."""
    tokenizer: str = "llama3"
    """llama3, a tokenizer.model / tokenizer.json path, a model directory or a .gguf file."""
    text_field: str = "text"
    source_field: str = "source"
    """Record field (or metadata key) that names a document's source; "domain" groups by the domain tagger."""
    default_source: str = "default"
    shard_tokens: int = 1 << 24
    """Approximate tokens per shard file."""
    bos: bool = True
    eos: bool = True
    mix: str = ""
    """Target weights per source ("general=0.5,math=0.25,code=0.17,multilingual=0.08" or "llama3"): reported, with
    the epochs each source needs, for a budget of mix_tokens."""
    mix_tokens: int = 0
    """Training budget for the mix report; 0 means the packed total."""


# ---------------------------------------------------------------------------------------------
# Scaling laws


@dataclass(kw_only=True, slots=True)
class SweepSize:
    dim: int
    n_layers: int
    n_heads: int = 0
    """0 means dim // 16 (head width 16)."""
    n_kv_heads: int = 0
    """0 means half the query heads (at least 1)."""


def _default_sizes() -> list[SweepSize]:
    return [SweepSize(dim=d, n_layers=n) for d, n in ((32, 2), (48, 2), (64, 3), (96, 4), (128, 4))]


@dataclass(kw_only=True, slots=True)
class ScalingSection:
    """The sweep's own settings; each run trains with [optim], [lr_schedule] and [training] (seq_len,
    batch_tokens), on [pack]'s input packed with its tokenizer."""

    budgets: list[float] = field(default_factory=lambda: [6e11, 1.2e12, 2.4e12])
    """Training FLOPs per IsoFLOP curve (herd's FLOPs count, attention included)."""
    holdout_budget: float = 6e12
    """A larger budget trained after the sweep at the fit's predicted optimal shape; 0 = none."""
    sizes: list[SweepSize] = field(default_factory=_default_sizes)
    """Model shapes trained at every budget (the vocabulary comes from the tokenizer)."""
    val_fraction: float = 0.05
    """Share of documents held out for validation loss and the downstream task."""
    warmup_fraction: float = 0.1
    """Warmup as a share of each run's steps (runs differ in length)."""
    eval_batches: int = 16
    """Validation batches (of training.batch_tokens) for the validation loss."""
    task_items: int = 300
    task_distractors: str = "other"
    """Where the task's wrong answers come from: other (other sources), any, or same (the same source)."""
