"""Recovery from bad steps, as Llama 3 needed it at scale (the paper reports 419 unexpected interruptions in 54
days of 405B pretraining): decide per step whether to apply, skip or roll back, and check data-parallel replicas
for silent data corruption.

- A non-finite loss or gradient norm skips the update; `recovery.max_bad_steps` of them in a row roll back to the
  last checkpoint and leave the offending batches out from then on.
- A loss above `recovery.spike_factor` times its running mean (after `spike_warmup` good steps) is a spike:
  skipped, or rolled back likewise with `spike_action = "rollback"`.
- Every `parallel.sdc_check_interval` steps, replicas that should hold identical parameters compare checksums;
  the ranks that differ from the majority are named and every rank rolls back.

The Trainer applies the verdicts (herd/train/trainer.py); the state here is saved with every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from herd.config import RecoverySection

# Running mean of the loss for spike detection: an exponential average over roughly the last 10 good steps.
_SPIKE_EMA = 0.9


class Recovery:
    def __init__(self, cfg: RecoverySection) -> None:
        self.cfg = cfg
        self.skip_batches: set[int] = set()
        """Batches left out for good (the bad run of steps before a rollback)."""
        self.bad_batches: list[int] = []
        """The current run of bad steps."""
        self.loss_mean: float | None = None
        self.good_steps = self.skipped_steps = self.rollbacks = 0
        self.pending_reason = ""

    def check(
        self, loss: float, grad_norm: float, batch_index: int, *, can_roll_back: Callable[[], bool]
    ) -> tuple[str | None, str]:
        """(verdict, reason): verdict None applies the update; "rollback" rolls back (reason says why); any other
        verdict skips the update and reason is the event to log. `can_roll_back()` is asked only when a rollback
        is due (it waits for an asynchronous checkpoint save to finish)."""
        r = self.cfg
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.bad_batches.append(batch_index)
            self.skipped_steps += 1
            reason = f"non-finite loss {loss} or gradient norm {grad_norm} on batch {batch_index}"
            if len(self.bad_batches) >= r.max_bad_steps:
                return self._rollback_or_skip(f"{len(self.bad_batches)} bad steps in a row ({reason})", can_roll_back)
            return "non-finite", f"{reason}: update skipped"
        warm = self.loss_mean is not None and self.good_steps >= r.spike_warmup
        if r.spike_factor and warm and loss > r.spike_factor * self.loss_mean:  # type: ignore[operator]
            reason = f"loss {loss:.4f} > {r.spike_factor} x running mean {self.loss_mean:.4f} on batch {batch_index}"
            self.skipped_steps += 1
            if r.spike_action == "rollback":
                self.bad_batches.append(batch_index)
                return self._rollback_or_skip(f"loss spike ({reason})", can_roll_back)
            return "spike", f"loss spike: {reason}: update skipped"
        self.bad_batches = []
        self.good_steps += 1
        self.loss_mean = loss if self.loss_mean is None else _SPIKE_EMA * self.loss_mean + (1 - _SPIKE_EMA) * loss
        return None, ""

    def _rollback_or_skip(self, reason: str, can_roll_back: Callable[[], bool]) -> tuple[str, str]:
        if not can_roll_back():
            # Nothing to go back to; the bad updates were skipped, so the weights are still the last good ones.
            return "no-checkpoint", f"{reason}: no checkpoint to roll back to yet, update skipped"
        self.pending_reason = reason
        return "rollback", reason

    def start_rollback(self) -> tuple[str, list[int]]:
        """Count a rollback and leave out the bad run's batches for good; (reason, those batches)."""
        self.rollbacks += 1
        bad = sorted(self.bad_batches)
        if self.rollbacks > self.cfg.max_rollbacks:
            from herd.errors import TrainError

            raise TrainError(f"{self.pending_reason}; gave up after {self.cfg.max_rollbacks} rollbacks "
                             "(recovery.max_rollbacks)")  # fmt: skip
        self.skip_batches.update(bad)
        self.bad_batches = []
        return self.pending_reason, bad

    def state_dict(self) -> dict[str, Any]:
        return {"skip_batches": sorted(self.skip_batches), "loss_mean": self.loss_mean,
                "good_steps": self.good_steps, "skipped_steps": self.skipped_steps}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any], *, keep_counts: bool = False) -> None:
        """`keep_counts`: after a rollback the skipped-step count is of events, not part of the trajectory."""
        self.skip_batches |= set(state["skip_batches"])
        self.loss_mean, self.good_steps = state["loss_mean"], state["good_steps"]
        if not keep_counts:
            self.skipped_steps = state["skipped_steps"]


def replicas_that_differ(model: nn.Module, replicate: DeviceMesh, world_size: int) -> list[int]:
    """Global ranks whose parameter shards differ from their replica group's majority (the lowest rank wins a
    tie); every rank of the job gets the same answer."""
    checksum = 0
    for param in model.parameters():
        local = (param.to_local() if isinstance(param, DTensor) else param).detach().float().contiguous()
        checksum = (checksum * 1_000_003 + int(local.view(torch.int32).sum(dtype=torch.int64))) % (1 << 61)
    group = replicate.get_group()
    sums = [0] * replicate.size()
    dist.all_gather_object(sums, checksum, group=group)
    majority = max(sums, key=lambda c: (sums.count(c), -sums.index(c)))
    bad = torch.zeros(world_size, dtype=torch.int32)
    for r, c in zip(dist.get_process_group_ranks(group), sums, strict=True):
        bad[r] = int(c != majority)
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return [r for r in range(world_size) if bad[r]]
