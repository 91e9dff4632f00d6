"""Parallel layouts: tokens/s of `herd train` in 1 process vs 2 processes under each layout, and checkpoint save
time, sync vs async, with its share of training time. One run, on this machine.

Every run is the real command (`herd train`, or `torchrun --standalone --nproc-per-node 2 -m herd train`) on the
same config: the `debug` preset, 256-token sequences, 4096-token batches, a checkpoint every 4 steps. torchrun
gives each of its 2 workers one thread; the single process gets 2 threads. tokens/s is the median over the steps
after the first two; "blocked" is how long a save held up the training loop, median over the run's saves, and
"share" is that time over the training time of the `interval` steps between saves.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/parallel.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/train.py builds the same shards
from train import build_shards

from herd.config import dump, load

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {
    "1 process": (1, []),
    "FSDP2 x2": (2, ["parallel.dp_shard=2"]),
    "TP x2": (2, ["parallel.tp=2", "parallel.dp_shard=1"]),
    "PP x2 (1F1B, 4 micro-batches)": (2, ["parallel.pp=2", "parallel.dp_shard=1", "parallel.pp_microbatches=4"]),
    "replicas x2 (HSDP)": (2, ["parallel.dp_replicate=2", "parallel.dp_shard=1"]),
}


def run(work: Path, shards: Path, name: str, nproc: int, layout: list[str], a, async_save: bool) -> dict:
    run_dir = work / f"{name.split()[0]}-{nproc}-{'async' if async_save else 'sync'}"
    cfg = load("train", None, [
        f"job.dump_folder='{run_dir}'", f"data.shards=['{shards}']", f"model.preset='{a.preset}'",
        f"training.steps={a.steps}", "training.seq_len=256", "training.batch_tokens=4096",
        "lr_schedule.warmup_steps=2", f"checkpoint.interval={a.interval}", "checkpoint.keep_last=2",
        f"checkpoint.async_save={str(async_save).lower()}", "metrics.tensorboard=false", "metrics.log_interval=0",
        "metrics.peak_tflops=1.0", *layout,
    ])  # fmt: skip
    config = work / f"{run_dir.name}.toml"
    config.write_text(dump(cfg, "train"))
    launcher = (
        [sys.executable, "-m", "herd"]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            "-m",
            "herd",
        ]
    )
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    out = subprocess.run([*launcher, "train", "--config", str(config)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][2:]
    saves = [json.loads(x) for x in (run_dir / "checkpoints.jsonl").read_text().splitlines()]
    step_s = statistics.median(r["step_s"] for r in records)
    blocked = statistics.median(s["blocked_s"] for s in saves)
    return {
        "layout": name, "processes": nproc, "async_save": async_save,
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in records)),
        "step_s": round(step_s, 4), "save_blocked_s": round(blocked, 4),
        "save_share": round(blocked / (blocked + a.interval * step_s), 4),
        "final_loss": records[-1]["loss"], "wall_s": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="debug")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--interval", type=int, default=4)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "parallel.json"))
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="herd-bench-parallel-"))
    shards = build_shards(work)
    results = []
    for name, (nproc, layout) in LAYOUTS.items():
        for async_save in (False, True) if name in ("1 process", "FSDP2 x2") else (False,):
            row = run(work, shards, name, nproc, layout, a, async_save)
            results.append(row)
            print(
                f"{name:32} {'async' if async_save else 'sync ':5} {row['tokens_per_s']:>7,} tok/s  "
                f"save blocks {row['save_blocked_s']:.3f}s ({row['save_share']:.1%} of training)",
                flush=True,
            )
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "cpus": os.cpu_count(),
            "preset": a.preset, "steps": a.steps, "interval": a.interval}  # fmt: skip
    Path(a.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    base = results[0]["tokens_per_s"]
    print("\n| layout | processes | checkpoint | tokens/s | vs 1 process | save blocks (s) | share of training |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['layout']} | {r['processes']} | {'async' if r['async_save'] else 'sync'} | "
              f"{r['tokens_per_s']:,} | {r['tokens_per_s'] / base:.2f}x | {r['save_blocked_s']:.3f} | "
              f"{r['save_share']:.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
