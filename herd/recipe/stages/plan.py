"""plan: a scaling law picks the model size and the token budget for a compute budget (`herd plan`).

The Llama 3 law (or a `herd scaling fit`) gives the compute-optimal tokens D*(C) and so N* = C / 6D*. At cluster
budgets the model is the nearest of herd's presets (405B at the paper's 3.8e25 FLOPs); at laptop budgets,
`shape = "small"` picks from a ladder of small shapes (dim = 32 x layers, head width 16, 4 query heads per kv
head) the one whose parameter count, with the run's vocabulary, is nearest N*. A pretrain stage that reads the plan
trains that shape for D* tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from herd.recipe.spec import RecipeError
from herd.recipe.stage import Context, Estimate, Input, Result, Stage

SMALL_DIMS = (64, 96, 128, 192, 256, 384, 512, 768)


@dataclass(kw_only=True, slots=True)
class PlanSettings:
    flops: float = 0.0
    """Training compute budget in FLOPs; 0: gpus x days x 86400 x peak_tflops x mfu."""
    gpus: int = 0
    days: float = 0.0
    mfu: float = 0.4
    peak_tflops: float = 989.0
    """Dense bf16 peak per accelerator (H100 SXM: 989)."""
    law: str = "llama3"
    """llama3 (the paper's tokens law) or the fit.json of `herd scaling fit`."""
    seq_len: int = 8192
    tp: int = 1
    pp: int = 1
    dp_shard: int = 0
    """FSDP width of the layout costed for memory; 0: gpus / (tp x pp)."""
    shape: str = "preset"
    """preset (the nearest of herd's presets) or small (a shape from the small ladder, for laptop budgets)."""


def small_shape(params: float, vocab_size: int) -> dict[str, int]:
    """The ladder shape whose total parameter count (untied embeddings) is nearest `params` in log space."""
    from herd.model import ModelArgs
    from herd.model.args import count_params

    def shape(dim: int) -> dict[str, Any]:
        heads = dim // 16
        return {"dim": dim, "n_layers": max(2, dim // 32), "n_heads": heads, "n_kv_heads": max(1, heads // 4)}

    def size(dim: int) -> float:
        return count_params(ModelArgs(**shape(dim), vocab_size=vocab_size))["total"]

    return shape(min(SMALL_DIMS, key=lambda d: abs(math.log(size(d) / params))))


class Plan(Stage):
    KIND = "plan"
    OUTPUT = "plan"
    INPUTS: ClassVar[dict[str, Input]] = {"tokenizer": Input(("tokenizer",), optional=True)}
    CODE = ("herd.scaling", "herd.model", "herd.parallel")
    Settings = PlanSettings

    def check(self) -> None:
        s = self.settings
        if s.shape not in ("preset", "small"):
            raise RecipeError(f"{self._where}.shape={s.shape!r}: use preset or small")
        if not s.flops and not (s.gpus and s.days):
            raise RecipeError(f"{self._where}: give flops, or gpus and days")

    def make(self, vocab_size: int | None) -> dict[str, Any]:
        from herd.scaling.plan import make_plan

        s = self.settings
        plan = make_plan(flops=s.flops or None, gpus=s.gpus or None, days=s.days or None, mfu=s.mfu,
                         peak_tflops=s.peak_tflops, law=s.law, seq_len=s.seq_len, tp=s.tp, pp=s.pp,
                         dp_shard=s.dp_shard or None)  # fmt: skip
        if s.shape == "small":
            plan["model"] = {"shape": small_shape(plan["params_6nd"], vocab_size or 2048), "source": "small ladder"}
        else:
            plan["model"] = {"preset": plan["preset"]["name"], "shape": plan["preset"]["shape"], "source": "preset"}
        return plan

    def estimate(self) -> Estimate:
        return Estimate(seconds=1.0, memory_gib=0.1, basis="arithmetic")

    def run(self, ctx: Context) -> Result:
        vocab = _vocab_size(ctx.inputs["tokenizer"].main) if "tokenizer" in ctx.inputs else None
        plan = self.make(vocab)
        out = ctx.dir / "plan.json"
        from herd.fileio import atomic_file

        with atomic_file(out, "w") as f:
            json.dump(plan, f, indent=1)
        summary = {
            "flops": plan["flops"],
            "tokens": plan["tokens"],
            "params": plan["params_6nd"],
            "model": plan["model"],
        }
        return Result(summary, {"main": out})


def _vocab_size(spec: str) -> int:
    from herd.tokenizer import load_tokenizer

    return load_tokenizer(spec).vocab_size


def read_plan(path: str | Path) -> dict[str, Any]:
    from herd.fileio import read_json

    return read_json(Path(path), what="plan")
