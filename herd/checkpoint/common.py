"""Shared checkpoint plumbing: atomic writes and checking a state dict against the model's shapes."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from herd.errors import CheckpointError
from herd.model import ModelArgs, build_model


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Every parameter of the herd model for `args`, with its shape (built on the meta device)."""
    model = build_model(args, device="meta")
    return {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}


def check_state_dict(args: ModelArgs, state_dict: dict[str, torch.Tensor], source: str | Path) -> None:
    """Raise one line naming the source, the tensor and both shapes at the first disagreement."""
    expected = expected_shapes(args)
    for name, shape in expected.items():
        if name not in state_dict:
            raise CheckpointError(f"{source}: missing tensor {name!r} (expected shape {list(shape)})")
        got = tuple(state_dict[name].shape)
        if got != shape:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {list(got)}, the model expects {list(shape)}")
    if unexpected := sorted(state_dict.keys() - expected.keys()):
        raise CheckpointError(f"{source}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")


def tensors_tied(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when `output.weight` is absent or bitwise equal to the token embedding (tied models)."""
    out, emb = state_dict.get("output.weight"), state_dict.get("tok_embeddings.weight")
    if out is None:
        return True
    return emb is not None and out.shape == emb.shape and out.dtype == emb.dtype and torch.equal(out, emb)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[object]:
    """Write to a temp file beside `path`, fsync, then rename over it: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Fill a temp directory beside `path`, then rename it to `path` once complete.

    `path` must not exist or be an empty directory: a conversion never overwrites a checkpoint.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"{path}: destination exists and is not an empty directory; choose a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
