"""posttrain: one Llama 3 post-training round (`herd round`: synth -> SFT -> reward model -> rejection sampling ->
DPO [-> averaging]) from the model an earlier stage made, with held-out metrics before and after.

Besides the round's own sections ([stages.NAME.round], [stages.NAME.synth]), the tables [stages.NAME.sft],
[stages.NAME.rm], [stages.NAME.rs] and [stages.NAME.dpo] hold sections of those stages' configs, on top of the
files round.*_config names: e.g. [stages.posttrain.dpo.dpo] beta = 0.2. All of them are part of the stage's key,
so changing one reruns post-training and what follows it, and nothing before it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from herd.config import ConfigError, JobConfig, dump, load
from herd.recipe.spec import RecipeError, StageSpec, relative_to_recipe
from herd.recipe.stage import Context, Estimate, Input, Result, Stage, command_config

SUBSTAGES = ("sft", "rm", "rs", "dpo")


class Posttrain(Stage):
    KIND = "posttrain"
    OUTPUT = "model"
    # Without an init input the round starts from model.init_from (default: the embedded model).
    INPUTS: ClassVar[dict[str, Input]] = {"init": Input(("model",), optional=True)}
    CODE = ("herd.posttrain", "herd.train", "herd.inference", "herd.model", "herd.formats", "herd.tokenizer")
    COMMAND = "round"

    def __init__(self, spec: StageSpec, recipe_path: Path) -> None:
        sub = {name: spec.settings[name] for name in SUBSTAGES if isinstance(spec.settings.get(name), dict)}
        rest = {k: v for k, v in spec.settings.items() if k not in sub}
        super().__init__(StageSpec(spec.name, spec.kind, rest, spec.config, spec.wiring, spec.inputs), recipe_path)
        self.spec = spec
        r = command_config(self).round
        files = {"sft": r.sft_config, "rm": r.rm_config, "rs": r.rs_config, "dpo": r.dpo_config}
        self.stages: dict[str, JobConfig] = {}
        for name in SUBSTAGES:
            where = f"{recipe_path}: stages.{spec.name}.{name}"
            try:
                path = relative_to_recipe(recipe_path, files[name])
                cfg = load(name, path, tables=sub.get(name), tables_source=where)
            except ConfigError as e:
                raise RecipeError(str(e)) from None
            if name != "rs":  # driven by `herd run`: its own display, not each trainer's bar
                cfg = replace(cfg, metrics=replace(cfg.metrics, progress=False))
            self.stages[name] = cfg

    def wired(self, cfg: JobConfig, inputs: dict[str, str]) -> JobConfig:
        return replace(cfg, model=replace(cfg.model, init_from=inputs["init"])) if "init" in inputs else cfg

    def key_material(self) -> dict[str, Any]:
        return {**super().key_material(), **{name: dump(cfg, name) for name, cfg in self.stages.items()}}

    def estimate(self) -> Estimate:
        return Estimate(basis="depends on the model: about 25 min for the embedded 135M model on 2 cores, seconds "
                              "for a tiny one")  # fmt: skip

    def run(self, ctx: Context) -> Result:
        from herd.posttrain.round import run_round

        cfg = self.config_for(ctx)
        summary = run_round(cfg, dict(self.stages))
        final = ctx.dir / ("average" if cfg.round.average else "dpo/model")
        outputs: dict[str, Path | str] = {
            "main": final,
            "sft": ctx.dir / "sft" / "model",
            "round": ctx.dir / "round.json",
        }
        return Result({"metrics": summary["metrics"], "seconds": summary["seconds"]}, outputs)
