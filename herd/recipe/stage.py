"""The stage interface of `herd run`: a stage is one small class in herd/recipe/stages/.

    class Tokenizer(Stage):
        KIND = "tokenizer"                      # its name in a recipe
        OUTPUT = "tokenizer"                    # what it provides to later stages
        INPUTS = {"documents": Input(("documents",))}
        CODE = ("herd.tokenizer",)              # packages whose source is part of its key
        Settings = TokenizerSettings            # a dataclass of its settings (or COMMAND = "train": a JobConfig)

        def run(self, ctx: Context) -> Result: ...

The runner gives each stage a directory, the results of the stages it reads, and a progress handle; the stage
returns its summary and its output paths. A stage that is killed is run again in the same directory with the same
settings, so it resumes if the command it wraps resumes (training, curation and the round do).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from herd.config import ConfigError, JobConfig, build, check, dump, load
from herd.errors import HerdError
from herd.recipe.spec import RecipeError, StageSpec

PLACEHOLDER = "<output of stage "


@dataclass(frozen=True)
class Input:
    kinds: tuple[str, ...]
    """Outputs (`Stage.OUTPUT`) this input accepts."""
    unless: str = ""
    """A setting (dotted for a config section's key) that, when given, replaces this input (a tokenizer's `reuse`,
    a curate stage's `curate.input`): then no stage must provide it."""
    optional: bool = False
    """The stage has a default when no earlier stage provides it."""

    def replaced(self, settings: dict[str, Any]) -> bool:
        """The `unless` setting is given: the stage reads what it names, not an earlier stage's output."""
        value: Any = settings
        for part in self.unless.split(".") if self.unless else []:
            value = value.get(part) if isinstance(value, dict) else None
        return bool(self.unless and value)

    def required(self, settings: dict[str, Any]) -> bool:
        return not self.optional and not self.replaced(settings)


@dataclass
class Done:
    """A finished stage as the stages after it see it."""

    name: str
    kind: str
    dir: Path
    summary: dict[str, Any]
    outputs: dict[str, str]
    """Output name -> path (absolute) or a name (a reused tokenizer's "llama3")."""

    @property
    def main(self) -> str:
        return self.outputs["main"]


@dataclass
class Estimate:
    seconds: float | None = None
    memory_gib: float | None = None
    basis: str = ""
    """Where the figures come from (the planner, a rule of thumb, an earlier run)."""
    warning: str = ""
    """Why the stage may not run as set (e.g. memory beyond a GPU's)."""


@dataclass
class Result:
    summary: dict[str, Any]
    outputs: dict[str, Path | str]
    """"main" (what later stages read) and any others worth a lineage entry."""


@dataclass
class Context:
    dir: Path
    inputs: dict[str, Done]
    seed: int
    progress: Callable[[float, float | None, str], None] = field(default=lambda done, total, text: None)
    """progress(done, total, text): the stage's own steps (total None: unknown)."""


class Stage:
    KIND: ClassVar[str]
    OUTPUT: ClassVar[str]
    INPUTS: ClassVar[dict[str, Input]] = {}
    CODE: ClassVar[tuple[str, ...]] = ()
    COMMAND: ClassVar[str] = ""
    """A herd command whose config the stage takes (`config = FILE` plus its section tables)."""
    Settings: ClassVar[type | None] = None
    """The dataclass of the stage's own (plain) keys."""
    SERVICE: ClassVar[bool] = False
    """Runs until stopped and makes no artifact (serve): never reused, run only when asked."""

    def __init__(self, spec: StageSpec, recipe_path: Path) -> None:
        self.spec, self.name = spec, spec.name
        where = f"{recipe_path}: stages.{spec.name}"
        self.settings: Any = None
        self.cfg: JobConfig | None = None
        self.upstream: dict[str, Stage] = {}
        """input name -> the Stage object that provides it (set by the runner once every stage is built)."""
        plain = {k: v for k, v in spec.settings.items() if not (self.COMMAND and isinstance(v, dict))}
        tables = {k: v for k, v in spec.settings.items() if self.COMMAND and isinstance(v, dict)}
        if plain and self.Settings is None:
            key = next(iter(plain))
            raise RecipeError(f"{where}.{key}: a {self.KIND} stage takes `config = FILE` and section tables of "
                              f"`herd {self.COMMAND}` (such as [stages.{spec.name}.job]), not plain keys")  # fmt: skip
        if self.Settings is not None:
            try:
                self.settings = build(self.Settings, plain, source=where)
            except ConfigError as e:
                raise RecipeError(str(e)) from None
        if spec.config and not self.COMMAND:
            raise RecipeError(f"{where}: a {self.KIND} stage takes no config file")
        if self.COMMAND:
            try:
                self.cfg = load(self.COMMAND, spec.config or None, tables=tables, tables_source=where, checked=False)
            except ConfigError as e:
                raise RecipeError(str(e)) from None
        self._where = where
        self.check()

    def validate(self) -> None:
        """Check the command's config as it will run, each wired input standing in for the path it will be (called
        once `upstream` is set)."""
        if self.cfg is None:
            return
        try:
            check(self.wired(self.cfg, self.placeholders()), self.COMMAND)
        except (ConfigError, HerdError) as e:
            raise RecipeError(f"{self._where}: {e}") from None

    def check(self) -> None:
        """Refuse settings that cannot work (RecipeError), before anything runs."""

    def placeholders(self) -> dict[str, str]:
        """Each wired input as a stand-in for the path it will be (for checks and estimates before a run)."""
        return {n: f"{PLACEHOLDER}{src}>" for n, src in self.spec.inputs.items()}

    def wired(self, cfg: JobConfig, inputs: dict[str, str]) -> JobConfig:
        """A command stage's config reading `inputs` (input name -> path): where the stage's command reads what
        earlier stages made."""
        return cfg

    def config_for(self, ctx: Context) -> JobConfig:
        """The command's config for this run: inputs wired, writing into the stage's directory, checked."""
        cfg = self.wired(command_config(self), {n: d.main for n, d in ctx.inputs.items()})
        cfg = dataclasses.replace(cfg, job=dataclasses.replace(cfg.job, dump_folder=str(ctx.dir)))
        check(cfg, self.COMMAND)
        return cfg

    def key_material(self) -> dict[str, Any]:
        """What, besides code and inputs, decides this stage's outputs (hashed into its key)."""
        material: dict[str, Any] = {}
        if self.cfg is not None:
            material["config"] = dump(self.cfg, self.COMMAND)
        if self.settings is not None:
            material["settings"] = dataclasses.asdict(self.settings)
        return material

    def estimate(self) -> Estimate:
        """Expected time and memory (`herd run --dry-run`); the stages it reads are in `self.upstream`."""
        return Estimate()

    def run(self, ctx: Context) -> Result:
        raise NotImplementedError


def from_embedded_corpus(stage: Stage) -> bool:
    """The stage's data comes from the embedded corpus (a corpus stage upstream): its measured laptop-size
    estimates apply. Elsewhere the time of data stages depends on input the dry run does not measure."""
    return stage.KIND == "corpus" or any(from_embedded_corpus(s) for s in stage.upstream.values())


def command_config(stage: Stage) -> JobConfig:
    assert stage.cfg is not None
    return stage.cfg
