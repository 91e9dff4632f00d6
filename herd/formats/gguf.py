"""GGUF (llama.cpp's format): read Llama-architecture models into herd's args and state dict.

Parsing and dequantization go through the `gguf` package. Format facts follow the GGUF spec
(ggml `docs/gguf.md`) and the conventions of llama.cpp's `convert_hf_to_gguf.py`:
- Tensor dims are listed innermost first (ggml's `ne` order), so an (out, in) weight is stored as
  [in, out]; quant blocks run along `in`, the contiguous dim.
- `attn_q` / `attn_k` are stored in Meta's interleaved-pair RoPE layout (the converter permutes HF
  weights back), which is herd's layout: no permutation here. The logits parity test against
  transformers' GGUF loader checks this.
- Llama 3.1 RoPE scaling is not stored as keys: the converter writes a `rope_freqs.weight` tensor
  of per-frequency divisors (llama.cpp rotates by base_freq / divisor) and no `rope.scaling.*`
  key. `_rope_scaling` recovers herd's `RopeScaling` from it; see [Note: rope_freqs].
- With `keep_packed`, Q8_0 / Q4_0 / Q4_1 / Q4_K matrices are read into `PackedWeight` straight from
  their block bytes (`_to_packed`), never dequantized; see [Note: packed GGUF blocks].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, overload

import gguf
import numpy as np
import torch

from herd.errors import CheckpointError, ModelError
from herd.formats.common import expected_shapes
from herd.formats.packed import GROUP, PackedWeight, pack_int4
from herd.ggufio import open_gguf, read_metadata
from herd.model import ModelArgs, RopeScaling
from herd.model.llama import rope_frequencies

ROPE_FREQS = "rope_freqs.weight"

# herd (Meta) name -> GGUF name; per-layer names get the "blk.{i}." prefix.
_TOP_NAMES = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}
_LAYER_NAMES = {
    "attention.wq.weight": "attn_q.weight",
    "attention.wk.weight": "attn_k.weight",
    "attention.wv.weight": "attn_v.weight",
    "attention.wo.weight": "attn_output.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
    "attention_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}

# Defaults llama.cpp applies when a key is absent.
_DEFAULT_ROPE_THETA = 10000.0
# convert_hf_to_gguf.py builds rope_freqs with these Llama 3.1 defaults (it reads the original
# context from a top-level HF key that Meta's configs do not set, so 8192 is what real files use).
_LLAMA31_LOW, _LLAMA31_HIGH, _LLAMA31_ORIGINAL = 1.0, 4.0, 8192
_ROPE_RTOL = 1e-4


# Overloads so that callers not asking for packed weights keep a dict of plain tensors.
@overload
def read_gguf(
    path: str | Path, *, dtype: torch.dtype = ..., keep_packed: Literal[False] = ...
) -> tuple[ModelArgs, dict[str, torch.Tensor], dict[str, Any]]: ...
@overload
def read_gguf(
    path: str | Path, *, dtype: torch.dtype = ..., keep_packed: bool
) -> tuple[ModelArgs, dict[str, torch.Tensor | PackedWeight], dict[str, Any]]: ...
def read_gguf(
    path: str | Path, *, dtype: torch.dtype = torch.float32, keep_packed: bool = False
) -> (
    tuple[ModelArgs, dict[str, torch.Tensor], dict[str, Any]]
    | tuple[ModelArgs, dict[str, torch.Tensor | PackedWeight], dict[str, Any]]
):
    """Read a GGUF Llama model.

    Returns (model args, state dict with herd/Meta key names and layout in `dtype`, the GGUF
    key/values as plain python values). Quantized tensors are dequantized, except with
    `keep_packed`: then 2-D Q8_0 matrices become PackedWeight "int8" and Q4_0 / Q4_1 / Q4_K ones
    "int4" (float16 scales whatever `dtype` is); other types are still dequantized to `dtype`.
    For tied models `output.weight` is the same object as `tok_embeddings.weight`.
    """
    path = Path(path)
    reader = open_gguf(path)
    metadata = read_metadata(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    # The reader keeps a numpy view per metadata string (about 100K for a 49K-token vocabulary, ~100 MB of
    # objects): drop them before the tensors are copied out, so the two never add up in peak memory.
    reader.fields.clear()

    args = _model_args(metadata, tensors, path)
    gguf_to_herd = _check_tensors(args, tensors, path)

    state_dict: dict[str, torch.Tensor | PackedWeight] = {}
    for name, herd in gguf_to_herd.items():
        t = tensors[name]
        packs = keep_packed and len(t.shape) == 2 and t.tensor_type in _PACKED_KIND
        # A corrupt block scale (inf, nan) makes numpy warn on stderr; the values carry it into the tensor.
        with np.errstate(invalid="ignore", over="ignore"):
            state_dict[herd] = _to_packed(t, path) if packs else _to_torch(t, dtype, path)
    if args.tie_embeddings:
        state_dict["output.weight"] = state_dict["tok_embeddings.weight"]
    return args, state_dict, metadata


def read_gguf_args(path: str | Path) -> ModelArgs:
    """Model args from a GGUF file's metadata and tensor list, without dequantizing anything."""
    path = Path(path)
    reader = open_gguf(path)
    return _model_args(read_metadata(reader, path), {t.name: t for t in reader.tensors}, path)


