"""One progress display for a whole `herd run`: the recipe (stage i of n, with an ETA from the stages' estimates)
and the running stage's own steps (training steps with the loss, curation steps...), with an ETA.

On a terminal this is a rich live display; the stages' printed lines scroll above it. Elsewhere (CI, a log file)
it prints a line when a stage starts and ends, and the stage's progress at most every `every` seconds, so a long
stage never sits silent.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from herd.recipe.runner import Planned

UNKNOWN_STAGE_S = 30.0
"""Weight, for the recipe's ETA, of a stage without an estimate."""


class Display:
    def __init__(self, *, live: bool | None = None, every: float = 15.0) -> None:
        self.live = sys.stderr.isatty() if live is None else live
        self.every = every
        self._progress: Any = None
        self._recipe: Any = None
        self._stage: Any = None
        self._current: Planned | None = None
        self._count = 0
        self._started = self._last_line = 0.0

    @contextlib.contextmanager
    def session(self, planned: list[Planned]) -> Iterator[None]:
        self._count = len(planned)
        self._weights = {p.name: _weight(p) for p in planned if p.status in ("run", "resume")}
        if not self.live:
            yield
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), transient=False,
            redirect_stdout=True, redirect_stderr=True,
        )  # fmt: skip
        total = sum(self._weights.values()) or 1.0
        with self._progress:
            self._recipe = self._progress.add_task("recipe", total=round(total))
            yield
            self._progress.update(self._recipe, completed=round(total), description="recipe: done")

    def _say(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def skipped(self, p: Planned) -> None:
        self._say(f"[herd run] {p.name}: {'skipped' if p.status == 'skip' else 'next'} ({p.why})")

    def reused(self, p: Planned) -> None:
        self._say(f"[herd run] {p.name}: reused ({p.why}, key {p.key})")

    def started(self, index: int, p: Planned) -> None:
        self._current = p
        self._say(f"[herd run] stage {index + 1}/{self._count} {p.name} ({p.stage.KIND}): {p.status} ({p.why})")
        self._started = self._last_line = time.monotonic()
        if self._progress is not None:
            self._progress.update(self._recipe, description=f"recipe: stage {index + 1}/{self._count} {p.name}")
            self._stage = self._progress.add_task(f"  {p.name}", total=None)
        else:  # no live display: a line at least every `every` seconds, whatever the stage prints
            threading.Thread(target=self._heartbeat, args=(p,), name="herd-run-heartbeat", daemon=True).start()

    def _heartbeat(self, p: Planned) -> None:
        while self._current is p:
            time.sleep(min(1.0, self.every))
            if self._current is p and time.monotonic() - self._last_line >= self.every:
                self._say(f"[herd run] {p.name}: running for {time.monotonic() - self._started:.0f} s")
                self._last_line = time.monotonic()

    def progress(self, done: float, total: float | None, text: str) -> None:
        """A stage's own steps (`Context.progress`)."""
        p = self._current
        if p is None:
            return
        if self._progress is not None and self._stage is not None:
            self._progress.update(self._stage, completed=done, total=total, description=f"  {p.name}: {text}"[:70])
        elif time.monotonic() - self._last_line >= self.every:
            of = f"/{total:.0f}" if total else ""
            self._say(f"[herd run] {p.name}: {done:.0f}{of} {text}")
            self._last_line = time.monotonic()

    def finished(self, p: Planned, seconds: float) -> None:
        self._say(f"[herd run] {p.name}: done in {seconds:.0f} s (key {p.key})")
        self._end_stage(p)

    def failed(self, p: Planned) -> None:
        self._say(f"[herd run] {p.name}: failed; the next run resumes it")
        self._end_stage(p)

    def _end_stage(self, p: Planned) -> None:
        if self._progress is not None:
            if self._stage is not None:
                self._progress.remove_task(self._stage)
                self._stage = None
            self._progress.advance(self._recipe, round(self._weights.get(p.name, 0.0)))
        self._current = None

    @contextlib.contextmanager
    def following_trainers(self) -> Iterator[None]:
        """Every trainer the stage starts (its own, or the round's SFT, reward model and DPO) reports its steps."""
        from herd.train.trainer import STEP_HOOKS

        def hook(trainer: Any, record: dict[str, Any]) -> None:
            name = Path(trainer.run_dir).name
            self.progress(record["step"], trainer.steps, f"{name} step {record['step']} loss {record['loss']:.4f}")

        STEP_HOOKS.append(hook)
        try:
            yield
        finally:
            STEP_HOOKS.remove(hook)


def _weight(p: Planned) -> float:
    return p.estimate.seconds if p.estimate.seconds is not None else UNKNOWN_STAGE_S
