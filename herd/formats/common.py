"""Checking a state dict against the model's shapes."""

from __future__ import annotations

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
