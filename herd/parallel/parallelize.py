"""Apply parallelism and training transforms to a plain `Transformer`, as torchtitan does, in a fixed order:
tensor parallel -> activation checkpointing -> compile -> FSDP2.

Each transform works on `model.layers[i]` and keeps parameter names loadable: DCP's state-dict helpers strip the
`_checkpoint_wrapped_module` and `_orig_mod` prefixes, and DTensor parameters keep their names, so checkpoints do
not depend on the options or the layout they were saved under.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from herd.model import Transformer


def apply_tp(model: Transformer, mesh: DeviceMesh) -> None:
    """Megatron-style tensor parallelism with sequence parallelism on the norms.

    Between blocks the residual stream is sharded along the sequence (Shard(1)); each attention and feed-forward
    gathers it (all-gather), computes with its column-split wq/wk/wv or w1/w3 and row-split wo or w2, and
    reduce-scatters back to sequence shards. The embedding is split by rows (vocab) and the output projection by
    columns, gathered to full logits for the loss. Every parameter becomes a DTensor on `mesh`.
    """
    root_plan = {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    }
    # A pipeline stage holds only some of these (herd/parallel/pipeline.py).
    parallelize_module(model, mesh, {k: v for k, v in root_plan.items() if getattr(model, k) is not None})
    for block in model.layers.values():
        parallelize_module(block, mesh, {
            "attention_norm": SequenceParallel(),
            # x is sequence-sharded; cos, sin, mask and cache_pos are passed as they are.
            "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None, None, None),
                                            desired_input_layouts=(Replicate(), None, None, None, None)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w3": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
        })  # fmt: skip


def apply_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block's activations during backward instead of storing them (memory for ~1/3 more FLOPs)."""
    for name, block in model.layers.items():
        model.layers[name] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: Transformer) -> None:
    """torch.compile each block separately: blocks share one graph, so compile time does not grow with depth."""
    for name, block in model.layers.items():
        # Compiling a module returns an OptimizedModule (an nn.Module); torch.compile's signature only says Callable.
        model.layers[name] = cast(nn.Module, torch.compile(block, dynamic=False))


def apply_fsdp(
    model: Transformer,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None,
    reshard_after_forward: bool,
    wrapper: nn.Module | None = None,
) -> None:
    """FSDP2: each block, then the root (embeddings, norm, output), sharded over `mesh` (1-D: FSDP; 2-D with a
    replicate axis: HSDP). With bf16, parameters are gathered in bf16 and gradients reduced in float32. A
    `wrapper` around the model (a reward or value head's module) becomes the root, with the same policy."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers.values():
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # The root's parameters are used last in forward: keeping them gathered saves an all-gather in backward.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    if wrapper is not None:
        fully_shard(wrapper, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
