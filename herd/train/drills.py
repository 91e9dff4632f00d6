"""Injected faults (`[faults]`), so that recovery is exercised the way it fails in a real job: a process killed or
hung at a step, NaN gradients, a loss spike, a silently corrupted parameter on one replica.

Process faults fire on the first launch only: a job restarted by torchrun must be able to finish.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from herd.config import FaultsSection
from herd.parallel.distributed import restart_count


class Drills:
    def __init__(self, cfg: FaultsSection, rank: int) -> None:
        self.cfg, self.rank = cfg, rank
        self.first_launch = restart_count() == 0
        self._corrupted = not self.first_launch  # the replay after the rollback must come out clean

    def at_step_start(self, step: int) -> None:
        """Kill or hang this process at `step` (rank faults.kill_rank only)."""
        if self.rank != self.cfg.kill_rank or not self.first_launch:
            return
        if step == self.cfg.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == self.cfg.hang_at_step:
            time.sleep(10**6)

    def loss_scale(self, batch_index: int) -> float:
        """A spike: the loss (and so the gradients) of a listed batch is multiplied by faults.spike_scale."""
        return self.cfg.spike_scale if batch_index in self.cfg.spike_batches else 1.0

    def poison_gradients(self, model: nn.Module, batch_index: int) -> None:
        if batch_index in self.cfg.nan_grad_batches:
            grad = next(p for p in model.parameters() if p.grad is not None).grad
            assert grad is not None
            (grad.to_local() if isinstance(grad, DTensor) else grad).fill_(float("nan"))

    def corrupt_parameters(self, model: nn.Module, step: int) -> None:
        """Once, after faults.corrupt_at_step on rank faults.corrupt_rank: a silent data corruption."""
        if step == self.cfg.corrupt_at_step and self.rank == self.cfg.corrupt_rank and not self._corrupted:
            self._corrupted = True
            param = next(iter(model.parameters()))
            with torch.no_grad():
                (param.to_local() if isinstance(param, DTensor) else param).add_(1e-3)
