"""curate: `herd data curate` (clean, dedup, quality) over the raw documents; its report feeds the funnel plot."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from herd.config import JobConfig
from herd.recipe.stage import Context, Estimate, Input, Result, Stage, command_config, from_embedded_corpus


class Curate(Stage):
    KIND = "curate"
    OUTPUT = "documents"
    INPUTS: ClassVar[dict[str, Input]] = {"raw": Input(("raw",), unless="curate.input")}
    CODE = ("herd.data",)
    COMMAND = "curate"

    def wired(self, cfg: JobConfig, inputs: dict[str, str]) -> JobConfig:
        return replace(cfg, curate=replace(cfg.curate, input=[inputs["raw"]])) if "raw" in inputs else cfg

    def estimate(self) -> Estimate:
        if not from_embedded_corpus(self):
            return Estimate(basis="depends on the size of curate.input")
        quality = command_config(self).curate.quality.enabled
        return Estimate(
            seconds=120.0 if quality else 25.0,
            memory_gib=1.5 if quality else 0.8,
            basis="measured on the embedded corpus, 2 cores" + (" (the LLM judge labels a sample)" if quality else ""),
        )

    def run(self, ctx: Context) -> Result:
        from herd.data.pipeline import Curator
        from herd.data.report import write_report

        cfg = self.config_for(ctx).curate
        steps = 0

        def log(line: str) -> None:
            nonlocal steps
            steps += 1
            ctx.progress(steps, None, line[:80])
            print(line, flush=True)

        report = Curator(cfg, ctx.dir, log=log).run()
        write_report(report, ctx.dir)
        summary = {"documents_in": report["input"]["documents"], "documents_kept": report["output"]["documents"]}
        return Result(summary, {"main": ctx.dir / "kept", "report": ctx.dir / "report.json"})
