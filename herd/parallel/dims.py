"""The sizes of the parallel mesh: pipeline x data-parallel (replicate x shard) x tensor.

`ParallelDims` only does arithmetic (so planners can use it for layouts no machine here has); `build_mesh` makes
the torch DeviceMesh once a process group exists. Axis order, outermost first: pp, dp_replicate, dp_shard, tp,
so that tensor-parallel ranks are neighbours (one node's NVLink) and pipeline stages are farthest apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from herd.errors import HerdError

AXES = ("pp", "dp_replicate", "dp_shard", "tp")


class ParallelError(HerdError):
    """A parallel layout that does not fit the world size or the model."""


@dataclass(kw_only=True, slots=True)
class ParallelDims:
    dp_replicate: int = 1
    """Data-parallel replicas (DDP, or HSDP together with dp_shard): whole copies of the model."""
    dp_shard: int = -1
    """FSDP shards within a replica; -1 fills what the other axes leave of the world size."""
    tp: int = 1
    """Tensor-parallel ranks: attention heads and FFN columns split across them."""
    pp: int = 1
    """Pipeline stages: layers split across them."""
    world_size: int = 1

    def __post_init__(self) -> None:
        sizes = {a: getattr(self, a) for a in AXES}
        if bad := [a for a, n in sizes.items() if n == 0 or n < -1]:
            raise ParallelError(f"parallel.{bad[0]}={sizes[bad[0]]} must be a positive size (or -1 for dp_shard)")
        if [a for a, n in sizes.items() if n == -1 and a != "dp_shard"]:
            raise ParallelError("only parallel.dp_shard may be -1 (fill the rest of the world size)")
        others = self.dp_replicate * self.tp * self.pp
        if self.dp_shard == -1:
            if self.world_size % others:
                raise ParallelError(
                    f"world size {self.world_size} is not a multiple of dp_replicate({self.dp_replicate}) * "
                    f"tp({self.tp}) * pp({self.pp}) = {others}"
                )
            self.dp_shard = self.world_size // others
        if others * self.dp_shard != self.world_size:
            raise ParallelError(
                f"dp_replicate({self.dp_replicate}) * dp_shard({self.dp_shard}) * tp({self.tp}) * pp({self.pp}) "
                f"= {others * self.dp_shard} != world size {self.world_size}"
            )

    @property
    def dp(self) -> int:
        """Ranks that see different data (each takes its rows of the global batch)."""
        return self.dp_replicate * self.dp_shard

    @property
    def fsdp(self) -> bool:
        return self.dp_shard > 1

    def sizes(self) -> dict[str, int]:
        return {a: getattr(self, a) for a in AXES}

    def describe(self) -> str:
        return " x ".join(f"{a} {n}" for a, n in self.sizes().items() if n > 1) or "1 process"
