"""`herd rm`: a reward model, the transformer with a scalar head, trained on preference pairs.

The score of a dialog is the head applied to the final hidden state of its last token. The loss is
Bradley-Terry on chosen vs rejected, plus edited > chosen > rejected when a pair carries an edited response
(Llama 3, herd/posttrain/losses.py). Pairwise accuracy on the held-out split is measured before and after.

The export is the transformer as an HF checkpoint (LoRA merged) with `reward_head.safetensors` beside it, so the
backbone loads with any Llama loader and `load_reward_model` restores the scorer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from herd.errors import HerdError
from herd.formats.load import load_pretrained
from herd.model import Transformer
from herd.posttrain.config import RewardJobConfig, check
from herd.posttrain.losses import reward_loss
from herd.posttrain.preference import Pair, encode_response, load_pairs, pad, pair_batches
from herd.posttrain.stage import (
    export,
    load_start,
    optimize,
    precision,
    total_steps,
    write_config,
    write_json,
)
from herd.tokenizer import Tokenizer

HEAD_FILE = "reward_head.safetensors"


class RewardModel(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        self.head = nn.Linear(model.args.dim, 1)
        nn.init.normal_(self.head.weight, std=model.args.dim**-0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens_BT: torch.Tensor, last_B: torch.Tensor) -> torch.Tensor:
        """(B,) float32 scores, read at each row's last real token."""
        h_BTD = self.model(tokens_BT, return_hidden=True)
        h_BD = h_BTD[torch.arange(len(last_B), device=h_BTD.device), last_B]
        return self.head(h_BD).squeeze(-1).float()

    @torch.no_grad()
    def score(
        self, tokenizer: Tokenizer, prompts: list[list[dict[str, Any]]], responses: list[str], *, batch_size: int = 8
    ) -> list[float]:
        """Score each (prompt messages, response) rendered as a dialog."""
        was_training = self.training
        self.eval()
        sides = [encode_response(tokenizer, p, r, content_only=False) for p, r in zip(prompts, responses, strict=True)]
        scores: list[float] = []
        device = self.head.weight.device
        for start in range(0, len(sides), batch_size):
            tokens, _, last = pad(sides[start : start + batch_size], device)
            scores += self(tokens, last).tolist()
        self.train(was_training)
        return scores


def save_head(head: nn.Linear, directory: Path) -> None:
    save_file({"weight": head.weight.detach().float().contiguous(), "bias": head.bias.detach().float()},
              str(directory / HEAD_FILE))  # fmt: skip
    (directory / "reward.json").write_text(json.dumps({"kind": "reward_model", "head": HEAD_FILE}) + "\n")  # inside
    # the export's temporary directory, which is renamed into place as a whole


def load_reward_model(path: str | Path) -> tuple[RewardModel, Tokenizer]:
    path = Path(path)
    if not (path / HEAD_FILE).is_file():
        raise HerdError(f"{path}: not a reward model (no {HEAD_FILE}; write one with `herd rm`)")
    pretrained = load_pretrained(str(path))
    rm = RewardModel(pretrained.model)
    tensors = load_file(str(path / HEAD_FILE))
    rm.head.load_state_dict({"weight": tensors["weight"], "bias": tensors["bias"]})
    return rm.eval(), pretrained.tokenizer


def pair_scores(rm: RewardModel, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Scores of chosen, rejected and (where every pair has one) edited responses, in one forward."""
    with_edit = all(p.edited is not None for p in pairs)
    sides = [p.chosen for p in pairs] + [p.rejected for p in pairs] + ([p.edited for p in pairs] if with_edit else [])
    tokens, _, last = pad(sides, rm.head.weight.device)  # type: ignore[arg-type]
    scores = rm(tokens, last)
    n = len(pairs)
    return scores[:n], scores[n : 2 * n], scores[2 * n :] if with_edit else None


@torch.no_grad()
def pairwise_accuracy(rm: RewardModel, pairs: list[Pair], cfg: RewardJobConfig) -> float:
    """Share of pairs whose chosen response scores above the rejected one."""
    if not pairs:
        return float("nan")
    was_training = rm.training
    rm.eval()
    right = 0
    for start in range(0, len(pairs), cfg.optim.micro_batch_size):
        with precision(cfg.model, rm.head.weight.device):
            chosen, rejected, _ = pair_scores(rm, pairs[start : start + cfg.optim.micro_batch_size])
        right += int((chosen > rejected).sum())
    rm.train(was_training)
    return right / len(pairs)


def run_rm(cfg: RewardJobConfig) -> dict[str, Any]:
    check(cfg)
    run_dir = Path(cfg.job.dump_folder)
    model, tokenizer = load_start(cfg.model, seed=cfg.job.seed)
    data = load_pairs(cfg.data.train, tokenizer, on_error=cfg.data.on_error, max_seq_len=cfg.data.max_seq_len,
                      eval_fraction=cfg.data.eval_fraction, seed=cfg.job.seed, content_only=False,
                      use_edited=cfg.rm.margin_edited)  # fmt: skip
    write_config(run_dir, cfg)
    torch.manual_seed(cfg.job.seed)
    rm = RewardModel(model)
    before = pairwise_accuracy(rm, data.held_out, cfg)
    steps = total_steps(cfg.optim, len(data.train))

    def micro_batches():
        return pair_batches(data.train, cfg.optim.micro_batch_size, seed=cfg.job.seed)

    def loss_fn(pairs: list[Pair], accumulation: int) -> tuple[torch.Tensor, dict[str, float]]:
        # Pairs with and without an edit go through separately so every forward has one shape of pair.
        edited = [p for p in pairs if p.edited is not None]
        plain = [p for p in pairs if p.edited is None]
        total, right = torch.zeros(()), 0
        for group in (edited, plain):
            if not group:
                continue
            with precision(cfg.model, rm.head.weight.device):
                chosen, rejected, edit = pair_scores(rm, group)
            total = total + reward_loss(chosen, rejected, edit) * len(group)
            right += int((chosen > rejected).sum())
        loss = total / len(pairs)
        return loss / accumulation, {"loss": float(loss.detach()), "accuracy": right / len(pairs)}

    records = optimize(list(rm.parameters()), cfg.optim, steps=steps, micro_batches=micro_batches, loss_fn=loss_fn,
                       run_dir=run_dir, name="rm")  # fmt: skip
    after = pairwise_accuracy(rm, data.held_out, cfg)
    out = export(rm.model, tokenizer, run_dir / "model", dtype=cfg.model.export_dtype,
                 assets=lambda tmp: save_head(rm.head, tmp))  # fmt: skip
    summary = {"train_pairs": len(data.train), "held_out_pairs": len(data.held_out),
               "skipped_lines": len(data.problems),
               "problems": data.problems[:20], "too_long": data.too_long, "steps": steps,
               "final_loss": records[-1]["loss"], "held_out_accuracy_before": before,
               "held_out_accuracy_after": after, "model": str(out)}  # fmt: skip
    write_json(run_dir / "summary.json", summary)
    return summary
