"""Crash drills (issue 22): a command killed with SIGKILL at random points, again and again, then run to the end.

Each drill runs the command once uninterrupted (the reference), then, for each seed, in a fresh directory: start it,
kill the whole process group at a random time within the reference's duration, look at what is on disk, and repeat
`kills` times before letting it finish. What must hold:

- right after every kill, an output that looks complete (the drill's `complete` check) is byte-identical to the
  reference's: a half-written output never looks done;
- the final run exits 0, or refuses in one `herd: error:` line (a writer that never overwrites refuses once its
  output is there), and the output is then complete and byte-identical to the reference's (files the drill names
  `volatile`, such as timings, are compared by name only);
- every file in the output was renamed into place (or sits in a directory that was), unless the drill lists it as
  written in place and says why. A Python audit hook in the command's process records each file it opens for
  writing and each rename (`os.replace` raises the `os.rename` audit event).

`python tests/drills/long.py` runs more seeds and kills per command than `make test` does.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Runs in the command's own interpreter: record writes and renames, then run herd as `python -m herd` would.
_BOOT = """
import json, os, sys
_log = open(os.environ["HERD_DRILL_AUDIT"], "a", buffering=1)
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        path, mode, flags = args
        if (mode and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITE):
            _log.write(json.dumps(["write", os.path.abspath(path)]) + "\\n")
    elif event == "os.rename" and isinstance(args[1], (str, os.PathLike)):
        _log.write(json.dumps(["rename", os.path.abspath(args[0]), os.path.abspath(args[1])]) + "\\n")
sys.addaudithook(_hook)
import runpy
sys.argv = ["herd", *sys.argv[1:]]
runpy.run_module("herd", run_name="__main__", alter_sys=True)
"""

TIMEOUT_S = 600


@dataclass
class Drill:
    """A command to kill. Paths in `args` are relative to the drill's work directory (the command's cwd)."""

    args: list[str]
    output: str  # what the command writes, relative to the work directory
    complete: Callable[[Path], bool]  # does the output look finished?
    setup: Callable[[Path], None] = lambda work: None  # write the inputs into the work directory
    volatile: tuple[str, ...] = ()  # glob patterns (relative to `output`) compared by name only
    timing_keys: tuple[str, ...] = ()  # keys left out of every JSON file's comparison (wall-clock times)
    history: tuple[str, ...] = ()  # glob patterns of files recording the run's own history (resumes): not compared
    in_place: dict[str, str] = field(default_factory=dict)  # glob pattern -> why it may be written in place


@dataclass
class Outcome:
    seed: int
    kills: list[float]  # seconds after start
    finished_early: int = 0  # kills that came after the command had already ended
    looked_complete_after_kill: int = 0  # and matched the reference
    refused: str | None = None  # the one-line refusal, if the final run refused (its output was already complete)


def run(drill: Drill, work: Path, *, kill_after: float | None = None) -> tuple[int | None, str, float, float | None]:
    """Start the command in `work`; kill its process group after `kill_after` s. Returns (exit code or None if
    killed, stderr, seconds it ran, seconds until its output first looked complete or None)."""
    env = {**os.environ, "HERD_DRILL_AUDIT": str(work / "audit.jsonl"), "OMP_WAIT_POLICY": "PASSIVE"}
    output, err_path = work / drill.output, work / "stderr.txt"
    start, completed = time.monotonic(), None
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", _BOOT, *drill.args], cwd=work, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)  # fmt: skip
        deadline = start + (TIMEOUT_S if kill_after is None else kill_after)
        while proc.poll() is None and time.monotonic() < deadline:
            if completed is None and output.exists() and drill.complete(output):
                completed = time.monotonic() - start
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the command and any workers it started
            proc.wait()
            code = None
        else:
            code = proc.returncode
    if completed is None and code == 0 and drill.complete(output):
        completed = time.monotonic() - start
    return code, err_path.read_text(), time.monotonic() - start, completed


def digest(
    root: Path, volatile: tuple[str, ...] = (), timing_keys: tuple[str, ...] = (), history: tuple[str, ...] = ()
) -> dict[str, str]:
    """sha256 of every file under `root` by relative path (volatile ones as "*"; JSON files without `timing_keys`),
    leaving out `history` files and temporary files that a killed writer left behind (atomic writers'
    `.NAME.XXXX.tmp` and the like)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") and part.endswith(".tmp") for part in rel.split("/")):
            continue
        if any(fnmatch.fnmatch(rel, pattern) for pattern in history):
            continue
        if any(fnmatch.fnmatch(rel, pattern) for pattern in volatile):
            out[rel] = "*"
            continue
        data = path.read_bytes()
        if timing_keys and path.suffix == ".json":
            data = json.dumps(_without(json.loads(data), timing_keys), sort_keys=True).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def _without(value: object, keys: tuple[str, ...]) -> object:
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def audit(drill: Drill, work: Path) -> list[str]:
    """Files of the finished output written in place (not renamed into place) and not allowed to be."""
    out, renamed = (work / drill.output).resolve(), set()
    log = work / "audit.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        event = json.loads(line)
        if event[0] == "rename":
            renamed.add(Path(event[2]))
    bad = []
    for rel in digest(out):
        path = out / rel
        if any(p in renamed for p in (path, *path.parents)):
            continue
        if not any(fnmatch.fnmatch(rel, pattern) for pattern in drill.in_place):
            bad.append(rel)
    return bad


