"""corpus: the embedded raw corpus (real text from installed packages, with planted noise), built at run time."""

from __future__ import annotations

from dataclasses import dataclass

from herd.recipe.stage import Context, Estimate, Result, Stage


@dataclass(kw_only=True, slots=True)
class CorpusSettings:
    max_base: int = 600
    """Base documents taken from installed packages before variants are planted (0: all of them)."""
    num_files: int = 8
    """jsonl files the documents are spread over."""


class Corpus(Stage):
    KIND = "corpus"
    OUTPUT = "raw"
    CODE = ("herd.data",)
    Settings = CorpusSettings

    def estimate(self) -> Estimate:
        return Estimate(seconds=10.0, memory_gib=0.5, basis="measured: about 7 s on 2 cores")

    def run(self, ctx: Context) -> Result:
        from herd.data.corpus import build_corpus

        s = self.settings
        stats = build_corpus(ctx.dir / "raw", seed=ctx.seed, max_base=s.max_base or None, num_files=s.num_files)
        summary = {"documents": stats.documents, "bytes": stats.bytes, "kinds": stats.kinds}
        return Result(summary, {"main": stats.path})
