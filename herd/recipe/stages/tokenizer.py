"""tokenizer: train a byte-level BPE on the curated documents (`herd tokenizer train`), or reuse one (Meta's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from herd.recipe.spec import RecipeError
from herd.recipe.stage import Context, Estimate, Input, Result, Stage


@dataclass(kw_only=True, slots=True)
class TokenizerSettings:
    vocab_size: int = 2048
    """BPE tokens plus Llama 3's 256 special tokens."""
    reuse: str = ""
    """Reuse a tokenizer instead of training one: "llama3" (Meta's 128K tokenizer, shipped with herd), an embedded
    model's name, a tokenizer.model / tokenizer.json path, a model directory or a .gguf file."""


class Tokenizer(Stage):
    KIND = "tokenizer"
    OUTPUT = "tokenizer"
    INPUTS: ClassVar[dict[str, Input]] = {"documents": Input(("documents", "raw"), unless="reuse")}
    CODE = ("herd.tokenizer",)
    Settings = TokenizerSettings

    def check(self) -> None:
        if not self.settings.reuse and self.settings.vocab_size < 257 + 256:
            raise RecipeError(f"{self._where}.vocab_size={self.settings.vocab_size}: too small (the 256 byte "
                              "tokens and 256 special tokens come first)")  # fmt: skip

    def estimate(self) -> Estimate:
        if self.settings.reuse:
            return Estimate(seconds=0.0, memory_gib=0.0, basis="reused")
        return Estimate(seconds=self.settings.vocab_size / 500, memory_gib=0.5, basis="rule of thumb on 2 cores")

    def run(self, ctx: Context) -> Result:
        from herd.tokenizer.train import read_corpus, save_ranks, train_bpe

        if self.settings.reuse:
            from herd.formats.load import resolve_model_path

            reuse = self.settings.reuse
            where = reuse if reuse == "llama3" else str(resolve_model_path(reuse))  # an embedded model: its file
            return Result({"reused": reuse}, {"main": where})
        ranks = train_bpe(read_corpus([ctx.inputs["documents"].main]), self.settings.vocab_size)
        out = ctx.dir / "tokenizer.model"
        save_ranks(ranks, out)
        return Result({"vocab_size": self.settings.vocab_size, "bpe_tokens": len(ranks)}, {"main": out})
