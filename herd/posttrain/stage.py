"""What the post-training stages share around the Trainer: the starting model, the tokenizer saved beside the run,
held-out metrics that survive a resume, and the export of the result as an HF checkpoint with its tokenizer
(LoRA merged), written atomically.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from herd.config import JobConfig
from herd.fileio import atomic_file
from herd.formats import Checkpoint, Pretrained, cast_state_dict, load_pretrained, parse_dtype, write_checkpoint
from herd.model import ModelArgs
from herd.model.lora import has_lora, merge_lora
from herd.posttrain.loader import save_tokenizer
from herd.tokenizer import Tokenizer
from herd.train.average import average_to
from herd.train.checkpoint import tokenizer_files
from herd.train.trainer import Trainer


def load_start(cfg: JobConfig) -> Pretrained:
    """The model a stage starts from (float32 master weights, on the CPU until the Trainer places it)."""
    return load_pretrained(cfg.model.init_from, dtype=torch.float32)


def run_tokenizer(tokenizer: Tokenizer, run_dir: Path) -> tuple[dict[str, Any], list[Path]]:
    """Save the tokenizer beside the run (checkpoints copy it from there): its identity and its files."""
    identity = save_tokenizer(tokenizer, run_dir / "tokenizer")
    return identity, tokenizer_files(identity, run_dir / "tokenizer")


def held_out_before(trainer: Trainer, measure: Callable[[], Any]) -> Any:
    """Held-out metrics of the starting weights: measured on the first launch and kept in the run directory, so a
    resumed run reports the start, not the checkpoint it resumed from. Every rank measures (collectives)."""
    path = trainer.run_dir / "held_out_before.json"
    if trainer.step == 0 or not path.is_file():
        value = measure()
        if trainer.rank == 0:
            write_json(path, {"value": value})
        return value
    return json.loads(path.read_text())["value"]


def trained_weights(trainer: Trainer) -> dict[str, torch.Tensor] | None:
    """The trained module's weights with plain names on rank 0 (None elsewhere); LoRA merged. Every rank calls it.
    Pipeline stages hold different layers: the caller exports their union from the last checkpoint instead."""
    if trainer.world_size == 1 and has_lora(trainer.transformer):
        merge_lora(trainer.transformer)
    sd = trainer.full_state_dict()
    if trainer.rank != 0:
        return None
    # Activation checkpointing and compile wrap blocks; the checkpoint keys are the plain model's.
    return {k.replace("._checkpoint_wrapped_module", "").replace("._orig_mod", ""): v for k, v in sd.items()}


def export_model(
    trainer: Trainer, tokenizer: Tokenizer, out: Path, *, dtype: str, prefix: str = "",
    assets: Callable[[Path, dict[str, torch.Tensor]], None] | None = None,
) -> Path:  # fmt: skip
    """Write the trained transformer (the keys under `prefix` of the trained module) as an HF checkpoint with its
    tokenizer into the new directory `out`; `assets(tmp_dir, weights)` adds files of its own (a reward head).
    Every rank calls it; rank 0 writes."""
    if trainer.dims.pp > 1:
        if trainer.rank == 0:
            latest = trainer.checkpointer.latest()
            assert latest is not None
            average_to([latest], out, to="hf", dtype=parse_dtype(dtype))
    else:
        weights = trained_weights(trainer)
        if weights is not None:
            sd = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            write_model(trainer.model_args, sd, tokenizer, out, dtype=dtype,
                        assets=None if assets is None else lambda tmp: assets(tmp, weights))  # fmt: skip
    if dist.is_initialized():
        dist.barrier()
    return out


def write_model(
    args: ModelArgs, sd: dict[str, torch.Tensor], tokenizer: Tokenizer, out: Path, *, dtype: str,
    assets: Callable[[Path], None] | None = None,
) -> Path:  # fmt: skip
    """An HF checkpoint of `sd` with its tokenizer, written into the new directory `out` as a whole."""
    sd = cast_state_dict({k: v.detach() for k, v in sd.items()}, parse_dtype(dtype))

    def add_assets(tmp: Path) -> None:
        save_tokenizer(tokenizer, tmp)
        if assets is not None:
            assets(tmp)

    if out.exists():  # an export of an earlier, interrupted finish of this run
        shutil.rmtree(out)
    ckpt = Checkpoint(args=args, state_dict=sd, format="hf", path=out, metadata=tokenizer.generation_ids())
    write_checkpoint(out, ckpt, "hf", assets=add_assets)
    return out


def write_json(path: Path, obj: Any) -> None:
    with atomic_file(path, "w") as f:
        f.write(json.dumps(obj, indent=2) + "\n")
