"""pack: tokenize the curated documents into token shards (`herd data pack`), grouped by source for the mix."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from herd.config import JobConfig
from herd.recipe.stage import Context, Estimate, Input, Result, Stage, from_embedded_corpus


class Pack(Stage):
    KIND = "pack"
    OUTPUT = "shards"
    INPUTS: ClassVar[dict[str, Input]] = {
        "documents": Input(("documents", "raw"), unless="pack.input"),
        "tokenizer": Input(("tokenizer",), optional=True),  # none: pack.tokenizer (default: Meta's llama3)
    }
    CODE = ("herd.data", "herd.tokenizer")
    COMMAND = "pack"

    def wired(self, cfg: JobConfig, inputs: dict[str, str]) -> JobConfig:
        p = cfg.pack
        p = replace(p, input=[inputs["documents"]]) if "documents" in inputs else p
        p = replace(p, tokenizer=inputs["tokenizer"]) if "tokenizer" in inputs else p
        return replace(cfg, pack=p)

    def estimate(self) -> Estimate:
        if not from_embedded_corpus(self):
            return Estimate(basis="depends on the size of the documents")
        return Estimate(seconds=15.0, memory_gib=0.5, basis="measured on the curated embedded corpus, 2 cores")

    def run(self, ctx: Context) -> Result:
        from herd.data.pack import pack

        out = ctx.dir / "shards"
        manifest = pack(self.config_for(ctx).pack, out)
        summary = {"tokens": manifest["total"]["tokens"], "documents": manifest["total"]["docs"],
                   "sources": {name: src["tokens"] for name, src in manifest["sources"].items()}}  # fmt: skip
        return Result(summary, {"main": out})
