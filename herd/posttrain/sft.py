"""`herd sft`: supervised fine-tuning of a pretrained model on dialogs, with the pretraining loop.

The model and its tokenizer come from `posttrain.init_from` (the embedded SmolLM2-135M-Instruct by default); the
dialogs are packed several per sequence with the document mask, and the loss is on assistant tokens only (masks
from the dialog's own renderer). Everything else (optimizer, schedule, checkpoints, metrics, recovery, torchrun
layouts) is the trainer's, so an SFT run resumes and exports like a pretraining run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from herd.inference.loader import load_pretrained
from herd.posttrain.loader import DialogLoader
from herd.train.config import TrainJobConfig
from herd.train.trainer import Trainer


def build_sft(cfg: TrainJobConfig) -> tuple[Trainer, DialogLoader]:
    pretrained = load_pretrained(cfg.posttrain.init_from or None)
    loader = DialogLoader(cfg.posttrain.sft_data, pretrained.tokenizer, seed=cfg.job.seed,
                          on_error=cfg.posttrain.on_error, work_dir=Path(cfg.job.dump_folder))  # fmt: skip
    model = pretrained.model
    trainer = Trainer(cfg, loader=loader, initial=(model.args, model.state_dict()))
    return trainer, loader


def run_sft(cfg: TrainJobConfig) -> dict[str, Any]:
    trainer, loader = build_sft(cfg)
    summary = trainer.train()
    summary.update(dialogs=len(loader.examples), skipped_lines=len(loader.problems), problems=loader.problems[:20],
                   truncated=loader.truncated)  # fmt: skip
    return summary
