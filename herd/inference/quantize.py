"""Inference weights: float32, bfloat16 or weight-only int8/int4, and the linear layer that runs them.

`prepare_weight` turns one checkpoint tensor into what the decode model keeps: a float tensor in
the requested dtype, or a `PackedWeight` (herd/formats/packed.py). Blocks a GGUF file already
stores in a layout herd runs (Q8_0, Q4_0, Q4_1, Q4_K) are kept as they are; float weights are
quantized round-to-nearest in groups of 32. A matrix whose input size is not a multiple of 32
cannot be grouped: it stays in float, and a warning names it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
from torch import nn

from herd.errors import InferenceError
from herd.formats.packed import GROUP, PackedWeight, can_pack, quantize
from herd.inference import kernels

log = logging.getLogger(__name__)

QUANTS = ("none", "int8", "int4")
INFERENCE_DTYPES = (torch.float32, torch.bfloat16)

# Up to this many input rows a linear runs on the streaming kernels (weights read once, converted in
# registers); above it the weights are converted in row chunks (to bfloat16 where the CPU has native bf16
# matmul, else float32) and multiplied by torch's GEMM, which is faster for prefill. 64 is about where the
# two paths cross on a 2-core AVX2 machine (timed on 3072 x 576 int4, int8 and bfloat16 matrices).
KERNEL_MAX_ROWS = 64
_CHUNK_ELEMENTS = 4 * 2**20  # float32 elements converted at a time above KERNEL_MAX_ROWS (16 MB)


@functools.cache
def _native_bf16() -> bool:
    """Whether torch's CPU bf16 matmul runs on native instructions (else its fallback is far slower than float32)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_quant(quant: str, dtype: torch.dtype) -> None:
    if quant not in QUANTS:
        raise InferenceError(f"unknown --quant {quant!r}; choose one of {', '.join(QUANTS)}")
    if dtype not in INFERENCE_DTYPES:
        raise InferenceError(f"inference dtype {dtype} is not supported; use float32 or bfloat16")


def prepare_weight(
    name: str, weight: torch.Tensor | PackedWeight, dtype: torch.dtype, quant: str
) -> torch.Tensor | PackedWeight:
    """One 2-D weight as the decode model keeps it (see the module docstring)."""
    if isinstance(weight, PackedWeight):
        # Keep stored blocks at their own precision when it is at least the requested one.
        if quant == "int4" or (quant == "int8" and weight.kind == "int8"):
            return weight
        weight = weight.dequantize(torch.float32)
    if quant == "none":
        return weight.to(dtype).contiguous()
    if not can_pack(tuple(weight.shape)):
        log.warning(
            "%s: shape %s has %d inputs, not a multiple of 32, so it cannot be quantized to %s; kept in %s",
            name,
            list(weight.shape),
            weight.shape[-1],
            quant,
            str(dtype).removeprefix("torch."),
        )
        return weight.to(dtype).contiguous()
    return quantize(weight, quant)


def concat_rows(parts: list[torch.Tensor | PackedWeight]) -> torch.Tensor | PackedWeight:
    """Stack matrices along the output dim (fused QKV, fused gate/up); all parts in one format."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        if not all(isinstance(p, torch.Tensor) and p.dtype == first.dtype for p in parts):
            return torch.cat([_as_float(p) for p in parts])
        return torch.cat(parts)  # type: ignore[arg-type]
    packed = [p for p in parts if isinstance(p, PackedWeight)]
    if len(packed) != len(parts) or any(p.kind != first.kind for p in packed):
        # Mixed storage (a fallback, or GGUF files that mix Q8_0 and Q4 in one layer): requantize to one kind.
        kind = "int8" if any(p.kind == "int8" for p in packed) else "int4"
        packed = [p if isinstance(p, PackedWeight) and p.kind == kind else quantize(_as_float(p), kind) for p in parts]
    return PackedWeight(
        packed[0].kind,
        (sum(p.shape[0] for p in packed), packed[0].shape[1]),
        torch.cat([p.qweight for p in packed]),
        torch.cat([p.scales for p in packed]),
        None if packed[0].mins is None else torch.cat([p.mins for p in packed]),  # type: ignore[misc]
    )


def _as_float(w: torch.Tensor | PackedWeight) -> torch.Tensor:
    return w.dequantize(torch.float32) if isinstance(w, PackedWeight) else w.float()


TILE = 16


@dataclass
class TiledWeight:
    """A PackedWeight rearranged for the AVX512-VNNI kernels (herd/inference/kernels/tiles.h, which gives the byte
    order): rows in tiles of 16, and within a tile and a group of 32 inputs, 4 inputs of all 16 rows per 64 bytes,
    so one dpbusd updates 16 outputs. int8 values are stored + 128. Same values, same bytes as the packed form."""

    kind: str
    shape: tuple[int, int]
    qweight: torch.Tensor  # uint8 (N/16, K/32, 512) for int8, (N/16, K/32, 256) for int4
    scales: torch.Tensor  # float16 (N/16, K/32, 16)
    mins: torch.Tensor | None = None  # int4: as scales

    @staticmethod
    def fits(p: PackedWeight) -> bool:
        return p.shape[0] % TILE == 0

    @classmethod
    def from_packed(cls, p: PackedWeight) -> TiledWeight:
        n, k = p.shape
        t, g = n // TILE, k // GROUP
        chunks = 8 if p.kind == "int8" else 4  # 4-byte chunks per row and group
        q = p.qweight.view(torch.uint8).view(t, TILE, g, chunks, 4).permute(0, 2, 3, 1, 4).reshape(t, g, -1)
        if p.kind == "int8":
            q.bitwise_xor_(0x80)  # the bits of q + 128, in the copy reshape made (one transient copy, not two)

        def per_tile(v: torch.Tensor) -> torch.Tensor:
            return v.view(t, TILE, g).transpose(1, 2).contiguous()

        return cls(p.kind, p.shape, q, per_tile(p.scales), None if p.mins is None else per_tile(p.mins))

    def to_packed(self, index: torch.Tensor | None = None) -> PackedWeight:
        """Rows `index` (1-D; all rows when None) back in the packed layout."""
        n, k = self.shape
        t, g = n // TILE, k // GROUP
        rows = torch.arange(n) if index is None else index.reshape(-1)
        tile, lane = rows // TILE, rows % TILE
        chunks = 8 if self.kind == "int8" else 4
        q = self.qweight.view(t, g, chunks, TILE, 4)[tile, :, :, lane, :].reshape(len(rows), -1)  # (rows, K or K/2)
        if self.kind == "int8":
            q = (q ^ 0x80).view(torch.int8)
        mins = None if self.mins is None else self.mins[tile, :, lane]
        return PackedWeight(self.kind, (len(rows), k), q, self.scales[tile, :, lane], mins)

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scales.nbytes + (0 if self.mins is None else self.mins.nbytes)

    def rows(self, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dequantize only the rows in `index` (an embedding lookup), shape index.shape + (K,)."""
        return self.to_packed(index).dequantize(dtype).view(*index.shape, self.shape[1])


