"""Per-step metrics: metrics.jsonl (one line per step), TensorBoard event files, Weights & Biases (optional), and
the console.

MFU is model FLOPs per second (herd's FLOPs-per-token formula, attention included; see `flops_per_token`) over
the peak matmul throughput of this machine for the training dtype, measured at start-up unless given, so the
figure means the same on a laptop and on an H100.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from herd.config import JobConfig, dump
from herd.errors import TrainError
from herd.fileio import atomic_file


def measure_peak_flops(dtype: torch.dtype, device: torch.device, *, n: int = 2048, reps: int = 4) -> float:
    """Best FLOP/s of an n x n matmul on `device` in `dtype` (a few tenths of a second). Its operands come from a
    private generator: the trainer measures after restoring a checkpoint's RNG state, and drawing from the global one
    there would shift every later random draw of a resumed run against the uninterrupted one."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    best = float("inf")
    for _ in range(reps + 1):  # the first is a warm-up
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmul runs at speed on `device`: always on an accelerator; on a CPU only through oneDNN, which
    needs AVX512-BF16 or AMX. Elsewhere torch falls back to a scalar kernel, hundreds of times slower than float32."""
    return device.type != "cpu" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated accelerator memory, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return rss_kb / 2**20


# Objective metrics worth a place on the console line (all of them go to metrics.jsonl and TensorBoard).
SHOWN = ("accuracy", "reward_accuracy", "reward_margin", "score", "kl")


class MetricsLogger:
    """Writes each step's record to metrics.jsonl and TensorBoard; shows a progress bar or periodic lines."""

    def __init__(
        self, run_dir: Path, *, total_steps: int, start_step: int, tensorboard: bool, log_interval: int,
        progress: bool = True, name: str = "train", wandb: WandbSink | None = None,
    ) -> None:  # fmt: skip
        """`name` labels the progress bar and console lines (the command: train, sft, dpo...)."""
        self.wandb = wandb
        self.name = name
        self.path = run_dir / "metrics.jsonl"
        self.events_path = run_dir / "events.jsonl"
        self.total, self.log_interval = total_steps, log_interval
        self.truncate(start_step)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the life of the run
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after the checkpoint it resumes from.
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
        self.bar = None
        if progress and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn(name), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(), transient=True,
            )  # fmt: skip
            self.task = self.bar.add_task(name, total=total_steps, completed=start_step, info="")
            self.bar.start()

    def truncate(self, step: int) -> None:
        """Drop lines after `step` (written by a run that crashed or rolled back past them)."""
        if not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        kept = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # the half-written last line of a run killed mid-write
                    continue
                bad = f"{self.path}: line {i + 1} is not JSON"
                raise TrainError(f"{bad}; move the file away to start a new log") from None
            if record is not None and record["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            with atomic_file(self.path, "w") as f:
                f.writelines(kept)

    def reopen_at(self, step: int) -> None:
        """After a rollback to `step`: rewrite the log as of that step and carry on appending."""
        self.file.close()
        self.truncate(step)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record["step"]
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log(record)
        shown = "".join(f"  {k} {record[k]:.4g}" for k in SHOWN if k in record)
        info = f"loss {record['loss']:.4f}{shown}  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif self.log_interval and (step % self.log_interval == 0 or step == self.total):
            prefix = "" if self.name == "train" else f"[{self.name}] "
            print(f"{prefix}step {step:>6}/{self.total}  {info}  mfu {record['mfu']:.1%}", flush=True)

    def event(self, record: dict[str, Any]) -> None:
        """A recovery event (skip, rollback, resume...): events.jsonl, and always a console line."""
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        text = f"[step {record['step']}] {record['event']}: {record['reason']}"
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close()
        self.file.close()


class WandbSink:
    """One W&B run per run directory. Its id is kept in <run_dir>/wandb_id, so a resumed run appends to the same
    run (resume="allow"); offline runs are written under <run_dir>/wandb for `wandb sync`.

    The x-axis is the logged `train/step`, not W&B's own step counter: after a rollback or a resume the steps
    since the checkpoint are logged again, and W&B drops a `step=` that goes backwards."""

    def __init__(self, run_dir: Path, *, project: str, mode: str, job_type: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise TrainError("metrics.wandb=true needs the wandb package: pip install 'herd[wandb]' "
                             "(or set metrics.wandb=false)") from None  # fmt: skip
        online = mode == "online" or (mode == "auto" and bool(os.environ.get("WANDB_API_KEY")))
        settings = wandb.Settings(console="off")  # herd's console is a progress bar: W&B would store every redraw
        id_file = run_dir / "wandb_id"
        if not id_file.is_file():
            with atomic_file(id_file, "w") as f:
                f.write(secrets.token_hex(4))
        self.run = wandb.init(
            project=project, name=run_dir.name, job_type=job_type, id=id_file.read_text().strip(), resume="allow",
            dir=str(run_dir), mode="online" if online else "offline", config=config, settings=settings,
        )  # fmt: skip
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")

    @classmethod
    def open(cls, run_dir: Path, cfg: JobConfig, command: str) -> WandbSink | None:
        """The sink `cfg.metrics` asks for (None when metrics.wandb is off), with the resolved config attached."""
        if not cfg.metrics.wandb:
            return None
        m = cfg.metrics
        config = tomllib.loads(dump(cfg, command))
        return cls(run_dir, project=m.wandb_project, mode=m.wandb_mode, job_type=command, config=config)

    def log(self, record: dict[str, Any]) -> None:
        scalars = {f"train/{k}": v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.run.log(scalars)  # record["step"] becomes train/step

    def close(self) -> None:
        self.run.finish()


class NullLogger:
    """What ranks other than 0 log to: nothing (rank 0 reports the reduced metrics)."""

    def log(self, record: dict[str, Any]) -> None: ...
    def event(self, record: dict[str, Any]) -> None: ...
    def reopen_at(self, step: int) -> None: ...
    def close(self) -> None: ...
