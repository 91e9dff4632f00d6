"""export: the recipe's model in the formats it ships in: HF safetensors, Meta's consolidated checkpoint and GGUF,
which llama.cpp runs (`herd convert`), and an ExecuTorch program for on-device use (`executorch`, the
herd[executorch] extra: XNNPACK, float32, a KV cache of `pte_max_seq_len` tokens)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from herd.recipe.spec import RecipeError
from herd.recipe.stage import Context, Estimate, Input, Result, Stage

FORMATS = {"hf": "hf", "meta": "meta", "gguf": "model.gguf", "executorch": "model.pte"}


@dataclass(kw_only=True, slots=True)
class ExportSettings:
    formats: list[str] = field(default_factory=lambda: ["hf", "meta", "gguf"])
    dtype: str = ""
    """float32, float16 or bfloat16 for hf and meta (empty: as stored)."""
    pte_max_seq_len: int = 512
    """The ExecuTorch program's KV cache: prompt plus generated tokens."""


class Export(Stage):
    KIND = "export"
    OUTPUT = "export"
    INPUTS: ClassVar[dict[str, Input]] = {"model": Input(("model",))}
    CODE = ("herd.formats", "herd.tokenizer", "herd.ggufio")
    Settings = ExportSettings

    def check(self) -> None:
        if bad := [f for f in self.settings.formats if f not in FORMATS]:
            raise RecipeError(f"{self._where}.formats: unknown format {bad[0]!r}; formats: {', '.join(FORMATS)}")
        if "executorch" in self.settings.formats and importlib.util.find_spec("executorch") is None:
            raise RecipeError(f"{self._where}.formats: executorch needs the executorch package: "
                              "pip install 'herd[executorch]'")  # fmt: skip

    def estimate(self) -> Estimate:
        return Estimate(
            seconds=5.0 * len(self.settings.formats), basis="rule of thumb: seconds per format for small models"
        )

    def run(self, ctx: Context) -> Result:
        import shutil

        from herd.formats.convert import convert
        from herd.formats.load import parse_dtype

        outputs: dict[str, Path | str] = {}
        dtype = parse_dtype(self.settings.dtype) if self.settings.dtype else None
        for fmt in self.settings.formats:
            dst = ctx.dir / FORMATS[fmt]
            if dst.is_dir():  # written whole by its rename before a kill: made again
                shutil.rmtree(dst)
            elif dst.is_file():
                dst.unlink()
            if fmt == "executorch":
                from herd.formats.executorch import export_pte

                export_pte(ctx.inputs["model"].main, dst, max_seq_len=self.settings.pte_max_seq_len)
            else:
                convert(ctx.inputs["model"].main, dst, fmt, dtype=None if fmt == "gguf" else dtype)
            print(f"exported {ctx.inputs['model'].main} -> {dst} ({fmt})", flush=True)
            outputs[fmt] = dst
        outputs["main"] = outputs[self.settings.formats[0]] if self.settings.formats else ctx.inputs["model"].main
        sizes = {k: _size(Path(v)) for k, v in outputs.items() if k != "main"}
        return Result({"bytes": sizes}, outputs)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