def reference(drill: Drill, work: Path) -> tuple[dict[str, str], float]:
    """The uninterrupted run: its output's digest and the seconds until that output looked complete."""
    work.mkdir(parents=True)
    drill.setup(work)
    code, err, _, completed = run(drill, work)
    assert code == 0, err
    assert completed is not None, f"{drill.args}: the uninterrupted run's output does not look complete"
    written_in_place = audit(drill, work)
    assert not written_in_place, f"{drill.args}: written in place, not renamed into place: {written_in_place}"
    return digest(work / drill.output, drill.volatile, drill.timing_keys, drill.history), completed


def kill_loop(drill: Drill, work: Path, expected: dict[str, str], seconds: float, *, seed: int, kills: int) -> Outcome:
    """Kill the command `kills` times at random points before the time its output took to look complete in the
    reference run, then let it finish; check what must hold (module doc)."""
    rng = random.Random(seed)
    work.mkdir(parents=True)
    drill.setup(work)
    outcome = Outcome(seed, [])
    output = work / drill.output
    for _ in range(kills):
        when = rng.uniform(0.25, 1.0) * seconds  # the first quarter is mostly interpreter start-up and imports
        code, err, _, _ = run(drill, work, kill_after=when)
        outcome.kills.append(round(when, 2))
        if code is not None:  # it ended before the kill: finished (a resumed run has less to do) or refused
            _check_refusal(code, err, seed)
            outcome.finished_early += 1
        if output.exists() and drill.complete(output):
            got = digest(output, drill.volatile, drill.timing_keys, drill.history)
            assert got == expected, f"seed {seed}: looked complete after a kill at {when:.2f} s but differs: " + (
                _diff(got, expected)
            )
            outcome.looked_complete_after_kill += code is None
    code, err, _, _ = run(drill, work)
    if code != 0:
        outcome.refused = _check_refusal(code, err, seed)
    # Finished, or refused because a complete output is already there: either way the reference's bytes.
    assert drill.complete(output), f"seed {seed}: after kills at {outcome.kills} the output is not complete ({err})"
    got = digest(output, drill.volatile, drill.timing_keys, drill.history)
    assert got == expected, f"seed {seed}: the output after kills at {outcome.kills} differs: " + _diff(got, expected)
    written_in_place = audit(drill, work)
    assert not written_in_place, f"seed {seed}: written in place: {written_in_place}"
    return outcome


def _check_refusal(code: int, err: str, seed: int) -> str | None:
    """None for a clean exit; the one `herd: error:` line of a refusal (anything else fails the drill)."""
    if code == 0:
        return None
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("herd: error:"), f"seed {seed}: exit {code}: {err}"
    return lines[0]


def _diff(got: dict[str, str], expected: dict[str, str]) -> str:
    missing = sorted(set(expected) - set(got))[:5]
    extra = sorted(set(got) - set(expected))[:5]
    changed = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])[:5]
    return f"missing {missing}, extra {extra}, changed {changed}"
