"""`herd run`: the stages of a recipe in order, each skipped when its outputs are already there for the same key.

A stage's key hashes its settings (`Stage.key_material`), the source of the herd packages it runs (`Stage.CODE`)
and the keys of the stages it reads. So a changed setting changes that stage's key and the keys of every stage
downstream of it, and nothing else. On disk, per stage directory:

    <run>/<stage>/.herd-stage   the key the directory was started with (a stage killed midway resumes in place
                                 when its key is unchanged: training, curation and the round pick up their work)
    <run>/<stage>/stage.json    written last, atomically: the stage finished with that key (summary, outputs)

A directory started with another key is cleared before the stage runs again. lineage.json maps every artifact to
the config, code version and input hashes that made it; report.html is redrawn after every stage.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import herd
from herd.fileio import atomic_file
from herd.recipe.display import Display
from herd.recipe.spec import Recipe, RecipeError
from herd.recipe.stage import Context, Done, Estimate, Stage

STARTED = ".herd-stage"
DONE = "stage.json"


@dataclass
class Planned:
    stage: Stage
    key: str
    parts: dict[str, Any]
    """What the key hashes: settings, code and input keys (kept in stage.json to say why a stage reruns)."""
    status: str = "run"
    """reuse, resume or run; for a service (serve), skip or serve (with --serve: the CLI starts it last)."""
    why: str = "new"
    estimate: Estimate = field(default_factory=Estimate)
    done: Done | None = None
    """The finished stage (ran or reused) as later stages see it."""

    @property
    def name(self) -> str:
        return self.stage.name


def build_stages(recipe: Recipe) -> list[Stage]:
    from herd.recipe.stages import KINDS

    stages = [KINDS[s.kind](s, recipe.path) for s in recipe.stages]
    by_name = {s.name: s for s in stages}
    for stage in stages:
        stage.upstream = {n: by_name[src] for n, src in stage.spec.inputs.items()}
    for stage in stages:
        stage.validate()
    return stages


@functools.cache
def code_version(packages: tuple[str, ...]) -> str:
    """sha256 of the source files (.py, .cpp, .yaml, .toml) of herd's `packages`, with herd's version."""
    import importlib

    digest = hashlib.sha256(herd.__version__.encode())
    for name in sorted(packages):
        module = importlib.import_module(name)
        root = Path(module.__file__ or "")
        files = sorted(root.parent.rglob("*")) if root.name == "__init__.py" else [root]
        for path in files:
            if path.suffix in (".py", ".cpp", ".yaml", ".toml") and path.is_file():
                digest.update(str(path.relative_to(root.parent)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _stage_code(stage: Stage) -> str:
    """The code a stage runs: the packages it names and its own module."""
    return code_version((*stage.CODE, type(stage).__module__))


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def plan_run(recipe: Recipe, stages: list[Stage], *, serve: bool = False, rerun: tuple[str, ...] = ()) -> list[Planned]:
    """Every stage's key and whether it will be reused, resumed or run (and why)."""
    unknown = [n for n in rerun if n not in {s.name for s in stages}]
    if unknown:
        raise RecipeError(f"--rerun {unknown[0]}: no such stage in {recipe.path}")
    keys: dict[str, str] = {}
    planned: list[Planned] = []
    for stage in stages:
        parts = {
            "kind": stage.KIND,
            "settings": _sha(stage.key_material()),
            "code": _stage_code(stage),
            "inputs": {n: keys[src] for n, src in sorted(stage.spec.inputs.items())},
            "seed": recipe.seed,
        }
        keys[stage.name] = key = _sha(parts)[:16]
        p = Planned(stage, key, parts)
        p.estimate = stage.estimate()
        folder = recipe.dir / stage.name
        done = _read_done(folder)
        if stage.SERVICE:  # the CLI starts it once the other stages are done
            p.status, p.why = ("serve", "starts after the other stages") if serve else ("skip", "only with --serve")
        elif stage.name in rerun:
            p.status, p.why = "run", "--rerun"
        elif done is not None and done.get("key") == key:
            p.status, p.why = "reuse", "finished with the same key"
        elif done is not None:
            p.why = _changed(done.get("parts", {}), parts)
        elif _read_started(folder) == key:
            p.status, p.why = "resume", "killed or failed midway; same key"
        planned.append(p)
    forced = {n for name in rerun for n in recipe.downstream(name)}  # same keys, but their inputs are made anew
    for p in planned:
        if p.name in forced and p.status in ("reuse", "resume"):
            p.status, p.why = "run", "an input is rerun"
    return planned


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old.get("settings") != new["settings"]:
        return "settings changed"
    if old.get("code") != new["code"]:
        return "herd's code changed"
    changed = [n for n, k in new["inputs"].items() if old.get("inputs", {}).get(n) != k]
    return f"input {', '.join(changed)} changed" if changed else "seed or wiring changed"


def _read_done(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / DONE).read_text())
    except (OSError, ValueError):
        return None  # absent, or unreadable: the stage is not known to be finished


def _read_started(folder: Path) -> str | None:
    try:
        return (folder / STARTED).read_text().strip()
    except OSError:
        return None


