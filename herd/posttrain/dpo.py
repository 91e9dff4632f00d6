"""`herd dpo`: Direct Preference Optimization (Rafailov et al. 2023) as Llama 3 ran it, in the one Trainer.

The reference model is the starting model: its summed log-probabilities of every chosen and rejected response
are computed once, before the first update, and cached in the run directory (`reference_logps.pt`, keyed by
the pair), so the reference never needs a second copy of the weights in memory. Under torchrun the ranks share
that pass. The loss is DPO with `beta` plus `nll_coef` x the chosen response's NLL per token (0.2 in Llama 3); the
end-of-turn token is left out of both, and the header is part of the prompt.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from herd.config import JobConfig
from herd.data.loader import IGNORE_INDEX
from herd.fileio import atomic_file
from herd.posttrain.data import format_problems
from herd.posttrain.losses import dpo_loss, sequence_logps
from herd.posttrain.preference import Pair, PairData, PairObjective, load_pairs, pad
from herd.posttrain.stage import export_model, held_out_before, load_start, write_json
from herd.tokenizer import Tokenizer
from herd.train.trainer import Trainer


def pair_logps(model: nn.Module, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs of chosen and rejected responses, and the chosen/rejected target counts."""
    device = next(model.parameters()).device
    tokens, targets, _ = pad([p.chosen for p in pairs] + [p.rejected for p in pairs], device)
    # The output layer runs only where there are targets: prompts and padding are most of each row, and full
    # logits over the vocabulary at every position would cost more than the transformer.
    logits = model(tokens, output_mask=targets != IGNORE_INDEX)
    logps, counts = sequence_logps(logits, targets)
    n = len(pairs)
    return logps[:n], logps[n:], counts[:n], counts[n:]


def pair_digest(p: Pair) -> str:
    """Identifies a pair's tokens and targets, so a cache built from other data or another tokenizer never
    matches."""
    h = hashlib.sha256()
    for side in (p.chosen, p.rejected):
        h.update(json.dumps([side.ids, side.targets]).encode())
    return h.hexdigest()


class DPO(PairObjective):
    """The DPO loss per pair against cached reference log-probs."""

    name = "dpo"

    def __init__(self, cfg: JobConfig, data: PairData, tokenizer: Tokenizer) -> None:
        super().__init__(cfg, data, tokenizer)
        self.reference: dict[int, list[float]] = {}  # id(pair) -> [chosen, rejected], looked up without hashing

    def prepare(self, module: nn.Module) -> None:
        """The starting weights are the reference (with LoRA its adapters start at zero: the base model)."""
        pairs = self.data.train + self.data.held_out
        values = reference_logps(module, pairs, self.micro, self.run_dir / "reference_logps.pt",
                                 bf16=self.cfg.model.dtype == "bfloat16")  # fmt: skip
        self.reference = {id(p): v for p, v in zip(pairs, values, strict=True)}

    def loss(self, module: nn.Module, pairs: list[Pair]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen, rejected, n_chosen, _ = pair_logps(module, pairs)
        refs = torch.tensor([self.reference[id(p)] for p in pairs], device=chosen.device)
        d = self.cfg.dpo
        loss, metrics = dpo_loss(chosen, rejected, refs[:, 0], refs[:, 1], beta=d.beta,
                                 chosen_nll=-chosen / n_chosen.clamp(min=1), nll_coef=d.nll_coef)  # fmt: skip
        n = len(pairs)  # dpo_loss gives means over the pairs; the Trainer wants sums
        return loss * n, {k: v * n for k, v in metrics.items()}

    @torch.no_grad()
    def evaluate(self, module: nn.Module) -> dict[str, float]:
        """Loss, reward accuracy and margin on the held-out pairs (means over pairs)."""
        pairs = self.data.held_out
        if not pairs:
            return {}
        was_training = module.training
        module.eval()
        device = next(module.parameters()).device
        total: dict[str, float] = {}
        for start in range(0, len(pairs), self.micro):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.cfg.model.dtype == "bfloat16"):
                loss, metrics = self.loss(module, pairs[start : start + self.micro])
            for k, v in {"loss": loss, **metrics}.items():
                total[f"eval_{k}"] = total.get(f"eval_{k}", 0.0) + float(v) / len(pairs)
        module.train(was_training)
        return total


@torch.no_grad()
def reference_logps(model: nn.Module, pairs: list[Pair], micro: int, cache: Path, *, bf16: bool) -> list[list[float]]:
    """[chosen, rejected] of each pair under `model`'s weights; the cache file, keyed by pair digest, supplies
    those it already holds and keeps the rest. Under torchrun each rank computes every world_size-th group of
    `micro` pairs (the same groups one process would form, so the values do not depend on the layout)."""
    digests = [pair_digest(p) for p in pairs]
    cached: dict[str, list[float]] = torch.load(cache, weights_only=True) if cache.is_file() else {}
    missing = [(p, d) for p, d in zip(pairs, digests, strict=True) if d not in cached]
    if missing:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        mine: dict[str, list[float]] = {}
        groups = [missing[i : i + micro] for i in range(0, len(missing), micro)]
        for group in groups[rank::world]:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                chosen, rejected, _, _ = pair_logps(model, [p for p, _ in group])
            for (_, d), c, r in zip(group, chosen.tolist(), rejected.tolist(), strict=True):
                mine[d] = [c, r]
        model.train(was_training)
        parts = [mine]
        if world > 1:
            parts = [{} for _ in range(world)]
            dist.all_gather_object(parts, mine)
        for part in parts:
            cached.update(part)
        if rank == 0:
            with atomic_file(cache, "wb") as f:
                torch.save(cached, f)
    return [cached[d] for d in digests]


def run_dpo(cfg: JobConfig) -> dict[str, Any]:
    start = load_start(cfg)
    tokenizer = start.tokenizer
    data = load_pairs(cfg.data.files, tokenizer, on_error=cfg.data.on_error, max_seq_len=cfg.training.seq_len,
                      eval_fraction=cfg.data.eval_fraction, seed=cfg.job.seed, content_only=True,
                      use_edited=False)  # fmt: skip
    objective = DPO(cfg, data, tokenizer)
    trainer = Trainer(cfg, objective, command="dpo", initial=start.model)
    del start  # the Trainer copied the weights; a second copy held through training is memory wasted
    before = held_out_before(trainer, lambda: objective.evaluate(trainer.model))
    result = trainer.train()
    after = objective.evaluate(trainer.model)
    out = export_model(trainer, tokenizer, trainer.run_dir / "model", dtype=cfg.model.export_dtype)
    summary = {"train_pairs": len(data.train), "held_out_pairs": len(data.held_out),
               "skipped_lines": len(data.problems), "problems": data.problems[:20], "too_long": data.too_long,
               "steps": result["steps"], "final_loss": result["final_loss"], "held_out_before": before,
               "held_out_after": after, "model": str(out), "seconds": result["seconds"]}  # fmt: skip
    if trainer.rank == 0:
        write_json(trainer.run_dir / "summary.json", summary)
    trainer.shutdown()
    return summary


def format_summary(s: dict[str, Any]) -> str:
    before, after = s["held_out_before"], s["held_out_after"]
    held = (f"; held-out reward accuracy {before['eval_reward_accuracy']:.3f} -> {after['eval_reward_accuracy']:.3f}, "
            f"margin {after['eval_reward_margin']:.3f}") if after else ""  # fmt: skip
    return "\n".join([*format_problems(s["problems"]), (
        f"done: {s['steps']} steps on {s['train_pairs']} pairs, final loss {s['final_loss']:.4f}{held}; "
        f"model {s['model']}")])  # fmt: skip
