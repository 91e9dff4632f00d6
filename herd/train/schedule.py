"""What every step does, computed from the config alone: batch size and sequence length (the ramp), tokens seen,
learning rate (warmup, decay to a floor, linear anneal to zero) and phase.

Because the schedule is a pure function of the step, a resumed run needs only the step to be back on it, and
`herd train` can print the whole plan before the first step.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from herd.config import ConfigError, JobConfig


@dataclass(frozen=True, slots=True)
class StepPlan:
    step: int
    """1-based optimizer step."""
    seq_len: int
    batch_tokens: int
    tokens_before: int
    """Training tokens drawn before this step."""
    lr: float
    phase: str
    """warmup, decay or anneal."""


class Schedule:
    def __init__(self, cfg: JobConfig, *, steps: int | None = None) -> None:
        """`steps` overrides training.steps (post-training stages count them from epochs over their examples; a
        warmup as long as such a run is cut to leave one step, and `warmup_cut` says so)."""
        t = cfg.training
        self.steps, self.peak_lr = steps or t.steps, cfg.optim.lr
        self.warmup, self.decay = cfg.lr_schedule.warmup_steps, cfg.lr_schedule.decay
        self.warmup_cut = steps is not None and self.warmup >= self.steps
        if self.warmup_cut:
            self.warmup = self.steps - 1
        if self.warmup >= self.steps:
            raise ConfigError(f"lr_schedule.warmup_steps={self.warmup} must be less than the run's {self.steps} steps")
        self.floor = cfg.lr_schedule.min_lr_ratio
        # (first step, tokens before it, batch_tokens, seq_len) per ramp stage that is reached.
        self._stages: list[tuple[int, int, int, int]] = [(1, 0, t.batch_tokens, t.seq_len)]
        for stage in t.ramp:
            first, tokens, batch_tokens, _ = self._stages[-1]
            n = max(1, math.ceil((stage.at_tokens - tokens) / batch_tokens))
            if first + n > self.steps:
                break
            self._stages.append((first + n, tokens + n * batch_tokens, stage.batch_tokens, stage.seq_len))
        self._firsts = [s[0] for s in self._stages]
        self.total_tokens = self.tokens_before(self.steps + 1)
        self.anneal_start = self.steps + 1
        if cfg.anneal.tokens:
            # The first step whose tokens all lie within the last anneal.tokens.
            lo, hi = 1, self.steps
            while lo < hi:
                mid = (lo + hi) // 2
                if self.total_tokens - self.tokens_before(mid) <= cfg.anneal.tokens:
                    hi = mid
                else:
                    lo = mid + 1
            self.anneal_start = lo
            if self.anneal_start <= self.warmup + 1:
                raise ConfigError(
                    f"anneal.tokens={cfg.anneal.tokens} reaches into the warmup (the run has {self.total_tokens} "
                    f"tokens, warmup ends at step {self.warmup})"
                )

    def _stage(self, step: int) -> tuple[int, int, int, int]:
        return self._stages[bisect.bisect_right(self._firsts, step) - 1]

    def tokens_before(self, step: int) -> int:
        first, tokens, batch_tokens, _ = self._stage(step)
        return tokens + (step - first) * batch_tokens

    def lr(self, step: int) -> float:
        if step <= self.warmup:
            return self.peak_lr * step / self.warmup
        if step >= self.anneal_start:
            start_lr = self.lr(self.anneal_start - 1)
            left = self.total_tokens - self.tokens_before(step)
            return start_lr * left / (self.total_tokens - self.tokens_before(self.anneal_start))
        end = self.anneal_start - 1
        progress = min(1.0, (step - self.warmup) / max(1, end - self.warmup))
        if self.decay == "constant":
            shape = 1.0
        elif self.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.peak_lr * (self.floor + (1.0 - self.floor) * shape)

    def at(self, step: int) -> StepPlan:
        _, _, batch_tokens, seq_len = self._stage(step)
        phase = "warmup" if step <= self.warmup else "anneal" if step >= self.anneal_start else "decay"
        return StepPlan(step, seq_len, batch_tokens, self.tokens_before(step), self.lr(step), phase)

    def stages(self) -> list[dict[str, int]]:
        """The ramp as it plays out: from which step and token count each (batch, seq_len) holds."""
        return [{"step": f, "tokens": tok, "batch_tokens": b, "seq_len": s} for f, tok, b, s in self._stages]
