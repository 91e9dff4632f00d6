"""Expected time and memory of a training stage for `herd run --dry-run`, from herd's planner arithmetic.

Memory is `herd.parallel.memory.estimate_memory` for the stage's layout (one process: the whole model on this
machine). Time is train FLOPs (herd's FLOPs per token x tokens) over devices x peak x MFU; on this machine the
peak is a measured matmul rate (a fraction of a second, once per dry run).
"""

from __future__ import annotations

import functools
from typing import Any

from herd.config import JobConfig
from herd.recipe.stage import Estimate


@functools.cache
def _local_peak() -> float:
    import torch

    from herd.train.metrics import measure_peak_flops

    return measure_peak_flops(torch.float32, torch.device("cpu"), n=1024, reps=2)


def train_tokens(cfg: JobConfig) -> float:
    """Tokens `cfg.training.steps` steps see through the batch ramp."""
    t = cfg.training
    ramp = sorted(t.ramp, key=lambda r: r.at_tokens)
    seen, batch = 0.0, t.batch_tokens
    for _ in range(t.steps):
        while ramp and seen >= ramp[0].at_tokens:
            batch = ramp.pop(0).batch_tokens
        seen += batch
    return seen


def config_args(cfg: JobConfig, shape: dict[str, Any] | None = None, preset: str | None = None) -> Any:
    """The ModelArgs a train config (with a plan's shape and preset) builds; the vocabulary is the preset's."""
    from herd.model import get_preset

    args = get_preset(preset or cfg.model.preset)
    return args.replace(**{**cfg.model.shape(), **(shape or {})})


GPU_MEMORY_GIB = 80.0


def train_estimate(stage: Any) -> Estimate:
    """Time and memory per device of a pretrain or anneal stage, as it will run (inputs wired, plan applied)."""
    from herd.model import flops_per_token
    from herd.parallel.dims import ParallelDims
    from herd.parallel.memory import GIB, estimate_memory
    from herd.recipe.stage import command_config

    cfg = stage.wired(command_config(stage), stage.placeholders())
    args = stage.model_args()
    if args is None:
        return Estimate(basis="continues a checkpoint from outside the recipe: its shape is known when it is read")
    settings = stage.settings
    tokens = stage.planned_tokens() or train_tokens(cfg)
    seq_len = max([cfg.training.seq_len, *(r.seq_len for r in cfg.training.ramp)])
    flops = flops_per_token(args, seq_len)["train"] * tokens
    p = cfg.parallel
    world = settings.gpus or 1
    dims = ParallelDims(tp=p.tp, pp=p.pp, dp_replicate=p.dp_replicate, dp_shard=p.dp_shard, world_size=world)
    # Sequences per forward/backward: micro_batch_tokens, else the data-parallel rank's whole share of the batch.
    micro_tokens = cfg.training.micro_batch_tokens or cfg.training.batch_tokens // max(1, dims.dp)
    micro = max(1, micro_tokens // seq_len)
    recompute = "selective" if cfg.training.activation_checkpoint else "none"
    mem = estimate_memory(args, dims, seq_len=seq_len, micro_batch=micro, activation_checkpoint=recompute,
                          param_bytes=2 if cfg.model.dtype == "bfloat16" else 4)  # fmt: skip
    if settings.gpus:
        rate = world * settings.peak_tflops * 1e12 * settings.mfu
        where = f"{world:,} GPUs x {settings.peak_tflops:g} TFLOP/s"
    else:
        rate, where = _local_peak() * settings.mfu, "this CPU's measured matmul peak"
    gib = mem["bytes"]["total"] / GIB
    basis = (f"planner: {args.dim}-dim {args.n_layers}-layer model, {flops:.3g} FLOPs for {tokens:.3g} tokens "
             f"at MFU {settings.mfu:g} on {where}; memory per device on {dims.describe()}, "
             f"sequence {seq_len:,}")  # fmt: skip
    warning = ""
    if settings.gpus and gib > GPU_MEMORY_GIB:
        warning = (f"{gib:,.0f} GiB per GPU exceeds {GPU_MEMORY_GIB:g} GiB on this layout (herd does not model "
                   "context parallelism, which Llama 3 used at long context)")  # fmt: skip
    return Estimate(seconds=flops / rate, memory_gib=gib, basis=basis, warning=warning)
