"""guard: the safety model of the system (reuse herd's embedded guard or a Llama Guard checkpoint, or train one
with `herd guard train`) and the safety table of the model the recipe made (`herd safety eval --parts shields`:
violation and false-refusal rates with and without the input/output shields)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from herd.recipe.spec import RecipeError
from herd.recipe.stage import Context, Estimate, Input, Result, Stage, from_embedded_corpus


@dataclass(kw_only=True, slots=True)
class GuardSettings:
    reuse: str = "embedded"
    """embedded (herd's own LoRA-tuned SmolLM2 guard, shipped), a Llama Guard checkpoint or a `herd guard train`
    adapter directory; empty: train one here with `herd guard train` (about 30 min on 2 cores)."""
    max_examples: int = 1100
    """With training: examples of guard data (`herd guard train --max-examples`)."""
    safety_eval: bool = True
    """Measure the recipe's model with and without shields (needs a model input)."""
    n_unsafe: int = 16
    """Held-out unsafe prompts (violation rate)."""
    n_borderline: int = 16
    """Held-out borderline-safe prompts (false refusals)."""
    max_new_tokens: int = 64


class Guard(Stage):
    KIND = "guard"
    OUTPUT = "guard"
    INPUTS: ClassVar[dict[str, Input]] = {"model": Input(("model",), optional=True)}
    CODE = ("herd.safety", "herd.inference", "herd.formats", "herd.tokenizer")
    Settings = GuardSettings

    def check(self) -> None:
        s = self.settings
        if s.safety_eval and (s.n_unsafe < 1 or s.n_borderline < 1):
            raise RecipeError(f"{self._where}: n_unsafe and n_borderline must be positive with safety_eval")

    def estimate(self) -> Estimate:
        if not from_embedded_corpus(self):
            return Estimate(basis="depends on the model's size")
        s = self.settings
        train = 0.0 if s.reuse else 45 * 60.0
        n = (s.n_unsafe + s.n_borderline) if s.safety_eval else 0
        return Estimate(seconds=train + 3.0 * n + 20, memory_gib=2.0,
                        basis="measured on 2 cores: guard training ~30-45 min; ~3 s per safety prompt")  # fmt: skip

    def run(self, ctx: Context) -> Result:
        from herd.recipe.commands import invoke
        from herd.safety.commands import add_guard_parser
        from herd.safety.system_eval import add_safety_parser

        s = self.settings
        guard = s.reuse
        if not guard:
            argv = ["guard", "train", "--out", str(ctx.dir / "train"), "--max-examples", str(s.max_examples),
                    "--seed", str(ctx.seed)]  # fmt: skip
            invoke(add_guard_parser, argv)
            guard = str(ctx.dir / "train" / "adapter")
        table: dict[str, Any] = {}
        if s.safety_eval and "model" in ctx.inputs:
            argv = ["safety", "eval", "--model", ctx.inputs["model"].main, "--parts", "shields",
                    "--n-unsafe", str(s.n_unsafe), "--n-borderline", str(s.n_borderline),
                    "--max-new-tokens", str(s.max_new_tokens), "--seed", str(ctx.seed), "--no-progress",
                    "--out", str(ctx.dir)]  # fmt: skip
            if guard != "embedded":
                argv += ["--guard", guard]
            invoke(add_safety_parser, argv)
            shields = json.loads((ctx.dir / "results.json").read_text()).get("shields", {})
            # The rates and counts; each prompt's case stays in results.json.
            table = {k: v for k, v in shields.items() if k != "cases"}
        from herd.fileio import atomic_file

        record = {"guard": guard, "shields": table}
        with atomic_file(ctx.dir / "guard.json", "w") as f:
            json.dump(record, f, indent=1)
        outputs: dict[str, Any] = {"main": guard, "report": ctx.dir / "guard.json"}
        return Result(record, outputs)
