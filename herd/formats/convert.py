"""`herd convert`: any readable checkpoint -> HF or Meta directory or a GGUF file, with the tokenizer carried along."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from herd.formats import read_checkpoint, write_checkpoint
from herd.formats.hf import DEFAULT_MAX_SHARD_BYTES

# Files beside the weights that describe the tokenizer and generation defaults; copied verbatim.
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


def convert(
    src: str | Path,
    dst: str | Path,
    to: str,
    *,
    dtype: torch.dtype | None = None,
    num_shards: int = 1,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> dict[str, Any]:
    """Convert `src` (Meta dir, HF dir or .gguf) into the new directory `dst` in format `to`; for "gguf",
    `dst` is the new .gguf file, with float32 matrices unless `dtype` is float16 or bfloat16."""
    ckpt = read_checkpoint(src, dtype=dtype)
    if to == "gguf":
        from herd.formats.gguf_write import write_gguf

        write_gguf(ckpt, dst, dtype="f16" if dtype == torch.float16 else "bf16" if dtype == torch.bfloat16 else "f32")
        return {"from": ckpt.format, "to": to, "args": ckpt.args}
    gguf_metadata = ckpt.metadata if ckpt.format == "gguf" else None
    if gguf_metadata is not None:
        ckpt.metadata = _token_ids_from_gguf(gguf_metadata)

    def add_tokenizer(tmp: Path) -> None:
        if gguf_metadata is not None:
            from herd.tokenizer import HFTokenizer

            HFTokenizer.from_gguf_metadata(gguf_metadata, ckpt.path).save(tmp)
            return
        for name in TOKENIZER_FILES:
            if (ckpt.path / name).is_file():
                shutil.copy2(ckpt.path / name, tmp / name)

    write_checkpoint(dst, ckpt, to, num_shards=num_shards, max_shard_bytes=max_shard_bytes, assets=add_tokenizer)
    return {"from": ckpt.format, "to": to, "args": ckpt.args}


def _token_ids_from_gguf(metadata: dict[str, Any]) -> dict[str, Any]:
    keys = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "pad_token_id": "padding_token_id"}
    return {hf: metadata[f"tokenizer.ggml.{g}"] for hf, g in keys.items() if f"tokenizer.ggml.{g}" in metadata}
