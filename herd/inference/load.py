"""Load a checkpoint straight into a `DecodeModel`: the path every generating command takes.

Unlike `herd.formats.load_pretrained` (a training-ready Transformer), no full float copy of a
quantized file is made: with --quant int8/int4, a GGUF file's Q8_0 / Q4_0 / Q4_1 / Q4_K blocks
go into the kernels' layout as they are, and other tensors are quantized one at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from herd.formats import Checkpoint, detect_format, read_checkpoint
from herd.formats.gguf import read_gguf
from herd.formats.load import DEFAULT_MODEL, resolve_model_path, tokenizer_for
from herd.formats.packed import PackedWeight
from herd.inference.decode_model import DecodeModel
from herd.inference.quantize import check_quant
from herd.tokenizer import Tokenizer


@dataclass
class LoadedDecoder:
    model: DecodeModel
    tokenizer: Tokenizer
    name: str
    path: Path
    format: str
    load_s: float


def load_decoder(
    name_or_path: str | None = None, *, dtype: torch.dtype = torch.float32, quant: str = "none"
) -> LoadedDecoder:
    """An embedded model's name, an HF or Meta directory or a .gguf file, ready to generate."""
    check_quant(quant, dtype)
    t0 = time.perf_counter()
    path = resolve_model_path(name_or_path)
    fmt = detect_format(path)
    if fmt == "gguf":
        args, sd, metadata = read_gguf(path, dtype=torch.float32, keep_packed=quant != "none")
        ckpt = Checkpoint(args=args, state_dict={}, format=fmt, path=path, metadata=metadata)
    else:
        ckpt = read_checkpoint(path)
        args, sd = ckpt.args, dict[str, "torch.Tensor | PackedWeight"](ckpt.state_dict)
        ckpt.state_dict = {}
    tokenizer = tokenizer_for(ckpt)
    model = DecodeModel(args, sd, dtype=dtype, quant=quant)
    del sd
    return LoadedDecoder(model, tokenizer, name_or_path or DEFAULT_MODEL, path, fmt, time.perf_counter() - t0)
