"""Weight-only quantized matrices in the block layouts that herd's kernels read.

Both layouts quantize each output row in groups of 32 consecutive input values, the block size
of GGUF's Q8_0 / Q4_0 / Q4_1, so those files load without requantizing (a block's bytes are
copied) and Q4_K converts exactly (its 6-bit sub-block scales become float16 values here):

- "int8": `qweight` int8 (N, K); `scales` float16 (N, K/32). w = q * scale.  (= Q8_0)
- "int4": `qweight` uint8 (N, K/2); `scales`, `mins` float16 (N, K/32). w = q * scale + min,
  q in 0..15. Within group g, byte j (j < 16) holds value 32g + j in its low nibble and value
  32g + 16 + j in its high nibble. (= Q4_1; Q4_0 is min = -8 * scale)

herd's own quantizer (`quantize`) uses symmetric absmax scales for int8 and min/max (asymmetric)
scales for int4, rounding to nearest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from herd.errors import CheckpointError

GROUP = 32
KINDS = ("int8", "int4")


@dataclass
class PackedWeight:
    kind: str
    shape: tuple[int, int]
    """(N, K): output and input features of the dequantized matrix."""
    qweight: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n, k = self.shape
        if self.kind not in KINDS:
            raise CheckpointError(f"unknown packed weight kind {self.kind!r}; herd packs {', '.join(KINDS)}")
        if k % GROUP:
            raise CheckpointError(f"packed weight of shape {list(self.shape)}: {k} inputs is not a multiple of {GROUP}")
        qshape = (n, k) if self.kind == "int8" else (n, k // 2)
        qdtype = torch.int8 if self.kind == "int8" else torch.uint8
        if tuple(self.qweight.shape) != qshape or self.qweight.dtype != qdtype:
            raise CheckpointError(
                f"{self.kind} weight of shape {list(self.shape)}: qweight is {self.qweight.dtype} "
                f"{list(self.qweight.shape)}, expected {qdtype} {list(qshape)}"
            )
        groups = [self.scales] + ([] if self.kind == "int8" else [self.mins])
        for t in groups:
            if t is None or tuple(t.shape) != (n, k // GROUP) or t.dtype != torch.float16:
                got = "missing" if t is None else f"{t.dtype} {list(t.shape)}"
                raise CheckpointError(
                    f"{self.kind} weight of shape {list(self.shape)}: scales/mins are {got}, "
                    f"expected float16 {[n, k // GROUP]}"
                )

    @property
    def nbytes(self) -> int:
        extra = 0 if self.mins is None else self.mins.nbytes
        return self.qweight.nbytes + self.scales.nbytes + extra

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The (N, K) matrix; the reference the kernels are tested against."""
        k = self.shape[1]
        scales = self.scales.float().repeat_interleave(GROUP, dim=1)
        if self.kind == "int8":
            return (self.qweight.float() * scales).to(dtype)
        q = unpack_int4(self.qweight, k).float()
        return (q * scales + self.mins.float().repeat_interleave(GROUP, dim=1)).to(dtype)  # type: ignore[union-attr]

    def rows(self, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dequantize only the rows in `index` (an embedding lookup), shape index.shape + (K,)."""
        flat = index.reshape(-1)
        mins = None if self.mins is None else self.mins[flat]
        part = PackedWeight(self.kind, (flat.numel(), self.shape[1]), self.qweight[flat], self.scales[flat], mins)
        return part.dequantize(dtype).view(*index.shape, self.shape[1])


def unpack_int4(qweight: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 (N, K/2) in herd's nibble order -> uint8 values (N, K), 0..15."""
    n = qweight.shape[0]
    g = qweight.view(n, k // GROUP, GROUP // 2)
    return torch.cat((g & 0xF, g >> 4), dim=-1).view(n, k)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Values (N, K) in 0..15 -> uint8 (N, K/2) in herd's nibble order."""
    n, k = q.shape
    g = q.to(torch.uint8).view(n, k // GROUP, GROUP)
    return (g[..., : GROUP // 2] | (g[..., GROUP // 2 :] << 4)).reshape(n, k // 2)


def can_pack(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and shape[1] % GROUP == 0


@torch.no_grad()
def quantize(weight: torch.Tensor, kind: str) -> PackedWeight:
    """Round-to-nearest quantization of an (N, K) float matrix; K must be a multiple of 32."""
    if kind not in KINDS:
        raise CheckpointError(f"unknown quantization {kind!r}; choose one of {', '.join(KINDS)}")
    n, k = weight.shape
    if k % GROUP:
        raise CheckpointError(f"cannot quantize a matrix of shape {[n, k]} in groups of {GROUP}")
    w = weight.float().view(n, k // GROUP, GROUP)
    if kind == "int8":
        # The float16 scale is what dequantization multiplies by, so round with it.
        scale = (w.abs().amax(-1) / 127).half()
        inv = torch.where(scale > 0, 1 / scale.float(), torch.zeros_like(scale, dtype=torch.float32))
        q = (w * inv[..., None]).round().clamp(-127, 127).to(torch.int8).view(n, k)
        return PackedWeight("int8", (n, k), q, scale)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).half()
    low = lo.half()
    inv = torch.where(scale > 0, 1 / scale.float(), torch.zeros_like(scale, dtype=torch.float32))
    q = ((w - low.float()[..., None]) * inv[..., None]).round().clamp(0, 15).view(n, k)
    return PackedWeight("int4", (n, k), pack_int4(q), scale, low)
