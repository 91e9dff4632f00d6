"""Apply training transforms to a plain `Transformer`, block by block, as torchtitan does.

Each transform replaces `model.layers[i]` in place and keeps parameter names loadable: DCP's state-dict helpers
strip the `_checkpoint_wrapped_module` and `_orig_mod` prefixes, so checkpoints do not depend on the options.
"""

from __future__ import annotations

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from herd.model import Transformer


def apply_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block's activations during backward instead of storing them (memory for ~1/3 more FLOPs)."""
    for name, block in model.layers.items():
        model.layers[name] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: Transformer) -> None:
    """torch.compile each block separately: blocks share one graph, so compile time does not grow with depth."""
    for name, block in model.layers.items():
        model.layers[name] = torch.compile(block, dynamic=False)
