"""Model weights in Meta, HF and GGUF formats, read into one herd state dict (Meta names and layout), and
models loaded by name or path (`load_pretrained`: embedded models, HF/Meta directories, .gguf files).

Not to be confused with training checkpoints (herd/train/checkpoint.py: DCP, optimizer state, exact resume),
which `herd ckpt average` turns into one of these formats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from herd.errors import CheckpointError
from herd.fileio import read_json
from herd.formats import hf, meta
from herd.model import ModelArgs, Transformer, build_model

FORMATS = ("meta", "hf", "gguf")


@dataclass
class Checkpoint:
    args: ModelArgs
    state_dict: dict[str, torch.Tensor]
    format: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    """params.json, config.json or the GGUF key/values, as read."""


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        raise CheckpointError(f"{path}: not a checkpoint (expected a .gguf file, an HF or a Meta directory)")
    if hf.is_hf_dir(path):
        return "hf"
    if meta.is_meta_dir(path):
        return "meta"
    raise CheckpointError(
        f"{path}: not a checkpoint directory (expected config.json + *.safetensors, "
        "or params.json + consolidated.*.pth)"
    )


def read_checkpoint(path: str | Path, *, dtype: torch.dtype | None = None) -> Checkpoint:
    """Read any supported checkpoint; `dtype` converts floating tensors (default: as stored, GGUF as float32)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "gguf":
        from herd.formats.gguf import read_gguf

        args, sd, metadata = read_gguf(path, dtype=dtype or torch.float32)
    elif fmt == "hf":
        args, sd, metadata = hf.read_hf(path)
    else:
        args, sd, metadata = meta.read_meta(path)
    if dtype is not None:
        sd = cast_state_dict(sd, dtype)
    return Checkpoint(args=args, state_dict=sd, format=fmt, path=path, metadata=metadata)


def read_args(path: str | Path) -> ModelArgs:
    """Model arguments from a checkpoint's metadata alone (no weights are read)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "gguf":
        from herd.formats.gguf import read_gguf_args

        return read_gguf_args(path)
    name = hf.CONFIG if fmt == "hf" else meta.PARAMS
    raw = read_json(path / name, what="model config", error=CheckpointError)
    if fmt == "hf":
        return hf.args_from_hf_config(raw, path / name)
    return meta.args_from_params(raw, path / name)


def cast_state_dict(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Cast every tensor, keeping tensors that were shared (tied embeddings) shared."""
    cast: dict[int, torch.Tensor] = {}
    out = {}
    for name, t in sd.items():
        if id(t) not in cast:
            cast[id(t)] = t.to(dtype)
        out[name] = cast[id(t)]
    return out


def load_model(
    ckpt: Checkpoint, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Transformer:
    """A herd Transformer holding the checkpoint's weights (assigned, not copied, where dtype/device allow)."""
    sd = ckpt.state_dict if dtype is None else cast_state_dict(ckpt.state_dict, dtype)
    model = build_model(ckpt.args, device="meta", dtype=dtype or next(iter(sd.values())).dtype)
    sd = {k: v.to(device) for k, v in sd.items()}
    model.load_state_dict(sd, assign=True, strict=True)
    model.tie_weights()
    return model


def write_checkpoint(
    path: str | Path,
    ckpt: Checkpoint,
    to: str,
    *,
    num_shards: int = 1,
    max_shard_bytes: int = hf.DEFAULT_MAX_SHARD_BYTES,
    assets: Callable[[Path], None] | None = None,
) -> None:
    """Write `ckpt` as `to` ("hf" or "meta") into the (new or empty) directory `path`, atomically.

    `assets(tmp_dir)` may add files (tokenizer...) before the directory is committed.
    """
    from herd.fileio import atomic_dir

    if to not in ("hf", "meta"):
        raise CheckpointError(f"cannot write format {to!r}; writable formats: hf, meta")
    with atomic_dir(path, error=CheckpointError) as tmp:
        if to == "hf":
            hf.write_hf(tmp, ckpt.args, ckpt.state_dict, extra_config=ckpt.metadata, max_shard_bytes=max_shard_bytes)
        else:
            meta.write_meta(tmp, ckpt.args, ckpt.state_dict, num_shards=num_shards)
        if assets is not None:
            assets(tmp)


from herd.formats.load import DEFAULT_MODEL, EMBEDDED, Pretrained, load_pretrained, parse_dtype, resolve_model_path  # noqa: E402

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "FORMATS",
    "Checkpoint",
    "Pretrained",
    "cast_state_dict",
    "detect_format",
    "load_model",
    "load_pretrained",
    "parse_dtype",
    "read_args",
    "read_checkpoint",
    "resolve_model_path",
    "write_checkpoint",
]
