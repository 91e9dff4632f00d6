"""Model hyper-parameters, Meta's published Llama 3 / 3.1 / 3.2 presets, and size/FLOP arithmetic.

Preset values follow Meta's `params.json` files (as listed in `llama_models.sku_list`) and the HF
`config.json` files Meta published; the FFN width is derived the way Meta's reference derives it
(`ffn_dim_multiplier`, `multiple_of`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from herd.errors import ModelError


@dataclass(kw_only=True, slots=True)
class RopeScaling:
    """Llama 3.1 long-context RoPE frequency scaling ("llama3" rope type in HF configs)."""

    factor: float = 8.0
    """Wavelengths longer than the original context are stretched by this factor."""
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192
    """Context length of the model before long-context training."""


@dataclass(kw_only=True, slots=True)
class ModelArgs:
    """Shape of a Llama-architecture decoder. Derived fields are filled in `__post_init__`."""

    dim: int
    """Model (residual stream) width."""
    n_layers: int
    n_heads: int
    """Query heads."""
    n_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); None means n_heads."""
    vocab_size: int
    multiple_of: int = 256
    """SwiGLU hidden width is rounded up to a multiple of this."""
    ffn_dim_multiplier: float | None = None
    ffn_hidden_dim: int | None = None
    """SwiGLU hidden width; derived from dim, ffn_dim_multiplier and multiple_of when None."""
    head_dim: int | None = None
    """Per-head width; dim // n_heads when None (HF configs may set it explicitly)."""
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    tie_embeddings: bool = False
    """Output projection shares the token-embedding matrix (Llama 3.2 1B/3B)."""
    max_seq_len: int = 8192
    """Longest context the model supports; bounds the KV cache."""

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        self._check_sizes("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len", "multiple_of")
        self._check_reals(rope_theta=self.rope_theta, ffn_dim_multiplier=self.ffn_dim_multiplier)
        if self.rope_scaling is not None:
            self._check_reals(**{f"rope_scaling.{k}": v for k, v in dataclasses.asdict(self.rope_scaling).items()})
        if (eps := _real(self.norm_eps)) is None or eps < 0:
            raise ModelError(f"model args: norm_eps must be a finite number >= 0, got {self.norm_eps!r}")
        if self.n_heads % self.n_kv_heads:
            raise ModelError(f"model args: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ModelError(f"model args: dim={self.dim} is not a multiple of n_heads={self.n_heads}")
            self.head_dim = self.dim // self.n_heads
        if self.head_dim % 2:
            raise ModelError(f"model args: head_dim={self.head_dim} must be even for RoPE")
        if self.ffn_hidden_dim is None:
            hidden = int(2 * 4 * self.dim / 3)
            if self.ffn_dim_multiplier is not None:
                hidden = int(self.ffn_dim_multiplier * hidden)
            self.ffn_hidden_dim = self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)
        self._check_sizes("head_dim", "ffn_hidden_dim")

    def _check_sizes(self, *names: str) -> None:
        # Sizes come from files (params.json, config.json, GGUF): 4096.5, true or 0 must not reach torch.empty.
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ModelError(f"model args: {name} must be a positive integer, got {value!r}")

    @staticmethod
    def _check_reals(**values: object) -> None:
        # A config's 1e999 parses as inf, and int(inf * width) would raise OverflowError deep in __post_init__.
        for name, value in values.items():
            if value is not None and ((x := _real(value)) is None or x <= 0):
                raise ModelError(f"model args: {name} must be a finite positive number, got {value!r}")

    def replace(self, **changes: object) -> ModelArgs:
        """A copy with some fields changed; derived fields are recomputed unless given."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.rope_scaling is not None:
            fields["rope_scaling"] = dataclasses.replace(self.rope_scaling)
        if any(k in changes for k in ("dim", "ffn_dim_multiplier", "multiple_of")) and "ffn_hidden_dim" not in changes:
            fields["ffn_hidden_dim"] = None
        if any(k in changes for k in ("dim", "n_heads")) and "head_dim" not in changes:
            fields["head_dim"] = None
        fields.update(changes)
        return ModelArgs(**fields)


def _real(value: object) -> float | None:
    """The value as a float when it is a finite real number (not a bool, inf or nan), else None."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


