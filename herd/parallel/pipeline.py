"""Pipeline parallelism with `torch.distributed.pipelining`: the model split by layers, one stage per rank.

A stage is the plain `Transformer` with the other stages' parts removed: layers outside its range are deleted
from the `layers` ModuleDict (the remaining keys, and so the checkpoint names, do not change), the first stage
alone keeps `tok_embeddings`, and the last alone keeps `norm` and `output`. Layers are spread as
`herd.parallel.memory.stage_layers` plans them: the first and last stages, which also hold the embedding and the
output projection, get one layer fewer when the count does not divide evenly.

Between stages travel the hidden states and the document ids of each micro-batch, so every stage builds the
same document mask and RoPE positions as one process would.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from herd.model import Transformer, document_mask, document_positions
from herd.parallel.memory import stage_layers

SCHEDULES = {"1F1B": Schedule1F1B, "GPipe": ScheduleGPipe}


def prune_to_stage(model: Transformer, stage: int, num_stages: int) -> list[str]:
    """Keep only stage `stage`'s parts of `model` (in place); returns the names of the layers it keeps."""
    counts = stage_layers(len(model.layers), num_stages)
    start = sum(counts[:stage])
    names = list(model.layers)
    keep = names[start : start + counts[stage]]
    for name in names:
        if name not in keep:
            del model.layers[name]
    # register_module(name, None) is what `model.name = None` does, in a form the type checker accepts: the
    # attributes are typed as present, and Transformer.forward checks for the missing ones.
    if stage > 0:
        model.register_module("tok_embeddings", None)
    if stage < num_stages - 1:
        model.register_module("norm", None)
        model.register_module("output", None)
    return keep


class StageModule(nn.Module):
    """What a pipeline stage runs: (tokens or hidden states, document ids) -> (hidden states, ids) or logits."""

    def __init__(self, model: Transformer, *, autocast: bool) -> None:
        super().__init__()
        self.model, self.autocast = model, autocast

    def forward(self, x: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(x, positions_BT=document_positions(doc_ids), mask=document_mask(doc_ids))
        # Point-to-point sends need contiguous tensors; a micro-batch of a data-parallel rank's rows may be a view.
        return out if self.model.output is not None else (out, doc_ids.contiguous())


def build_schedule(
    model: Transformer,
    mesh: DeviceMesh,
    *,
    schedule: str,
    microbatches: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    autocast: bool,
):
    """The schedule that runs this rank's stage. The loss is summed over micro-batches as it is
    (`scale_grads=False`): herd's loss function already divides by the whole batch's target count."""
    stage = PipelineStage(
        StageModule(model, autocast=autocast), mesh.get_local_rank(), mesh.size(), device, group=mesh.get_group()
    )
    return SCHEDULES[schedule](stage, n_microbatches=microbatches, loss_fn=loss_fn, scale_grads=False)
