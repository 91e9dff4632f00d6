"""`herd rm`: a reward model, the transformer with a scalar head, trained on preference pairs in the one Trainer.

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

from herd.config import JobConfig
from herd.errors import HerdError
from herd.formats import load_pretrained
from herd.model import Transformer
from herd.posttrain.data import format_problems
from herd.posttrain.losses import reward_loss
from herd.posttrain.preference import Pair, PairObjective, encode_response, load_pairs, pad
from herd.posttrain.stage import export_model, held_out_before, load_start, write_json
from herd.tokenizer import Tokenizer
from herd.train.trainer import Trainer

HEAD_FILE = "reward_head.safetensors"


class RewardModel(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        self.head = nn.Linear(model.args.dim, 1, device=model.tok_embeddings.weight.device)
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


def save_head(directory: Path, weight: torch.Tensor, bias: torch.Tensor) -> None:
    save_file({"weight": weight.detach().float().contiguous(), "bias": bias.detach().float().contiguous()},
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


def pair_scores(rm: nn.Module, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Scores of chosen, rejected and (where every pair has one) edited responses, in one forward."""
    with_edit = all(p.edited is not None for p in pairs)
    sides = [p.chosen for p in pairs] + [p.rejected for p in pairs] + ([p.edited for p in pairs] if with_edit else [])
    tokens, _, last = pad(sides, next(rm.parameters()).device)  # type: ignore[arg-type]
    scores = rm(tokens, last)
    n = len(pairs)
    return scores[:n], scores[n : 2 * n], scores[2 * n :] if with_edit else None


class RewardModeling(PairObjective):
    """Bradley-Terry on preference pairs."""

    name = "rm"

    def wrap(self, transformer: Transformer) -> nn.Module:
        return RewardModel(transformer)

    def loss(self, module: nn.Module, pairs: list[Pair]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Pairs with and without an edit go through separately so every forward has one shape of pair.
        device = next(module.parameters()).device
        total, right = torch.zeros((), device=device), torch.zeros((), device=device)
        for group in ([p for p in pairs if p.edited is not None], [p for p in pairs if p.edited is None]):
            if group:
                chosen, rejected, edit = pair_scores(module, group)
                total = total + reward_loss(chosen, rejected, edit) * len(group)
                right = right + (chosen > rejected).sum()
        return total, {"accuracy": right}

    @torch.no_grad()
    def pairwise_accuracy(self, module: nn.Module) -> float:
        """Share of held-out pairs whose chosen response scores above the rejected one."""
        pairs = self.data.held_out
        if not pairs:
            return float("nan")
        was_training = module.training
        module.eval()
        right, size = 0, self.micro
        device = next(module.parameters()).device
        for start in range(0, len(pairs), size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.cfg.model.dtype == "bfloat16"):
                chosen, rejected, _ = pair_scores(module, pairs[start : start + size])
            right += int((chosen > rejected).sum())
        module.train(was_training)
        return right / len(pairs)


def run_rm(cfg: JobConfig) -> dict[str, Any]:
    start = load_start(cfg)
    tokenizer = start.tokenizer
    data = load_pairs(cfg.data.files, tokenizer, on_error=cfg.data.on_error, max_seq_len=cfg.training.seq_len,
                      eval_fraction=cfg.data.eval_fraction, seed=cfg.job.seed, content_only=False,
                      use_edited=cfg.rm.margin_edited)  # fmt: skip
    objective = RewardModeling(cfg, data, tokenizer)
    trainer = Trainer(cfg, objective, command="rm", initial=start.model)
    del start  # the Trainer copied the weights; a second copy held through training is memory wasted
    before = held_out_before(trainer, lambda: objective.pairwise_accuracy(trainer.model))
    result = trainer.train()
    after = objective.pairwise_accuracy(trainer.model)

    def head(tmp: Path, weights: dict[str, torch.Tensor]) -> None:
        save_head(tmp, weights["head.weight"], weights["head.bias"])

    out = export_model(trainer, tokenizer, trainer.run_dir / "model", dtype=cfg.model.export_dtype,
                       prefix="model.", assets=head)  # fmt: skip
    summary = {"train_pairs": len(data.train), "held_out_pairs": len(data.held_out),
               "skipped_lines": len(data.problems), "problems": data.problems[:20], "too_long": data.too_long,
               "steps": result["steps"], "final_loss": result["final_loss"], "held_out_accuracy_before": before,
               "held_out_accuracy_after": after, "model": str(out), "seconds": result["seconds"]}  # fmt: skip
    if trainer.rank == 0:
        write_json(trainer.run_dir / "summary.json", summary)
    trainer.shutdown()
    return summary


def format_summary(s: dict[str, Any]) -> str:
    return "\n".join([*format_problems(s["problems"]), (
        f"done: {s['steps']} steps on {s['train_pairs']} pairs; held-out pairwise accuracy "
        f"{s['held_out_accuracy_before']:.3f} -> {s['held_out_accuracy_after']:.3f} ({s['held_out_pairs']} pairs); "
        f"model {s['model']}")])  # fmt: skip
