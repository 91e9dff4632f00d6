"""Checking a state dict against the model's shapes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from herd.errors import CheckpointError, ModelError
from herd.model import ModelArgs, build_model


def expected_shapes(args: ModelArgs, source: str | Path) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every parameter of the herd model for `args` (read from `source`) with its shape: the non-layer ones, then layer
    by layer.

    One layer is built (on the meta device) and its names repeated, and lazily: `n_layers` comes from a file, and a
    corrupt one (4 billion) must fail at the first missing layer, not build or list billions of modules first."""
    try:
        one = build_model(args.replace(n_layers=1), device="meta")
    except RuntimeError as e:  # sizes whose product overflows (a corrupt vocab_size of 6e17)
        raise CheckpointError(f"{source}: model args describe tensors too large to exist ({str(e)[:120]})") from None
    shapes = {name: tuple(t.shape) for name, t in one.state_dict(keep_vars=True).items()}
    yield from ((name, shape) for name, shape in shapes.items() if not name.startswith("layers.0."))
    layer = [(name.removeprefix("layers.0."), shape) for name, shape in shapes.items() if name.startswith("layers.0.")]
    for i in range(args.n_layers):
        yield from ((f"layers.{i}.{rest}", shape) for rest, shape in layer)


def args_from_fields(build: Callable[[dict[str, Any], Path], ModelArgs], fields: Any, source: Path) -> ModelArgs:
    """`build(fields, source)` for a config file's parsed JSON (config.json, params.json). The file is data: anything
    in it that does not fit (not an object, a field of the wrong type, an invalid shape) is one error naming it."""
    if not isinstance(fields, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(fields).__name__}")
    try:
        return build(fields, source)
    except ModelError as e:
        raise CheckpointError(f"{source}: describes an invalid model ({e})") from None
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError) as e:
        raise CheckpointError(f"{source}: invalid field ({type(e).__name__}: {str(e)[:200]})") from None


def check_state_dict(args: ModelArgs, state_dict: dict[str, torch.Tensor], source: str | Path) -> None:
    """Raise one line naming the source, the tensor and both shapes at the first disagreement."""
    expected = set()
    for name, shape in expected_shapes(args, source):  # lazily: a corrupt n_layers fails at its first missing layer
        if name not in state_dict:
            raise CheckpointError(f"{source}: missing tensor {name!r} (expected shape {list(shape)})")
        got = tuple(state_dict[name].shape)
        if got != shape:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {list(got)}, the model expects {list(shape)}")
        expected.add(name)
    if unexpected := sorted(state_dict.keys() - expected):
        raise CheckpointError(f"{source}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")


def tensors_tied(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when `output.weight` is absent or bitwise equal to the token embedding (tied models)."""
    out, emb = state_dict.get("output.weight"), state_dict.get("tok_embeddings.weight")
    if out is None:
        return True
    return emb is not None and out.shape == emb.shape and out.dtype == emb.dtype and torch.equal(out, emb)
