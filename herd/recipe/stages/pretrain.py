"""pretrain and anneal: `herd train` on the packed shards, then an export of the last checkpoint as a model.

pretrain trains a new model (or continues one: an `init` input or model.init_from). With a plan input and
`use_plan`, the plan's shape and token budget replace the config's (the steps are counted through the batch ramp).

anneal is Llama 3's last phase as a stage of its own: from the pretrained model, `tokens` more tokens with the
learning rate going linearly from optim.lr to 0, on the stage's own data.weights (upsample the high-quality
sources). Unlike the in-run [anneal] of `herd train`, the optimizer state starts fresh.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from herd.config import JobConfig
from herd.recipe.spec import RecipeError
from herd.recipe.stage import PLACEHOLDER, Context, Estimate, Input, Result, Stage, command_config


@dataclass(kw_only=True, slots=True)
class PretrainSettings:
    use_plan: bool = True
    """With a plan input: train the plan's model shape for its token budget."""
    gpus: int = 0
    """For --dry-run estimates only: the world size the run will have (0: this machine, one process)."""
    peak_tflops: float = 989.0
    """For estimates with gpus: dense bf16 peak per device (H100 SXM: 989)."""
    mfu: float = 0.4
    """For estimates: model-FLOPs utilization."""


@dataclass(kw_only=True, slots=True)
class AnnealSettings(PretrainSettings):
    tokens: int = 100_000
    """Tokens of the anneal (Llama 3: 40M)."""


def steps_for_tokens(cfg: JobConfig, tokens: float) -> int:
    """Optimizer steps that reach `tokens`, following the batch ramp (batch_tokens changes at each at_tokens)."""
    t = cfg.training
    stages = [(0, t.batch_tokens)] + [(r.at_tokens, r.batch_tokens) for r in sorted(t.ramp, key=lambda r: r.at_tokens)]
    steps, seen = 0, 0.0
    for i, (start, batch) in enumerate(stages):
        end = stages[i + 1][0] if i + 1 < len(stages) else math.inf
        span = min(end, tokens) - max(start, seen)
        if span > 0:
            n = math.ceil(span / batch)
            steps, seen = steps + n, seen + n * batch
        if seen >= tokens:
            break
    return max(1, steps)


class Pretrain(Stage):
    KIND = "pretrain"
    OUTPUT = "model"
    INPUTS: ClassVar[dict[str, Input]] = {
        "shards": Input(("shards",), unless="data.shards"),
        "plan": Input(("plan",), optional=True),
        "init": Input(("model",), optional=True),
    }
    CODE = ("herd.train", "herd.model", "herd.data", "herd.parallel", "herd.formats")
    COMMAND = "train"
    Settings = PretrainSettings

    def wired(self, cfg: JobConfig, inputs: dict[str, str]) -> JobConfig:
        if "shards" in inputs:
            cfg = replace(cfg, data=replace(cfg.data, shards=[inputs["shards"]]))
        if "init" in inputs:  # the checkpoint gives the shape: the config's shape keys are for new models
            cleared: dict[str, Any] = dict.fromkeys(cfg.model.shape(), None)
            cfg = replace(cfg, model=replace(cfg.model, init_from=inputs["init"], **cleared))
        if "plan" in inputs and self.settings.use_plan:
            plan = self._plan(inputs["plan"])
            keys = ("dim", "n_layers", "n_heads", "n_kv_heads")
            shape: dict[str, Any] = {k: plan["model"]["shape"][k] for k in keys}
            model = replace(cfg.model, preset=plan["model"].get("preset", cfg.model.preset), **shape)
            cfg = replace(cfg, model=model, training=replace(cfg.training, steps=steps_for_tokens(cfg, plan["tokens"])))
        return cfg

    def _plan(self, where: str) -> dict[str, Any]:
        """The plan file of a run, or before it (a placeholder) what the plan stage will write."""
        if where.startswith(PLACEHOLDER):
            return self.upstream["plan"].make(None)  # type: ignore[attr-defined]
        from herd.recipe.stages.plan import read_plan

        return read_plan(where)

    def run_config(self, ctx: Context) -> JobConfig:
        cfg = self.config_for(ctx)
        return replace(cfg, metrics=replace(cfg.metrics, progress=False))  # herd run's display follows the steps

    def model_args(self) -> Any:
        """The shape this stage will train: its init's, else the plan's (with use_plan), else its config's."""
        from herd.recipe.stages.estimates import config_args

        init = self.upstream.get("init")
        if isinstance(init, Pretrain):
            return init.model_args()
        plan = self.upstream.get("plan")
        if plan is not None and self.settings.use_plan:
            made = plan.make(None)  # type: ignore[attr-defined]
            return config_args(command_config(self), made["model"]["shape"], made["model"].get("preset"))
        return None if command_config(self).model.init_from or init else config_args(command_config(self))

    def planned_tokens(self) -> float | None:
        plan = self.upstream.get("plan")
        return plan.make(None)["tokens"] if plan is not None and self.settings.use_plan else None  # type: ignore[attr-defined]

    def estimate(self) -> Estimate:
        from herd.recipe.stages.estimates import train_estimate

        return train_estimate(self)

    def run(self, ctx: Context) -> Result:
        from herd.train.trainer import Trainer

        trainer = Trainer(self.run_config(ctx))
        try:
            summary = trainer.train()
        finally:
            trainer.shutdown()
        model = export_model(Path(summary["checkpoint"]), ctx.dir / "model")
        keep = ("steps", "tokens", "final_loss", "final_loss_mean10", "tokens_per_s", "skipped_steps", "rollbacks")
        return Result({k: summary[k] for k in keep}, {"main": model, "metrics": ctx.dir / "metrics.jsonl"})


class Anneal(Pretrain):
    KIND = "anneal"
    INPUTS: ClassVar[dict[str, Input]] = {
        "shards": Input(("shards",), unless="data.shards"),
        "init": Input(("model",), unless="model.init_from"),
    }
    Settings = AnnealSettings

    def check(self) -> None:
        if self.settings.tokens <= 0:
            raise RecipeError(f"{self._where}.tokens must be positive")

    def wired(self, cfg: JobConfig, inputs: dict[str, str]) -> JobConfig:
        cfg = super().wired(cfg, inputs)
        steps = steps_for_tokens(cfg, self.settings.tokens)
        # The whole stage is the anneal: no warmup, then linearly to 0 (the mix is this stage's data.weights).
        schedule = replace(cfg.lr_schedule, warmup_steps=0, decay="linear", min_lr_ratio=0.0)
        return replace(cfg, training=replace(cfg.training, steps=steps), anneal=replace(cfg.anneal, tokens=0),
                       lr_schedule=schedule)  # fmt: skip


def export_model(checkpoint: Path, out: Path) -> Path:
    """The training checkpoint as a model directory later stages load: HF when the tokenizer is an HF one
    (tokenizer.json, or a GGUF file's), else Meta's layout (tokenizer.model beside consolidated.00.pth)."""
    from herd.train.average import average_to

    if out.exists():  # an export a kill interrupted after its rename: made again from the same checkpoint
        shutil.rmtree(out)
    hf = (checkpoint / "tokenizer.json").is_file() or any(checkpoint.glob("*.gguf"))
    average_to([checkpoint], out, to="hf" if hf else "meta")
    return out
