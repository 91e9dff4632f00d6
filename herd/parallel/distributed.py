"""Process-group plumbing: join what torchrun set up, build the mesh, reduce metrics, watch for hangs.

Under `torchrun` every worker gets RANK, LOCAL_RANK and WORLD_SIZE in its environment; a plain `herd train` is
world size 1 and touches none of this. The backend is gloo on CPU and NCCL on GPU, chosen from the device.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from herd.parallel.dims import AXES, ParallelDims


def world() -> tuple[int, int]:
    """(rank, world size) of this process, from torchrun's environment."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device, *, timeout_s: float = 600.0) -> None:
    """Join the process group torchrun describes; nothing for one process."""
    if world()[1] == 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend, timeout = ("nccl" if device.type == "cuda" else "gloo"), timedelta(seconds=timeout_s)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's agent keeps one store across restarts: without a per-attempt prefix a restarted worker can
        # read a dead worker's address from the previous attempt and fail to connect ("Connection refused").
        rank, size = world()
        store: dist.Store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                                          is_master=False, timeout=timeout)  # fmt: skip
        store = dist.PrefixStore(f"herd/attempt-{restart_count()}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)


def build_mesh(dims: ParallelDims, device: torch.device) -> DeviceMesh:
    """The 4-D mesh (pp, dp_replicate, dp_shard, tp), with "dp" = dp_replicate x dp_shard flattened for data."""
    mesh = init_device_mesh(device.type, tuple(dims.sizes().values()), mesh_dim_names=AXES)
    mesh[("dp_replicate", "dp_shard")]._flatten("dp")
    return mesh


def all_reduce_sum(value: torch.Tensor, mesh: DeviceMesh | None) -> torch.Tensor:
    if mesh is not None and mesh.size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=mesh.get_group())
    return value


def restart_count() -> int:
    """How many times torchrun has restarted this job (0 on the first launch)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


class Watchdog:
    """A thread that ends the process when a step takes longer than `timeout` seconds: a collective that never
    completes (a dead peer, a network partition) would otherwise hang the whole job. It writes every thread's
    stack to stderr and to `hang-rank<N>.txt`, then exits with status 3 so torchrun restarts the job."""

    def __init__(self, timeout: float, run_dir: Path, rank: int) -> None:
        self.timeout, self.path, self.rank = timeout, run_dir / f"hang-rank{rank}.txt", rank
        self.beat = time.monotonic()
        self.step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="herd-watchdog", daemon=True)
        self._thread.start()

    def heartbeat(self, step: int) -> None:
        self.beat, self.step = time.monotonic(), step

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            if time.monotonic() - self.beat > self.timeout:
                message = f"herd: rank {self.rank} made no progress for {self.timeout:.0f}s in step {self.step + 1}"
                print(message + "; stacks follow, exiting for a restart", file=sys.stderr, flush=True)
                with open(self.path, "w") as f:
                    f.write(message + "\n")
                    faulthandler.dump_traceback(file=f, all_threads=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                os._exit(3)

    def stop(self) -> None:
        self._stop.set()
