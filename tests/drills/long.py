"""The long crash drill (issue 22): every command of tests/drills/commands.py killed at random points, `--kills`
times per seed for `--seeds` seeds, then finished; the outcomes go to a JSON file.

    .venv/bin/python tests/drills/long.py                          # 5 seeds x 5 kills per command
    .venv/bin/python tests/drills/long.py --seeds 2 --kills 3 --commands "data pack,ckpt average"

What must hold is drill.py's: an output that looks complete after a kill is the uninterrupted run's, the finished
output is byte-identical to it (or the command refuses in one line), and every file was renamed into place.
A failed check stops that command and is recorded with its message.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from commands import build_inputs, drills  # noqa: E402
from drill import kill_loop, reference  # noqa: E402


def main() -> None:
    names = sorted(drills(Path()))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--kills", type=int, default=5, help="per seed, before the run that finishes")
    p.add_argument("--commands", default=",".join(names), help=f"comma-separated, of {', '.join(names)}")
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--merge", action="store_true", help="keep the other commands' entries already in --out")
    a = p.parse_args()
    chosen = [n for n in a.commands.split(",") if n]
    if unknown := [n for n in chosen if n not in names]:
        sys.exit(f"unknown commands {unknown}; known: {', '.join(names)}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        inputs = build_inputs(Path(d) / "inputs")
        for name in chosen:
            drill, start = drills(inputs)[name], time.monotonic()
            work = Path(d) / name.replace(" ", "-")
            entry: dict = {"seeds": [], "failure": None}
            try:
                expected, seconds = reference(drill, work / "reference")
                entry["reference_seconds"] = round(seconds, 2)
                entry["files"] = len(expected)
                for seed in range(a.seeds):
                    outcome = kill_loop(drill, work / f"seed-{seed}", expected, seconds, seed=seed, kills=a.kills)
                    entry["seeds"].append(asdict(outcome))
            except AssertionError as e:
                entry["failure"] = str(e)[:2000]
            kills = [k for s in entry["seeds"] for k in s["kills"]]
            entry["summary"] = {
                "kills": len(kills),
                "landed_mid_run": len(kills) - sum(s["finished_early"] for s in entry["seeds"]),
                "looked_complete_after_kill": sum(s["looked_complete_after_kill"] for s in entry["seeds"]),
                "refused": sum(s["refused"] is not None for s in entry["seeds"]),
                "passed": entry["failure"] is None,
                "seconds": round(time.monotonic() - start, 1),
            }
            results[name] = entry
            print(f"{name}: {entry['summary']}" + (f" FAILED: {entry['failure']}" if entry["failure"] else ""),
                  file=sys.stderr, flush=True)  # fmt: skip
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    for entry in results.values():
        entry["date"], entry["settings"] = date, {"seeds": a.seeds, "kills_per_seed": a.kills}
    if a.merge and Path(a.out).is_file():
        old = json.loads(Path(a.out).read_text())
        for entry in old["commands"].values():  # a file from before entries carried their own date and settings
            entry.setdefault("date", old.get("date"))
            entry.setdefault("settings", old.get("settings"))
        results = {**old["commands"], **results}
    out = {"commands": dict(sorted(results.items()))}
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    sys.exit(0 if all(r["failure"] is None for r in results.values()) else 1)


if __name__ == "__main__":
    main()
