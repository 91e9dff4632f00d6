"""`herd sft`: supervised fine-tuning of a pretrained model on dialogs, as language modeling in the one Trainer.

The model and its tokenizer come from `model.init_from` (the embedded SmolLM2-135M-Instruct by default); the
dialogs (`data.files`) are packed several per sequence with the document mask, and the loss is on assistant
tokens only (masks from the dialog's own renderer). Everything else (optimizer, schedule, checkpoints, metrics,
recovery, torchrun layouts) is the trainer's, so an SFT run resumes like a pretraining run. At the end the model is
exported to `<dump_folder>/model` (HF format with the tokenizer; LoRA adapters merged), ready for the next stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from herd.config import JobConfig
from herd.posttrain.data import format_problems
from herd.posttrain.loader import DialogLoader
from herd.posttrain.stage import export_model, load_start, write_json
from herd.train.checkpoint import tokenizer_files
from herd.train.objective import LanguageModeling
from herd.train.trainer import Trainer


def build_sft(cfg: JobConfig) -> tuple[Trainer, DialogLoader]:
    start = load_start(cfg)
    loader = DialogLoader(cfg.data.files, start.tokenizer, seed=cfg.job.seed, on_error=cfg.data.on_error,
                          work_dir=Path(cfg.job.dump_folder))  # fmt: skip
    objective = LanguageModeling(loader, cfg, tokenizer_files=tokenizer_files(loader.tokenizer, loader.tokenizer_dir))
    return Trainer(cfg, objective, command="sft", initial=start.model), loader


def run_sft(cfg: JobConfig) -> dict[str, Any]:
    trainer, loader = build_sft(cfg)
    return finish_sft(trainer, loader, trainer.train())


def finish_sft(trainer: Trainer, loader: DialogLoader, summary: dict[str, Any]) -> dict[str, Any]:
    """Export `<dump_folder>/model` after `trainer.train()` returned `summary`, and write summary.json."""
    out = export_model(trainer, loader.chat_tokenizer, trainer.run_dir / "model", dtype=trainer.cfg.model.export_dtype)
    summary.update(dialogs=len(loader.examples), skipped_lines=len(loader.problems), problems=loader.problems[:20],
                   truncated=loader.truncated, model=str(out))  # fmt: skip
    if trainer.rank == 0:
        write_json(trainer.run_dir / "summary.json", summary)
    trainer.shutdown()
    return summary


def format_start(trainer: Trainer, loader: DialogLoader) -> str:
    cfg, ma = trainer.cfg, trainer.model_args
    lora = f", LoRA rank {cfg.lora.rank}" if cfg.lora.rank else ""
    lines = [f"herd sft: {cfg.model.init_from} (dim {ma.dim}, {ma.n_layers} layers{lora}) on {len(loader.examples)} "
             f"dialogs from {', '.join(cfg.data.files)} ({trainer.dims.describe()}); run directory {trainer.run_dir}",
             *format_problems(loader.problems)]  # fmt: skip
    if trainer.step:
        lines.append(f"  resuming at step {trainer.step}")
    return "\n".join(lines)


def format_done(summary: dict[str, Any]) -> str:
    return (f"done: {summary['steps']} steps in {summary['seconds']}s; final loss {summary['final_loss']:.4f} "
            f"(assistant tokens only); {summary['truncated']} dialogs cut to the sequence length\n"
            f"  checkpoint {summary['checkpoint']}; model {summary['model']}")  # fmt: skip
