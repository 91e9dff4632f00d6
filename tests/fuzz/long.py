"""The long fuzz run (issue 22): every reader's seed files corrupted for `--minutes` each, counts to a JSON file.

    .venv/bin/python tests/fuzz/long.py --minutes 30            # about 11 hours: 22 seed files
    .venv/bin/python tests/fuzz/long.py --minutes 1 --cases shard,gguf
    .venv/bin/python tests/fuzz/long.py --cases meta --files params.json   # one seed file of a case

Each case runs in its own process, with an address-space limit (--max-gb), so an allocation sized from a corrupt
header fails as MemoryError in that process (a failure, with the run that caused it) instead of taking the machine.
The JSON file is rewritten after each case, so a run stopped part way keeps the cases it finished. Each seed file
records wall and CPU seconds: on a shared machine the CPU figure says how much fuzzing it got.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from cases import CASES  # noqa: E402
from fuzzing import fuzz  # noqa: E402


def run_case(name: str, seconds: float, seed: int, max_gb: float, only: tuple[str, ...] = ()) -> dict:
    limit = int(max_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    with tempfile.TemporaryDirectory() as d:
        case = CASES[name](Path(d))
        case.read()
        files = {}
        for i, target in enumerate(case.targets):
            if only and target.name not in only:
                continue
            start, cpu = time.monotonic(), time.process_time()
            out = fuzz(case.read, target, count=10**9, seconds=seconds, seed=seed + i, names=case.names)
            files[target.name] = {
                "runs": out.runs, "accepted": out.accepted, "refused": out.refused,
                "failures": len(out.failures), "first_failures": out.failures[:5],
                "seconds": round(time.monotonic() - start, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
                "seed": seed + i,
            }  # fmt: skip
            print(f"{name} {target.name}: {files[target.name]}", file=sys.stderr, flush=True)
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="per seed file")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--files", default="", help="comma-separated seed file names to keep (default: all of each case)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--max-gb", type=float, default=4.0, help="address-space limit of each case's process")
    p.add_argument("--out", default=str(HERE / "results.json"))
    a = p.parse_args()
    names = [n for n in a.cases.split(",") if n]
    if unknown := [n for n in names if n not in CASES]:
        sys.exit(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    results: dict[str, dict] = {}
    ctx = multiprocessing.get_context("spawn")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    for name in names:
        with ctx.Pool(1) as pool:
            only = tuple(f for f in a.files.split(",") if f)
            results[name] = pool.apply(run_case, (name, a.minutes * 60, a.seed, a.max_gb, only))
        if not results[name]:
            sys.exit(f"--files {a.files}: case {name} has no seed file of that name")
        summary = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "herd_commit": commit,
            "minutes_per_file": a.minutes,
            "cases": results,
            "total_runs": sum(f["runs"] for files in results.values() for f in files.values()),
            "total_failures": sum(f["failures"] for files in results.values() for f in files.values()),
        }
        tmp = Path(a.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        tmp.replace(a.out)  # a stopped run leaves the last finished case's summary, never half a file
    print(f"{summary['total_runs']} runs, {summary['total_failures']} failures -> {a.out}")
    sys.exit(1 if summary["total_failures"] else 0)


if __name__ == "__main__":
    main()