def format_plan(recipe: Recipe, planned: list[Planned]) -> str:
    """The dry run's table: stage, kind, what happens and why, expected time and memory."""
    head = f"herd run {recipe.path} -> {recipe.dir}  ({len(planned)} stages, herd {herd.__version__})"
    lines = [head, "", f"{'stage':<14}{'kind':<11}{'action':<9}{'time':>10}{'memory':>11}  why / basis"]
    total = 0.0
    for p in planned:
        e = p.estimate
        if p.status in ("run", "resume") and e.seconds is not None:
            total += e.seconds
        when = "-" if e.seconds is None else _duration(e.seconds)
        mem = "-" if e.memory_gib is None else _memory(e.memory_gib)
        inputs = ", ".join(f"{n}<-{s}" for n, s in p.stage.spec.inputs.items())
        lines.append(f"{p.name:<14}{p.stage.KIND:<11}{p.status:<9}{when:>10}{mem:>11}  {p.why}"
                     + (f"; reads {inputs}" if inputs else ""))  # fmt: skip
        if e.basis:
            lines.append(f"{'':<55}{e.basis}")
        if e.warning:
            lines.append(f"{'':<55}WARNING: {e.warning}")
    lines += ["", f"expected time of what would run: {_duration(total)} (stages with an estimate)"]
    return "\n".join(lines)


def _memory(gib: float) -> str:
    return f"{gib:,.1f} GiB" if gib >= 1 else f"{gib * 1024:,.0f} MiB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"


def run_recipe(
    recipe: Recipe,
    *,
    dry_run: bool = False,
    serve: bool = False,
    rerun: tuple[str, ...] = (),
    display: Display | None = None,
) -> list[Planned]:
    """Run (or with dry_run only plan) the recipe; returns the plan with each stage's final status."""
    stages = build_stages(recipe)
    planned = plan_run(recipe, stages, serve=serve, rerun=rerun)
    if dry_run:
        return planned
    from herd.recipe.lineage import Lineage

    recipe.dir.mkdir(parents=True, exist_ok=True)
    lineage = Lineage(recipe)
    display = display or Display()
    done: dict[str, Done] = {}
    with display.session(planned):
        for i, p in enumerate(planned):
            folder = recipe.dir / p.name
            if p.status in ("skip", "serve"):
                display.skipped(p)
                continue
            if p.status == "reuse" and (changed := lineage.inputs_remade(p)):
                p.status, p.why = "run", f"input {changed} was made again with other content"
            if p.status == "reuse":
                record = _read_done(folder)
                assert record is not None
                done[p.name] = p.done = _as_done(p, folder, record)
                lineage.reused(p, record)
                display.reused(p)
                _report(recipe, planned, done)
                continue
            inputs = {n: done[src] for n, src in p.stage.spec.inputs.items()}
            _prepare(folder, p)
            display.started(i, p)
            ctx = Context(dir=folder.resolve(), inputs=inputs, seed=recipe.seed, progress=display.progress)
            start = time.time()
            try:
                with display.following_trainers():
                    result = p.stage.run(ctx)
            except BaseException:
                p.status = "failed"
                display.failed(p)
                _report(recipe, planned, done)
                raise
            outputs = {k: _relative(recipe.dir, v) for k, v in result.outputs.items()}
            record = {
                "name": p.name, "kind": p.stage.KIND, "key": p.key, "parts": p.parts, "seconds": time.time() - start,
                "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "summary": result.summary, "outputs": outputs, "inputs": dict(p.stage.spec.inputs),
                "material": p.stage.key_material(),
            }  # fmt: skip
            lineage.finished(p, record)
            with atomic_file(folder / DONE, "w") as f:
                json.dump(record, f, indent=1, default=str)
            done[p.name] = p.done = _as_done(p, folder, record)
            p.status = "ran"
            display.finished(p, record["seconds"])
            _report(recipe, planned, done)
    return planned


def _relative(run_dir: Path, value: Path | str) -> str:
    """An output inside the run directory as a path relative to it (a run directory can move); others as given."""
    if not isinstance(value, Path):
        return value
    try:
        return str(value.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(value.resolve())


def _as_done(p: Planned, folder: Path, record: dict[str, Any]) -> Done:
    run_dir = folder.parent.resolve()
    outputs = {k: str(run_dir / v) if (run_dir / v).exists() else v for k, v in record.get("outputs", {}).items()}
    return Done(p.name, p.stage.KIND, folder.resolve(), record.get("summary", {}), outputs)


def _prepare(folder: Path, p: Planned) -> None:
    """A directory for a stage that is to run: kept as it is to resume, emptied when it holds other work."""
    if folder.exists() and p.status != "resume":
        trash = folder.with_name(f".{folder.name}.old-{int(time.time() * 1000)}")
        folder.rename(trash)  # first out of the way (atomic), then deleted
        shutil.rmtree(trash)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / STARTED, "w") as f:
        f.write(p.key + "\n")


def _report(recipe: Recipe, planned: list[Planned], done: dict[str, Done]) -> Path | None:
    from herd.recipe.report import write_report

    records = []
    for p in planned:
        if p.stage.SERVICE:
            continue
        d = done.get(p.name)
        record = _read_done(recipe.dir / p.name) if d is not None else None
        status = {"ran": "ran", "reuse": "reused", "failed": "failed"}.get(p.status, "pending")
        records.append({
            "name": p.name, "kind": p.stage.KIND, "dir": str((recipe.dir / p.name).resolve()), "status": status,
            "seconds": record.get("seconds") if record else None, "key": p.key,
            "summary": d.summary if d else {},
        })  # fmt: skip
    return write_report(recipe.dir, records)
