"""A recipe file: the stages of one run and their settings, checked as a whole before anything runs.

    [recipe]
    name = "tiny"
    dir = "runs/tiny"              # the run directory (herd run --dir overrides it)

    [stages.curate]                # the table's name is the stage's name; `kind` defaults to it
    config = "configs/data/curate.toml"      # stages of a herd command: its config file, then the
    [stages.curate.curate]                   # sections below it (any section that command reads)
    quality.enabled = false

    [stages.anneal]
    kind = "pretrain"              # a second stage of the same kind
    inputs = { init = "pretrain" } # wiring; each input defaults to the nearest earlier stage that provides it

Stages run in file order. Each names its inputs; an input comes from the stage given in `inputs`, else from the
nearest earlier stage of a kind that provides it. An unknown kind, an input no stage provides, a wiring that
names an unknown stage or makes a cycle, and settings a stage does not have are errors here, in one line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.errors import HerdError


class RecipeError(HerdError):
    """A recipe that cannot run: one line naming the file, stage and key."""


RESERVED = ("kind", "inputs", "config")
"""Keys of a stage table that belong to the runner, not to the stage."""


@dataclass
class StageSpec:
    name: str
    kind: str
    settings: dict[str, Any]
    """The stage table without the reserved keys (plain keys and, for command stages, config sections)."""
    config: str = ""
    """A config file of the stage's herd command (resolved against the recipe's directory)."""
    wiring: dict[str, str] = field(default_factory=dict)
    """input name -> stage name, as the recipe gives it."""
    inputs: dict[str, str] = field(default_factory=dict)
    """input name -> stage name, resolved."""


@dataclass
class Recipe:
    path: Path
    name: str
    dir: Path
    seed: int
    stages: list[StageSpec]

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)

    def downstream(self, name: str) -> list[str]:
        """Stages that read, directly or not, what `name` makes."""
        out: list[str] = []
        for s in self.stages:
            if any(src == name or src in out for src in s.inputs.values()):
                out.append(s.name)
        return out


def read_recipe(path: str | Path, *, run_dir: str | Path | None = None) -> Recipe:
    """Parse, wire and check a recipe; every stage's settings are checked by the stage itself (`build_stages`)."""
    from herd.recipe.stages import KINDS

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise RecipeError(f"{path}: not a readable TOML recipe ({e})") from None
    unknown = sorted(set(raw) - {"recipe", "stages"})
    if unknown:
        raise RecipeError(f"{path}: unknown table [{unknown[0]}]; a recipe has [recipe] and [stages.NAME] tables")
    head = raw.get("recipe", {})
    for key in head:
        if key not in ("name", "dir", "seed"):
            raise RecipeError(f"{path}: unknown key recipe.{key}; known keys: name, dir, seed")
    tables = raw.get("stages", {})
    if not isinstance(tables, dict) or not tables:
        raise RecipeError(f"{path}: no stages; add [stages.NAME] tables")
    stages: list[StageSpec] = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise RecipeError(f"{path}: stages.{name} must be a table")
        kind = table.get("kind", name)
        if kind not in KINDS:
            raise RecipeError(f"{path}: stage {name!r} has unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
        wiring = table.get("inputs", {})
        if not isinstance(wiring, dict) or not all(isinstance(v, str) for v in wiring.values()):
            raise RecipeError(f'{path}: stages.{name}.inputs must be a table of input = "stage name"')
        config = table.get("config", "")
        if not isinstance(config, str):
            raise RecipeError(f"{path}: stages.{name}.config must be a path string")
        if config and not Path(config).is_absolute():
            config = str(relative_to_recipe(path, config))
        settings = {k: v for k, v in table.items() if k not in RESERVED}
        stages.append(StageSpec(name=name, kind=kind, settings=settings, config=config, wiring=dict(wiring)))
    _wire(path, stages)
    seed = head.get("seed", 0)
    if not isinstance(seed, int):
        raise RecipeError(f"{path}: recipe.seed must be an integer, got {seed!r}")
    name = str(head.get("name", path.stem))
    where = Path(run_dir) if run_dir is not None else Path(head.get("dir", f"runs/{name}"))
    return Recipe(path=path, name=name, dir=where, seed=seed, stages=stages)


def relative_to_recipe(recipe: Path, config: str) -> Path:
    """Config paths are relative to the working directory when that file exists there (as every herd command
    reads them), else to the recipe's directory (a recipe shipped beside its configs)."""
    plain = Path(config)
    return plain if plain.exists() else recipe.parent / plain


def _wire(path: Path, stages: list[StageSpec]) -> None:
    """Resolve each stage's inputs; check names, kinds and order; refuse cycles."""
    from herd.recipe.stages import KINDS

    names = [s.name for s in stages]
    position = {n: i for i, n in enumerate(names)}
    for i, s in enumerate(stages):
        wants = KINDS[s.kind].INPUTS
        for given in s.wiring:
            if given not in wants:
                known = ", ".join(wants) or "none"
                raise RecipeError(f"{path}: stage {s.name!r} ({s.kind}) has no input {given!r}; its inputs: {known}")
        for input_name, spec in wants.items():
            source = s.wiring.get(input_name)
            if source is not None:
                if source not in position:
                    raise RecipeError(f"{path}: stage {s.name!r} takes {input_name!r} from unknown stage {source!r}")
                if KINDS[stages[position[source]].kind].OUTPUT not in spec.kinds:
                    raise RecipeError(
                        f"{path}: stage {s.name!r} takes {input_name!r} from {source!r}, a "
                        f"{stages[position[source]].kind} stage; it needs one of: {', '.join(spec.kinds)}"
                    )
                s.inputs[input_name] = source
                continue
            earlier = [t for t in stages[:i] if KINDS[t.kind].OUTPUT in spec.kinds]
            if earlier and not spec.replaced(s.settings):
                s.inputs[input_name] = earlier[-1].name
            elif spec.required(s.settings):
                raise RecipeError(
                    f"{path}: stage {s.name!r} ({s.kind}) needs input {input_name!r} (from a "
                    f"{' or '.join(spec.kinds)} stage); no earlier stage provides it"
                )
    _check_acyclic(path, stages)


def _check_acyclic(path: Path, stages: list[StageSpec]) -> None:
    """Explicit wiring may point forward; file order must then still be a valid order, and no loop may exist."""
    edges = {s.name: set(s.inputs.values()) for s in stages}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            loop = " -> ".join([*trail[trail.index(node) :], node])
            raise RecipeError(f"{path}: the stages' inputs make a cycle: {loop}")
        state[node] = 1
        for dep in sorted(edges[node]):
            visit(dep, [*trail, node])
        state[node] = 2

    for s in stages:
        visit(s.name, [])
    order = {s.name: i for i, s in enumerate(stages)}
    for s in stages:
        for dep in s.inputs.values():
            if order[dep] > order[s.name]:
                raise RecipeError(f"{path}: stage {s.name!r} reads {dep!r}, which comes after it; move it earlier")
