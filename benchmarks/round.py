"""The shipped post-training round (`herd round --config configs/posttrain/round.toml`), measured: its held-out
metrics before and after each stage, the reward model's and DPO's held-out figures, how often the reward model
agrees with the checkers when rejection sampling ranks samples, and the time of each stage. The README's round
table comes from the JSON this writes (`results/round_seed<seed>.json`).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/round.py                 # ~16 minutes on 2 cores
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/round.py --seed 1
    .venv/bin/python benchmarks/round.py --run-dir runs/round                   # collect a finished round

Run it alone: the stage times are wall times on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def collect(run_dir: Path) -> dict:
    """What a finished round wrote: round.json (metrics without the responses, stage times, each stage's summary)
    and the resolved config of the round and of each stage."""

    def text(path: Path) -> str | None:
        return path.read_text() if path.is_file() else None  # rounds before herd's one config tree saved none

    configs = {name: text(run_dir / name / "config.toml") for name in ("sft", "rm", "rs", "dpo")}
    return {"round": json.loads((run_dir / "round.json").read_text()), "config": text(run_dir / "config.toml"),
            "stage_configs": configs}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "posttrain" / "round.toml"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", help="a round already run to the end (its round.json is read, nothing is run)")
    p.add_argument("--out", help="results file (default: benchmarks/results/round_seed<seed>.json)")
    p.add_argument("--note", default="", help="stored in the results' meta (e.g. the commit a collected run used)")
    a = p.parse_args()
    if a.run_dir:
        run_dir, seconds = Path(a.run_dir), None
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="herd-round-")) / "round"
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "herd", "round", "--config", a.config, f"--job.dump_folder={run_dir}",
               f"--job.seed={a.seed}"]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        seconds = round(time.perf_counter() - t0, 1)
    result = collect(run_dir)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result["meta"] = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
        "collected_at_commit": commit.stdout.strip(), "run_dir": str(run_dir), "process_s": seconds, "note": a.note,
    }  # fmt: skip
    import tomllib

    seed = tomllib.loads(result["config"])["job"]["seed"] if result["config"] else a.seed
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"round_seed{seed}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    from herd.posttrain.round import format_done

    print(format_done(result["round"]))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