# ---------------------------------------------------------------------------------------------
# Metadata -> ModelArgs


def _model_args(meta: dict[str, Any], tensors: dict[str, Any], path: Path) -> ModelArgs:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: general.architecture is {arch!r}; only 'llama' GGUF models are supported")

    def key(name: str, default: Any = None, *, required: bool = False) -> Any:
        value = meta.get(f"llama.{name}", default)
        if value is None and required:
            raise CheckpointError(f"{path}: metadata key 'llama.{name}' is missing")
        if isinstance(value, list):
            raise CheckpointError(f"{path}: metadata key 'llama.{name}' holds one value per layer; not supported")
        return value

    if key("expert_count", 0):
        raise CheckpointError(f"{path}: mixture-of-experts models (llama.expert_count) are not supported")
    dim, n_heads = key("embedding_length", required=True), key("attention.head_count", required=True)
    head_dim = key("attention.key_length") or key("rope.dimension_count") or (dim // n_heads if n_heads else None)
    rope_dims = key("rope.dimension_count", head_dim)
    if rope_dims != head_dim or key("attention.value_length", head_dim) != head_dim:
        raise CheckpointError(
            f"{path}: rope.dimension_count={rope_dims} or attention.value_length differs from head_dim={head_dim}; "
            "partial RoPE and unequal key/value widths are not supported"
        )

    vocab_size = key("vocab_size")
    if vocab_size is None and "tokenizer.ggml.tokens" in meta:
        vocab_size = len(meta["tokenizer.ggml.tokens"])
    if vocab_size is None and "token_embd.weight" in tensors:
        vocab_size = int(tensors["token_embd.weight"].shape[-1])  # ne order: [dim, vocab]
    if vocab_size is None:
        raise CheckpointError(f"{path}: no vocab size (llama.vocab_size, tokenizer.ggml.tokens or token_embd.weight)")

    try:
        args = ModelArgs(
            dim=dim,
            n_layers=key("block_count", required=True),
            n_heads=n_heads,
            n_kv_heads=key("attention.head_count_kv", n_heads),
            vocab_size=vocab_size,
            ffn_hidden_dim=key("feed_forward_length", required=True),
            head_dim=head_dim,
            # Stored as float32; keep the python float of the stored value, as transformers does.
            norm_eps=key("attention.layer_norm_rms_epsilon", required=True),
            rope_theta=key("rope.freq_base", _DEFAULT_ROPE_THETA),
            tie_embeddings="output.weight" not in tensors,
            max_seq_len=key("context_length", required=True),
        )
    except ModelError as e:
        raise CheckpointError(f"{path}: metadata describes an invalid model: {e}") from e
    rope_freqs = tensors.get(ROPE_FREQS)
    divisors = None if rope_freqs is None else _to_torch(rope_freqs, torch.float64, path).numpy()
    scaling = _rope_scaling(meta, divisors, args, path)
    return args if scaling is None else args.replace(rope_scaling=scaling)


# [Note: rope_freqs]
# convert_hf_to_gguf.py stores, for each RoPE frequency f with wavelength w = 2 pi / f, the divisor
#   1 where w < original / high,  factor where w > original / low,
#   1 / ((1 - s) / factor + s) in between, with s = (original / w - low) / (high - low),
# which is exactly Llama 3.1's scaling written as base_freq / scaled_freq. Only the ratios
# original / low and original / high reach the file, so `original` cannot be recovered; it takes
# the GGUF key `rope.scaling.original_context_length` when present, else the converter's 8192.
# Candidates are tried in order (keys or Llama 3.1 defaults, then a fit of low/high to the
# in-between divisors) and the first one whose herd frequencies reproduce base / divisors wins.


def _rope_scaling(meta: dict[str, Any], divisors: np.ndarray | None, args: ModelArgs, path: Path) -> RopeScaling | None:
    kind = meta.get("llama.rope.scaling.type", "none")
    factor = meta.get("llama.rope.scaling.factor")
    # Keys beyond GGUF's standard factor / original_context_length are read if a converter wrote them.
    low = meta.get("llama.rope.scaling.low_freq_factor")
    high = meta.get("llama.rope.scaling.high_freq_factor")
    original = meta.get("llama.rope.scaling.original_context_length")
    if kind == "linear" and factor in (None, 1.0):
        kind, factor = "none", None  # a no-op that some converters write
    if kind not in ("none", "llama3"):
        raise CheckpointError(f"{path}: RoPE scaling type {kind!r} is not supported (only Llama 3.1 rope_freqs)")

    if divisors is None:
        if factor is not None and low is not None and high is not None:
            return RopeScaling(
                factor=factor, low_freq_factor=low, high_freq_factor=high,
                original_max_seq_len=original or _LLAMA31_ORIGINAL,
            )  # fmt: skip
        if kind == "llama3":
            raise CheckpointError(f"{path}: llama3 RoPE scaling needs rope.scaling.factor/low/high_freq_factor")
        return None

    assert args.head_dim is not None  # derived in ModelArgs.__post_init__
    if divisors.shape != (args.head_dim // 2,):
        raise CheckpointError(
            f"{path}: tensor {ROPE_FREQS!r} has shape {list(divisors.shape)}, "
            f"the model args expect [{args.head_dim // 2}] (head_dim / 2)"
        )
    if np.all(divisors == 1.0):
        return None
    base = rope_frequencies(args.replace(rope_scaling=None)).double().numpy()
    target = base / divisors
    factor = float(factor or divisors.max())
    original = int(original or _LLAMA31_ORIGINAL)
    candidates = [
        RopeScaling(
            factor=factor,
            low_freq_factor=float(low or _LLAMA31_LOW),
            high_freq_factor=float(high or _LLAMA31_HIGH),
            original_max_seq_len=original,
        )
    ]
    if (fitted := _fit_rope_band(divisors, base, factor, original)) is not None:
        candidates.append(fitted)
    best = math.inf
    for scaling in candidates:
        freqs = rope_frequencies(args.replace(rope_scaling=scaling)).double().numpy()
        err = float(np.max(np.abs(freqs - target) / target))
        if err <= _ROPE_RTOL:
            return scaling
        best = min(best, err)
    raise CheckpointError(
        f"{path}: tensor {ROPE_FREQS!r} is not Llama 3.1 RoPE scaling herd can express "
        f"(best candidate differs by a relative {best:.2e}; factor={factor}, original context={original})"
    )


def _fit_rope_band(divisors: np.ndarray, base: np.ndarray, factor: float, original: int) -> RopeScaling | None:
    """Fit low/high_freq_factor to the divisors between the two thresholds (needs two such points)."""
    if factor <= 1.0:
        return None
    # Inverting the note's formula: s = (factor / divisor - 1) / (factor - 1), linear in 1 / w.
    smooth = (factor / divisors - 1.0) / (factor - 1.0)
    band = (smooth > 1e-6) & (smooth < 1 - 1e-6)
    if band.sum() < 2:
        return None
    inv_wavelen = base[band] / (2 * math.pi)
    slope, intercept = np.polyfit(inv_wavelen, smooth[band], 1)
    # s = (original * x - low) / (high - low): slope = original / (high - low), intercept = -low / (high - low).
    low = -intercept * original / slope
    high = low + original / slope
    if not 0 < low < high:  # no Llama 3.1 band: not a candidate (ModelArgs refuses non-positive factors)
        return None
    return RopeScaling(
        factor=factor,
        low_freq_factor=round(float(low), 6),
        high_freq_factor=round(float(high), 6),
        original_max_seq_len=original,
    )


# ---------------------------------------------------------------------------------------------
# Tensors


def _gguf_name(herd_name: str) -> str:
    if herd_name in _TOP_NAMES:
        return _TOP_NAMES[herd_name]
    _, index, rest = herd_name.split(".", 2)  # layers.{i}.<rest>
    return f"blk.{index}.{_LAYER_NAMES[rest]}"


def _check_tensors(args: ModelArgs, tensors: dict[str, Any], path: Path) -> dict[str, str]:
    """Check names and shapes before any dequantization; return GGUF name -> herd name."""
    gguf_to_herd = {}
    for herd_name, want in expected_shapes(args, path):
        if herd_name == "output.weight" and args.tie_embeddings:
            continue
        name = _gguf_name(herd_name)
        if name not in tensors:
            raise CheckpointError(f"{path}: missing tensor {name!r} ({herd_name}, expected shape {list(want)})")
        got = tuple(int(n) for n in reversed(tensors[name].shape.tolist()))
        if got != want:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({herd_name}) has shape {list(got)}, the model args expect {list(want)}"
            )
        gguf_to_herd[name] = herd_name
    if unexpected := sorted(tensors.keys() - gguf_to_herd.keys() - {ROPE_FREQS}):
        more = " ..." if len(unexpected) > 5 else ""
        raise CheckpointError(f"{path}: unexpected tensors {unexpected[:5]}{more}; herd's Llama has no such weights")
    return gguf_to_herd


def _to_torch(t: Any, dtype: torch.dtype, path: Path) -> torch.Tensor:
    """One GGUF tensor as a torch tensor of shape (out, in) in `dtype`, copied out of the memmap."""
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    kind = t.tensor_type
    # Float types convert in torch directly (exact, and no float32 detour when dtype is 16-bit);
    # every quantized type goes through the gguf package's numpy dequantizers.
    if kind == gguf.GGMLQuantizationType.F32:
        out = torch.from_numpy(np.array(t.data, dtype=np.float32))
    elif kind == gguf.GGMLQuantizationType.F16:
        out = torch.from_numpy(np.array(t.data, dtype=np.float16))
    elif kind == gguf.GGMLQuantizationType.BF16:
        out = torch.from_numpy(np.array(t.data).view(np.int16)).view(torch.bfloat16)
    else:
        try:
            out = torch.from_numpy(gguf.quants.dequantize(t.data, kind))
        except NotImplementedError as e:
            raise CheckpointError(
                f"{path}: tensor {t.name!r} has type {kind.name}, which the gguf package cannot dequantize"
            ) from e
    return out.reshape(shape).to(dtype)


# [Note: packed GGUF blocks]
# A 2-D tensor's data is uint8 (out, in / block * block_bytes): each row of herd's (N, K) matrix is
# a run of blocks. Block layouts (ggml-common.h; the gguf package's numpy dequantizers in
# gguf/quants.py compute the same values):
#   Q8_0 (32 values, 34 bytes):  fp16 d, int8 qs[32];                 w = d * q
#   Q4_0 (32 values, 18 bytes):  fp16 d, qs[16];                      w = d * (q - 8)
#   Q4_1 (32 values, 20 bytes):  fp16 d, fp16 m, qs[16];              w = d * q + m
#   Q4_K (256 values, 144 bytes): fp16 d, fp16 dmin, scales[12], qs[128];
#        sub-block s of 32 values: w = d * sc[s] * q - dmin * m[s], 6-bit sc / m packed in scales.
# Q4_0 / Q4_1 nibbles are herd's order (byte j: value j low, value 16 + j high), so their qs bytes
# are copied. Q4_K's are not: in each 64-value chunk c of 32 bytes, the low nibbles are sub-block
# 2c and the high nibbles sub-block 2c + 1, so they are unpacked and repacked.
# Exactness of PackedWeight.dequantize() against gguf.quants.dequantize:
# - Q8_0, Q4_1: same float16 numbers, same float32 operations: bit-identical.
# - Q4_0: mins = -8 * d is exact in float16, and q * d + (-8 d) is the exactly representable
#   (q - 8) * d: bit-identical.
# - Q4_K: d * sc[s] has up to 17 significant bits, so rounding it (and dmin * m[s]) to float16 errs
#   by up to 2^-11 of the value (an absolute 2^-25 below float16's normal range, 2^-14). Where d
#   and dmin have at most 5 significant bits (powers of two, say) the conversion is exact.

_PACKED_KIND = {
    gguf.GGMLQuantizationType.Q8_0: "int8",
    gguf.GGMLQuantizationType.Q4_0: "int4",
    gguf.GGMLQuantizationType.Q4_1: "int4",
    gguf.GGMLQuantizationType.Q4_K: "int4",
}


def _to_packed(t: Any, path: Path) -> PackedWeight:
    """One 2-D Q8_0 / Q4_0 / Q4_1 / Q4_K tensor as a PackedWeight, parsed from its block bytes."""
    n, k = (int(d) for d in reversed(t.shape.tolist()))
    kind = t.tensor_type
    block, size = gguf.GGML_QUANT_SIZES[kind]
    raw = np.asarray(t.data)
    if k % block or raw.dtype != np.uint8 or raw.size != n * (k // block) * size:
        raise CheckpointError(
            f"{path}: tensor {t.name!r} of type {kind.name} and shape {[n, k]} holds {raw.size} {raw.dtype} items, "
            f"expected {n * (k // block) * size} bytes ({block}-value blocks of {size} bytes)"
        )
    blocks = raw.reshape(n, k // block, size)

    def field(start: int, stop: int, dtype: type) -> np.ndarray:
        """Bytes [start, stop) of every block, copied out of the memmap and viewed as `dtype`."""
        return blocks[..., start:stop].copy().view(dtype)

    groups = k // GROUP
    if kind == gguf.GGMLQuantizationType.Q8_0:
        q8 = torch.from_numpy(field(2, size, np.int8).reshape(n, k))
        return PackedWeight("int8", (n, k), q8, torch.from_numpy(field(0, 2, np.float16).reshape(n, groups)))
    if kind == gguf.GGMLQuantizationType.Q4_0:
        d = field(0, 2, np.float16).reshape(n, groups)
        mins = _half(-8 * d.astype(np.float32), t, path, "mins (-8 * d)")
        qweight, scales = field(2, size, np.uint8).reshape(n, k // 2), d
    elif kind == gguf.GGMLQuantizationType.Q4_1:
        scales, mins = field(0, 2, np.float16).reshape(n, groups), field(2, 4, np.float16).reshape(n, groups)
        qweight = field(4, size, np.uint8).reshape(n, k // 2)
    else:  # Q4_K
        d = field(0, 2, np.float16).astype(np.float32)  # (n, k/256, 1)
        dmin = field(2, 4, np.float16).astype(np.float32)
        sc, m = _q4k_scale_min(field(4, 16, np.uint8))
        scales = _half(d * sc, t, path, "scales (d * sc)").reshape(n, groups)
        mins = _half(-dmin * m, t, path, "mins (-dmin * m)").reshape(n, groups)
        qs = field(16, size, np.uint8).reshape(n, k // 256, 4, 1, 32)  # 4 chunks of 64 values
        # (lo, hi) of chunk c are sub-blocks 2c and 2c + 1, which is value order once stacked.
        q = np.concatenate((qs & 0x0F, qs >> 4), axis=3).reshape(n, k)
        qweight = pack_int4(torch.from_numpy(q)).numpy()
    return PackedWeight("int4", (n, k), torch.from_numpy(qweight), torch.from_numpy(scales), torch.from_numpy(mins))


def _q4k_scale_min(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's 12 bytes per super-block -> 6-bit (scale, min) per sub-block, each float32 (..., 8).

    As the gguf package's Q4_K.get_scale_min (ggml's get_scale_min_k4): bytes 0-3 hold the low 6
    bits of scales 0-3, bytes 4-7 those of mins 0-3; scales / mins 4-7 take their low 4 bits from
    the low / high nibble of bytes 8-11 and their top 2 bits from the top 2 bits of bytes 0-3 / 4-7.
    """
    lo_sc, lo_m, hi = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = np.concatenate((lo_sc & 0x3F, (hi & 0x0F) | ((lo_sc >> 2) & 0x30)), axis=-1)
    m = np.concatenate((lo_m & 0x3F, (hi >> 4) | ((lo_m >> 2) & 0x30)), axis=-1)
    return sc.astype(np.float32), m.astype(np.float32)


def _half(x: np.ndarray, t: Any, path: Path, what: str) -> np.ndarray:
    """Round float32 block constants to float16; a finite value that overflows is an error, not inf."""
    with np.errstate(over="ignore"):  # reported below, naming the tensor
        out = x.astype(np.float16)
    if (bad := np.isinf(out) & np.isfinite(x)).any():
        raise CheckpointError(
            f"{path}: tensor {t.name!r} of type {t.tensor_type.name}: block {what} = {float(x[bad][0])} "
            "overflows float16; read it without keep_packed"
        )
    return out