def for_kernels(weight: torch.Tensor | PackedWeight | TiledWeight) -> torch.Tensor | PackedWeight | TiledWeight:
    """The layout the kernels run fastest: packed weights tiled where the tile kernels are built and 16 divides the
    rows (else they stay packed and run on the row kernels)."""
    if isinstance(weight, PackedWeight) and TiledWeight.fits(weight) and kernels.tile_kernels():
        return TiledWeight.from_packed(weight)
    return weight


class InferenceLinear(nn.Module):
    """y = x @ W^T in float32 for a float32, bfloat16 or packed W (no bias: Llama has none)."""

    def __init__(self, weight: torch.Tensor | PackedWeight | TiledWeight) -> None:
        super().__init__()
        weight = for_kernels(weight)
        self.packed = weight if isinstance(weight, PackedWeight | TiledWeight) else None
        self.weight = weight if isinstance(weight, torch.Tensor) else None
        self.out_features, self.in_features = weight.shape

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes if self.packed is not None else self.weight.nbytes  # type: ignore[union-attr]

    def tensors(self) -> list[torch.Tensor]:
        """[w], [qweight, scales] or [qweight, scales, mins]: how herd's decode_block kernel takes a weight."""
        p = self.packed
        if p is None:
            return [self.weight]  # type: ignore[list-item]
        return [p.qweight, p.scales] if p.mins is None else [p.qweight, p.scales, p.mins]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float().contiguous()
        if x2.shape[0] <= KERNEL_MAX_ROWS:
            y = self._kernel(x2)
        elif self.weight is not None and self.weight.dtype == torch.float32:
            y = torch.nn.functional.linear(x2, self.weight)
        elif self.weight is not None and _native_bf16():
            # oneDNN's bf16 GEMM (AVX512-BF16 or AMX), about twice float32's rate: the activations are rounded to
            # bfloat16 for this product, as a bfloat16 model's always are (llama.cpp's BF16 path does the same).
            y = torch.nn.functional.linear(x2.to(torch.bfloat16), self.weight).float()
        else:
            y = self._chunked(x2)
        return y.view(*lead, self.out_features)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        p = self.packed
        if p is None:
            return kernels.linear_dense(x, self.weight)  # type: ignore[arg-type]
        if p.kind == "int8":
            return kernels.linear_int8(x, p.qweight, p.scales)
        return kernels.linear_int4(x, p.qweight, p.scales, p.mins)  # type: ignore[arg-type]

    def _chunked(self, x: torch.Tensor) -> torch.Tensor:
        """Convert a block of weight rows at a time, so the full float matrix never exists.

        Packed weights go to bfloat16 where the CPU multiplies it natively: oneDNN's bf16 GEMM runs at about twice
        float32's rate (prefill of int8/int4 weights; GPU engines dequantize to 16 bits for large batches likewise).
        Rounding d * q to bfloat16 errs by at most 2^-9 of the weight, less than the 8- or 4-bit grid already does;
        the perplexity tests hold the result within 1% (int8) and 5% (int4) of float32."""
        bf16 = self.packed is not None and _native_bf16()
        if bf16:
            x = x.to(torch.bfloat16)
        rows = max(1, _CHUNK_ELEMENTS // self.in_features)
        out = []
        for n0 in range(0, self.out_features, rows):
            n1 = min(n0 + rows, self.out_features)
            if (p := self.packed) is not None:
                w = kernels.dequantize_rows(p.qweight, p.scales, p.mins, n0, n1)
                w = w.to(torch.bfloat16) if bf16 else w
            else:
                w = self.weight[n0:n1].float()  # type: ignore[index]
            out.append(torch.nn.functional.linear(x, w).float())
        return torch.cat(out, dim=-1)
