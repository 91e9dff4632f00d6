"""What the post-training stages with their own loop share: the starting model (optionally with LoRA), the
precision context, an AdamW loop with warmup, accumulation, clipping and metrics, and the export of the result
as an HF checkpoint with its tokenizer (LoRA merged back), written atomically.

These stages run in one process; `herd sft` runs on the pretraining trainer and takes torchrun layouts.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from herd.config import to_toml
from herd.fileio import atomic_file
from herd.formats import Checkpoint, cast_state_dict, write_checkpoint
from herd.formats.load import load_pretrained, parse_dtype
from herd.model import Transformer
from herd.posttrain.config import ModelSection, OptimSection
from herd.posttrain.loader import save_tokenizer
from herd.posttrain.lora import apply_lora, has_lora, merge_lora
from herd.tokenizer import Tokenizer


def load_start(m: ModelSection, *, seed: int) -> tuple[Transformer, Tokenizer]:
    """The model to train (float32 master weights) and its tokenizer; with lora_rank > 0 only adapters train."""
    pretrained = load_pretrained(m.init_from or None, dtype=torch.float32)
    model = pretrained.model.train()
    if m.lora_rank:
        torch.manual_seed(seed)
        apply_lora(model, rank=m.lora_rank, alpha=m.lora_alpha, dropout=m.lora_dropout, targets=m.lora_targets)
    return model, pretrained.tokenizer


def precision(m: ModelSection, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast over float32 weights on the model's device, or nothing."""
    if m.dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def write_config(run_dir: Path, cfg: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(run_dir / "config.toml", "w") as f:
        f.write(to_toml(cfg))


def write_json(path: Path, obj: Any) -> None:
    with atomic_file(path, "w") as f:
        f.write(json.dumps(obj, indent=2) + "\n")


def export(
    model: Transformer, tokenizer: Tokenizer, out: Path, *, dtype: str, assets: Callable[[Path], None] | None = None
) -> Path:
    """Write `model` (LoRA merged in place first) as an HF checkpoint with its tokenizer into the new dir `out`."""
    if has_lora(model):
        merge_lora(model)
    # Activation checkpointing and compile wrap blocks; the checkpoint keys are the plain model's.
    plain = {k.replace("._checkpoint_wrapped_module", "").replace("._orig_mod", ""): v.detach()
             for k, v in model.state_dict().items()}  # fmt: skip
    sd = cast_state_dict(plain, parse_dtype(dtype))

    def add_assets(tmp: Path) -> None:
        save_tokenizer(tokenizer, tmp)
        if assets is not None:
            assets(tmp)

    write_checkpoint(out, Checkpoint(args=model.args, state_dict=sd, format="hf", path=out), "hf", assets=add_assets)
    return out


def total_steps(o: OptimSection, examples: int) -> int:
    return max(1, math.ceil(o.epochs * examples / o.batch_size))


def epochs_of(n: int, *, seed: int) -> Iterator[int]:
    """Example indices, a seeded new order every epoch, forever."""
    epoch = 0
    while True:
        yield from torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        epoch += 1


def optimize(
    params: list[torch.nn.Parameter],
    o: OptimSection,
    *,
    steps: int,
    micro_batches: Callable[[], Iterator[Any]],
    loss_fn: Callable[[Any, int], tuple[torch.Tensor, dict[str, float]]],
    run_dir: Path,
    name: str,
) -> list[dict[str, Any]]:
    """AdamW over `params` for `steps` steps: each step draws batch_size / micro_batch_size micro-batches from
    `micro_batches()`; `loss_fn(micro, accumulation)` returns the micro-batch's loss already divided by the
    accumulation count, plus metrics (averaged over the step). Linear warmup, then linear decay to 0. Returns
    the metric records (also written to run_dir/metrics.jsonl)."""
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=(0.9, 0.95))

    def lr_factor(e: int) -> float:
        step = e + 1
        if o.warmup_steps and step <= o.warmup_steps:
            return step / o.warmup_steps
        return max(0.0, (steps - step + 1) / max(1, steps - o.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    accumulation = o.batch_size // o.micro_batch_size
    source = micro_batches()
    records = []
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as log:
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            for _ in range(accumulation):
                loss, metrics = loss_fn(next(source), accumulation)
                loss.backward()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v / accumulation
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, o.grad_clip))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step, "stage": name, **{k: round(v, 5) for k, v in sums.items()},
                      "grad_norm": round(grad_norm, 4), "lr": scheduler.get_last_lr()[0],
                      "step_s": round(time.perf_counter() - t0, 3)}  # fmt: skip
            scheduler.step()
            log.write(json.dumps(record) + "\n")
            log.flush()
            records.append(record)
            shown = "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k in SHOWN)
            print(f"[{name}] step {step}/{steps}  {shown}  {record['step_s']:.1f}s", flush=True)
    return records


SHOWN = ("loss", "accuracy", "eval_accuracy", "reward_margin", "reward_accuracy", "score", "kl")
