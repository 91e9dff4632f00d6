"""eval: the recipe's model on benchmarks (`herd eval harness` on lm-eval tasks, optionally `herd eval humaneval`),
the Llama 3 contamination check against the run's own shards, and the report card (`herd eval report`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from herd.recipe.stage import Context, Estimate, Input, Result, Stage, from_embedded_corpus


@dataclass(kw_only=True, slots=True)
class EvalSettings:
    tasks: list[str] = field(default_factory=lambda: ["herd_arithmetic", "herd_sequences"])
    """lm-eval tasks (`herd eval harness --tasks`); herd's local ones need no download."""
    limit: int = 50
    """Items per task (0: all)."""
    humaneval: int = 0
    """HumanEval problems to run in the sandbox (0: skip; 164: all)."""
    contamination: bool = True
    """8-gram overlap of the evaluated items with the run's shards (needs a shards input)."""
    dtype: str = "float32"


class Eval(Stage):
    KIND = "eval"
    OUTPUT = "eval"
    INPUTS: ClassVar[dict[str, Input]] = {"model": Input(("model",)), "shards": Input(("shards",), optional=True)}
    CODE = ("herd.eval", "herd.inference", "herd.formats", "herd.tokenizer")
    Settings = EvalSettings

    def estimate(self) -> Estimate:
        if not from_embedded_corpus(self):
            return Estimate(basis="depends on the model's size and the tasks")
        s = self.settings
        items = len(s.tasks) * (s.limit or 500) + 20 * s.humaneval
        return Estimate(seconds=15 + 0.2 * items, memory_gib=1.5, basis="rule of thumb for a small model on 2 cores")

    def run(self, ctx: Context) -> Result:
        from herd.eval.commands import add_eval_parser
        from herd.recipe.commands import invoke

        def herd_eval(argv: list[str]) -> None:
            invoke(add_eval_parser, argv)

        s, model = self.settings, ctx.inputs["model"].main
        results = ctx.dir / "results"
        if s.tasks:
            argv = [
                "eval",
                "harness",
                "--herd-out",
                str(results),
                "--tasks",
                ",".join(s.tasks),
                "--model_args",
                f"pretrained={model},dtype={s.dtype}",
                "--output_path",
                str(ctx.dir / "lm_eval"),
            ]
            herd_eval(argv + (["--limit", str(s.limit)] if s.limit else []))  # fmt: skip
        if s.humaneval:
            herd_eval(["eval", "humaneval", "--model", model, "--limit", str(s.humaneval), "--out", str(results),
                         "--dtype", s.dtype, "--quiet"])  # fmt: skip
        report = ["eval", "report", "--run", f"{self.name}={results}", "--out", str(ctx.dir), "--title",
                  f"herd run: {self.name}"]  # fmt: skip
        if s.contamination and "shards" in ctx.inputs:
            herd_eval(["eval", "contamination", "--results", str(results), "--shards", ctx.inputs["shards"].main,
                         "--out", str(ctx.dir / "contamination"), "--quiet"])  # fmt: skip
            report += ["--contamination", str(ctx.dir / "contamination" / "contamination.json")]
        if (ctx.inputs["model"].dir / "round.json").is_file():  # the model of a posttrain stage: its metrics too
            report += ["--posttrain", str(ctx.inputs["model"].dir)]
        herd_eval(report)
        from herd.eval.results import read_results

        scores = {r.benchmark: r.metrics for r in read_results(results)}
        return Result({"results": scores}, {"main": ctx.dir / "eval.json", "html": ctx.dir / "index.html"})
