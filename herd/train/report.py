"""What `herd train` says before and after a run: the model, the layout, the schedule and the data; then the
totals, the share of wall time that trained, recovery events and where the results are."""

from __future__ import annotations

from typing import Any

from herd.model import count_params
from herd.train.objective import LanguageModeling
from herd.train.trainer import Trainer


def format_start(trainer: Trainer) -> str:
    cfg, ma, s = trainer.cfg, trainer.model_args, trainer.schedule
    n = count_params(ma)
    lines = [
        f"herd {trainer.command}: {n['total'] / 1e6:.2f}M parameters (dim {ma.dim}, {ma.n_layers} layers, "
        f"{ma.n_heads} heads, {ma.n_kv_heads} kv heads, vocab {ma.vocab_size}) on {trainer.device} "
        f"({trainer.dims.describe()}), {cfg.model.dtype}"
    ]
    stages = ", ".join(f"{st['batch_tokens']:,} tokens x {st['seq_len']} from step {st['step']}" for st in s.stages())
    anneal = f", anneal from step {s.anneal_start}" if s.anneal_start <= s.steps else ""
    lines.append(f"  {s.steps} steps, {s.total_tokens:,} tokens: batches of {stages}{anneal}")
    if isinstance(trainer.objective, LanguageModeling):
        mix = ", ".join(f"{k} {v:.0%}" for k, v in trainer.objective.loader.weights.items())
        lines.append(f"  data: {', '.join(cfg.data.shards)} ({mix}); run directory {trainer.run_dir}")
    if trainer.step:
        lines.append(f"  resuming at step {trainer.step}")
    return "\n".join(lines)


def format_done(trainer: Trainer, summary: dict[str, Any]) -> str:
    lines = [
        f"done: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']}s "
        f"({summary['tokens_per_s']:,} tok/s); final loss {summary['final_loss']:.4f} "
        f"(mean of last 10: {summary['final_loss_mean10']:.4f})",
        f"  effective training time {summary['effective_training_time']:.1%} (steps that count / wall time "
        "since the first launch)",
    ]
    if summary["skipped_steps"] or summary["rollbacks"]:
        lines.append(f"  recovery: {summary['skipped_steps']} steps skipped, {summary['rollbacks']} rollbacks "
                     f"(see {trainer.run_dir / 'events.jsonl'})")  # fmt: skip
    lines.append(f"  checkpoint {summary['checkpoint']}; metrics {trainer.run_dir / 'metrics.jsonl'}")
    lines.append(f"  export: herd ckpt average {summary['checkpoint']} --out {trainer.run_dir / 'model'}")
    return "\n".join(lines)