_LLAMA3_VOCAB = 128256
_ROPE_31 = RopeScaling(factor=8.0)
# Llama 3.2 1B/3B use factor 32 (Meta's published config.json); Meta's llama_models reference
# hard-codes 8: https://github.com/meta-llama/llama-models/issues/241
_ROPE_32 = RopeScaling(factor=32.0)

PRESETS: dict[str, ModelArgs] = {
    "llama3-8b": ModelArgs(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=_LLAMA3_VOCAB,
        multiple_of=1024, ffn_dim_multiplier=1.3, max_seq_len=8192,
    ),
    "llama3-70b": ModelArgs(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=_LLAMA3_VOCAB,
        multiple_of=4096, ffn_dim_multiplier=1.3, max_seq_len=8192,
    ),
    "llama3.1-8b": ModelArgs(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=_LLAMA3_VOCAB,
        multiple_of=1024, ffn_dim_multiplier=1.3, rope_scaling=_ROPE_31, max_seq_len=131072,
    ),
    "llama3.1-70b": ModelArgs(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=_LLAMA3_VOCAB,
        multiple_of=4096, ffn_dim_multiplier=1.3, rope_scaling=_ROPE_31, max_seq_len=131072,
    ),
    "llama3.1-405b": ModelArgs(
        dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, vocab_size=_LLAMA3_VOCAB,
        multiple_of=4096, ffn_dim_multiplier=1.2, rope_scaling=_ROPE_31, max_seq_len=131072,
    ),
    "llama3.2-1b": ModelArgs(
        dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=_LLAMA3_VOCAB,
        multiple_of=256, ffn_dim_multiplier=1.5, rope_scaling=_ROPE_32, tie_embeddings=True, max_seq_len=131072,
    ),
    "llama3.2-3b": ModelArgs(
        dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, vocab_size=_LLAMA3_VOCAB,
        multiple_of=256, ffn_dim_multiplier=1.0, rope_scaling=_ROPE_32, tie_embeddings=True, max_seq_len=131072,
    ),
    # Small shapes for tests and laptop runs.
    "debug": ModelArgs(dim=256, n_layers=6, n_heads=16, n_kv_heads=4, vocab_size=2048, max_seq_len=2048),
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=512),
}  # fmt: skip


def get_preset(name: str) -> ModelArgs:
    if name not in PRESETS:
        raise ModelError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name].replace()


def count_params(args: ModelArgs) -> dict[str, int]:
    """Parameter counts by part, from the shapes alone (nothing is allocated)."""
    # Derived fields, never None once __post_init__ has run; the asserts narrow them for the type checker.
    assert args.n_kv_heads is not None and args.head_dim is not None and args.ffn_hidden_dim is not None
    q_out, kv_out = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    attention = args.dim * q_out * 2 + args.dim * kv_out * 2
    ffn = 3 * args.dim * args.ffn_hidden_dim
    per_layer = attention + ffn + 2 * args.dim
    embedding = args.vocab_size * args.dim
    output = 0 if args.tie_embeddings else args.vocab_size * args.dim
    total = embedding + output + args.n_layers * per_layer + args.dim
    return {"total": total, "embedding": embedding, "output": output, "per_layer": per_layer, "layers": args.n_layers}


def flops_per_token(args: ModelArgs, seq_len: int) -> dict[str, float]:
    """Forward and training FLOPs per token at context length `seq_len`.

    Convention (PaLM appendix B, used by the Llama 3 paper): 2 FLOPs per multiply-add, every weight
    of a matmul counts (the embedding lookup does not, the output projection does), attention scores
    and the weighted sum add 2 * 2 * n_layers * seq_len * (n_heads * head_dim) per token, with no
    discount for the causal mask. Training = 3 x forward (backward costs twice the forward).
    """
    params = count_params(args)
    matmul_params = params["total"] - params["embedding"] - (args.n_layers * 2 + 1) * args.dim
    if args.tie_embeddings:
        matmul_params += params["embedding"]
    assert args.head_dim is not None  # derived in __post_init__
    attention = 4 * args.n_layers * seq_len * args.n_heads * args.head_dim
    forward = 2 * matmul_params + attention
    return {"forward": float(forward), "train": float(3 * forward), "matmul_params": float(matmul_params)}
