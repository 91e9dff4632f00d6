"""herd's decode kernels (linear.cpp), compiled on first use with torch's C++ extension builder.

The build runs once and is cached under ~/.cache/herd/kernels (HERD_KERNEL_DIR
overrides), keyed by torch version, CPU capability and source hash. Where no compiler is available
the same functions run on torch ops: correct, but slower than plain float32 (a warning says so).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from pathlib import Path

import torch

from herd.formats.packed import GROUP, PackedWeight, unpack_int4

log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("linear.cpp")
_HEADERS = [Path(__file__).with_name("tiles.h")]  # included by linear.cpp: part of the build's key


def _build_dir(tag: str) -> Path:
    root = Path(os.environ.get("HERD_KERNEL_DIR") or Path.home() / ".cache" / "herd" / "kernels")
    path = root / tag
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cpu_has(probe: str) -> bool:
    """A torch CPU feature probe (`torch.cpu._is_vnni_supported`...); False where this torch lacks it."""
    try:
        return bool(getattr(torch.cpu, probe)())
    except (AttributeError, RuntimeError):
        return False


def _has_avx512_vnni() -> bool:
    """AVX512-VNNI (which implies AVX512-VL on every CPU that has it), as torch's CPU feature probe reports it."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and _cpu_has("_is_vnni_supported")


@functools.cache
def available() -> bool:
    """Compile (or load the cached build of) the kernels once per process; False if that fails."""
    if os.environ.get("HERD_KERNELS", "1") == "0":
        return False
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", "DEFAULT", ...
    # Target an explicit ISA, not -march=native: a cache shared by machines must not hold
    # instructions one of them lacks.
    # No FMA contraction of plain arithmetic: RoPE and RMSNorm then round as torch's float32 ops do.
    # -fopenmp: at::parallel_for is a header template whose `omp parallel` pragma is otherwise ignored (serial).
    flags = ["-O3", "-std=c++17", "-ffp-contract=off", "-fopenmp"]
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-mf16c"]
        if _has_avx512_vnni():  # the int8/int4 dot products in one instruction (256-bit vectors, AVX512-VL)
            flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]
            if _cpu_has("_is_avx512_bf16_supported"):  # bfloat16 pairs' dot products in one instruction
                flags += ["-mavx512bf16"]
    sources = b"".join(p.read_bytes() for p in [_SOURCE, *_HEADERS])
    digest = hashlib.sha256(sources + " ".join(flags).encode()).hexdigest()[:12]
    tag = f"torch{torch.__version__.replace('+', '_')}-{capability.lower()}-{digest}"
    try:
        cpp_extension.load(
            name=f"herd_kernels_{digest}",
            sources=[str(_SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            build_directory=str(_build_dir(tag)),
            is_python_module=False,
            verbose=False,
        )
    except Exception as e:  # no compiler, no ninja, a toolchain error: fall back, loudly
        warnings.warn(
            f"herd's decode kernels did not build ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "quantized and bfloat16 weights run on slower torch ops",
            stacklevel=2,
        )
        return False
    return True


def bf16_activations() -> bool:
    """Whether `linear_dense` rounds x to bfloat16 for bfloat16 weights (the AVX512-BF16 build: one dpbf16ps per 32
    products, as llama.cpp's BF16 path), instead of widening the weights to float32."""
    return available() and bool(torch.ops.herd.bf16_activations())


def tile_kernels() -> bool:
    """Whether the int8/int4 kernels run weights in the tiled layout (`TiledWeight`, the AVX512-VNNI build)."""
    return available() and bool(torch.ops.herd.tile_kernels())


def linear_dense(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (M, K) float32 @ w (N, K)^T for float32 or bfloat16 w, in float32 (x rounded to bfloat16 for a bfloat16 w
    where `bf16_activations()`)."""
    if available():
        return torch.ops.herd.linear_dense(x, w)
    return torch.nn.functional.linear(x, w.float())


def linear_int8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M, K) float32 @ W^T for a packed int8 W (qweight (N, K)) or a tiled one (qweight (N/16, K/32, 512))."""
    if available():
        return torch.ops.herd.linear_int8(x, qweight, scales)
    w = qweight.float() * scales.float().repeat_interleave(GROUP, dim=1)
    return torch.nn.functional.linear(x, w)


def linear_int4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """As linear_int8 for int4: qweight (N, K/2) packed or (N/16, K/32, 256) tiled."""
    if available():
        return torch.ops.herd.linear_int4(x, qweight, scales, mins)
    k = qweight.shape[1] * 2
    w = unpack_int4(qweight, k).float() * scales.float().repeat_interleave(GROUP, dim=1)
    w += mins.float().repeat_interleave(GROUP, dim=1)
    return torch.nn.functional.linear(x, w)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    if available():
        return torch.ops.herd.rms_norm(x.contiguous(), w, eps)
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[gate | up] along the last dim -> silu(gate) * up (the SwiGLU product)."""
    if available():
        return torch.ops.herd.silu_mul(gate_up.contiguous())
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def rope_(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> None:
    """Rotate, in place, the adjacent pairs of the first `heads` heads of each token of qkv (B, T, C)
    by the angles whose cos/sin are (B, T, H/2), as herd.model.llama.apply_rope does."""
    if available():
        torch.ops.herd.rope_(qkv, cos, sin, heads)
        return
    B, T, _ = qkv.shape
    P = cos.shape[-1]
    x = qkv[..., : heads * 2 * P].view(B, T, heads, P, 2)
    x0, x1 = x[..., 0].clone(), x[..., 1].clone()
    c, s = cos[:, :, None], sin[:, :, None]
    x[..., 0] = x0 * c - x1 * s
    x[..., 1] = x0 * s + x1 * c


def dequantize_rows(
    qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None, n0: int, n1: int
) -> torch.Tensor:
    """Rows n0..n1 of a packed or tiled int8 (mins None) or int4 weight as float32."""
    if available():
        return torch.ops.herd.dequantize_rows(qweight, scales, mins, n0, n1)
    kind = "int8" if mins is None else "int4"
    k = qweight.shape[1] * (1 if mins is None else 2)
    part = PackedWeight(kind, (n1 - n0, k), qweight[n0:n1], scales[n0:n1], None if mins is None else mins[n0:n1])
    return part.dequantize(torch.float32)
