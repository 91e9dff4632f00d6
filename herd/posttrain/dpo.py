"""`herd dpo`: Direct Preference Optimization (Rafailov et al. 2023) as Llama 3 ran it.

The reference model is the starting model: its summed log-probabilities of every chosen and rejected response
are computed once, before the first update, and cached in the run directory (`reference_logps.pt`, keyed by
the pair), so the reference never needs a second copy of the weights in memory. The loss is DPO with `beta`
plus `nll_coef` x the chosen response's NLL per token (0.2 in Llama 3); the end-of-turn token is left out of
both, and the header is part of the prompt.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from herd.data.loader import IGNORE_INDEX
from herd.fileio import atomic_file
from herd.model import Transformer
from herd.posttrain.config import DPOJobConfig, check
from herd.posttrain.losses import dpo_loss, sequence_logps
from herd.posttrain.preference import Pair, load_pairs, pad, pair_batches
from herd.posttrain.stage import (
    export,
    load_start,
    optimize,
    precision,
    total_steps,
    write_config,
    write_json,
)


def pair_logps(
    model: Transformer, pairs: list[Pair], cfg: DPOJobConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed log-probs of chosen and rejected responses, and the chosen/rejected target counts."""
    device = next(model.parameters()).device
    tokens, targets, _ = pad([p.chosen for p in pairs] + [p.rejected for p in pairs], device)
    with precision(cfg.model, device):
        # The output layer runs only where there are targets: prompts and padding are most of each row, and full
        # logits over the vocabulary at every position would cost more than the transformer.
        hidden = model(tokens, return_hidden=True)
        logits = model.output(hidden[targets != IGNORE_INDEX])
    logps, counts = sequence_logps(logits, targets)
    n = len(pairs)
    return logps[:n], logps[n:], counts[:n], counts[n:]


@torch.no_grad()
def reference_logps(model: Transformer, pairs: list[Pair], cfg: DPOJobConfig, cache: Path) -> list[list[float]]:
    """[chosen, rejected] of each pair under the starting weights; the cache file, keyed by pair digest, supplies
    those it already holds and keeps the rest."""
    digests = [pair_digest(p) for p in pairs]
    cached: dict[str, list[float]] = torch.load(cache) if cache.is_file() else {}
    missing = [(p, d) for p, d in zip(pairs, digests, strict=True) if d not in cached]
    if missing:
        was_training = model.training
        model.eval()
        for start in range(0, len(missing), cfg.optim.micro_batch_size):
            group = missing[start : start + cfg.optim.micro_batch_size]
            chosen, rejected, _, _ = pair_logps(model, [p for p, _ in group], cfg)
            for (_, d), c, r in zip(group, chosen.tolist(), rejected.tolist(), strict=True):
                cached[d] = [c, r]
        model.train(was_training)
        with atomic_file(cache, "wb") as f:
            torch.save(cached, f)
    return [cached[d] for d in digests]


def pair_digest(p: Pair) -> str:
    """Identifies a pair's tokens and targets, so a cache built from other data or another tokenizer never
    matches."""
    h = hashlib.sha256()
    for side in (p.chosen, p.rejected):
        h.update(json.dumps([side.ids, side.targets]).encode())
    return h.hexdigest()


def run_dpo(cfg: DPOJobConfig) -> dict[str, Any]:
    check(cfg)
    run_dir = Path(cfg.job.dump_folder)
    model, tokenizer = load_start(cfg.model, seed=cfg.job.seed)
    data = load_pairs(cfg.data.train, tokenizer, on_error=cfg.data.on_error, max_seq_len=cfg.data.max_seq_len,
                      eval_fraction=cfg.data.eval_fraction, seed=cfg.job.seed, content_only=True,
                      use_edited=False)  # fmt: skip
    write_config(run_dir, cfg)
    # The starting weights are the reference: with LoRA its adapters start at zero, so this is the base model.
    all_pairs = data.train + data.held_out
    ref_values = reference_logps(model, all_pairs, cfg, run_dir / "reference_logps.pt")
    ref = {id(p): r for p, r in zip(all_pairs, ref_values, strict=True)}  # looked up per step without re-hashing
    d = cfg.dpo

    def loss_on(pairs: list[Pair]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen, rejected, n_chosen, _ = pair_logps(model, pairs, cfg)
        refs = torch.tensor([ref[id(p)] for p in pairs])
        return dpo_loss(chosen, rejected, refs[:, 0], refs[:, 1], beta=d.beta,
                        chosen_nll=-chosen / n_chosen.clamp(min=1), nll_coef=d.nll_coef)  # fmt: skip

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        if not data.held_out:
            return {}
        was_training = model.training
        model.eval()
        total: dict[str, float] = {}
        for start in range(0, len(data.held_out), cfg.optim.micro_batch_size):
            group = data.held_out[start : start + cfg.optim.micro_batch_size]
            loss, metrics = loss_on(group)
            for k, v in {"loss": loss, **metrics}.items():
                total[f"eval_{k}"] = total.get(f"eval_{k}", 0.0) + float(v) * len(group) / len(data.held_out)
        model.train(was_training)
        return total

    before = evaluate()
    steps = total_steps(cfg.optim, len(data.train))

    def micro_batches():
        return pair_batches(data.train, cfg.optim.micro_batch_size, seed=cfg.job.seed)

    def loss_fn(pairs: list[Pair], accumulation: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = loss_on(pairs)
        return loss / accumulation, {"loss": float(loss.detach()), **{k: float(v) for k, v in metrics.items()}}

    records = optimize(list(model.parameters()), cfg.optim, steps=steps, micro_batches=micro_batches, loss_fn=loss_fn,
                       run_dir=run_dir, name="dpo")  # fmt: skip
    after = evaluate()
    out = export(model, tokenizer, run_dir / "model", dtype=cfg.model.export_dtype)
    summary = {"train_pairs": len(data.train), "held_out_pairs": len(data.held_out),
               "skipped_lines": len(data.problems), "problems": data.problems[:20], "too_long": data.too_long,
               "steps": steps, "final_loss": records[-1]["loss"], "held_out_before": before, "held_out_after": after,
               "model": str(out)}  # fmt: skip
    write_json(run_dir / "summary.json", summary)
    return summary
