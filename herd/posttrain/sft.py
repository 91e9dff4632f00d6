"""`herd sft`: supervised fine-tuning of a pretrained model on dialogs, with the pretraining loop.

The model and its tokenizer come from `posttrain.init_from` (the embedded SmolLM2-135M-Instruct by default); the
dialogs are packed several per sequence with the document mask, and the loss is on assistant tokens only (masks
from the dialog's own renderer). Everything else (optimizer, schedule, checkpoints, metrics, recovery, torchrun
layouts) is the trainer's, so an SFT run resumes like a pretraining run. At the end the model is exported to
`<dump_folder>/model` (HF format with the tokenizer; LoRA adapters merged), ready for the next stage.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from herd.errors import TrainError
from herd.formats.load import load_pretrained
from herd.posttrain.loader import DialogLoader
from herd.posttrain.lora import apply_lora
from herd.posttrain.stage import export
from herd.train.average import average_to
from herd.train.config import TrainJobConfig
from herd.train.trainer import Trainer


def build_sft(cfg: TrainJobConfig) -> tuple[Trainer, DialogLoader]:
    pretrained = load_pretrained(cfg.posttrain.init_from or None)
    loader = DialogLoader(cfg.posttrain.sft_data, pretrained.tokenizer, seed=cfg.job.seed,
                          on_error=cfg.posttrain.on_error, work_dir=Path(cfg.job.dump_folder))  # fmt: skip
    model = pretrained.model
    pt = cfg.posttrain
    adapt = None
    if pt.lora_rank:
        adapt = partial(apply_lora, rank=pt.lora_rank, alpha=pt.lora_alpha, targets=pt.lora_targets)
    trainer = Trainer(cfg, loader=loader, initial=(model.args, model.state_dict()), adapt=adapt)
    if pt.lora_rank and trainer.world_size > 1:
        raise TrainError("posttrain.lora_rank > 0 runs in one process; launch without torchrun or set lora_rank=0")
    return trainer, loader


def run_sft(cfg: TrainJobConfig) -> dict[str, Any]:
    trainer, loader = build_sft(cfg)
    summary = trainer.train()
    summary.update(dialogs=len(loader.examples), skipped_lines=len(loader.problems), problems=loader.problems[:20],
                   truncated=loader.truncated, model=str(export_sft(trainer, loader)))  # fmt: skip
    return summary


def export_sft(trainer: Trainer, loader: DialogLoader) -> Path:
    """`<dump_folder>/model`: from the live model in one process (LoRA merged), else from the last checkpoint."""
    out = trainer.run_dir / "model"
    if trainer.world_size == 1:
        return export(trainer.model, loader.chat_tokenizer, out, dtype="float32")
    if trainer.rank == 0:
        average_to([Path(trainer.checkpointer.latest())], out, to="hf")
    return out
