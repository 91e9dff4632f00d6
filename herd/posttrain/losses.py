"""Post-training losses, on tensors: sequence log-probabilities, the reward model's ranking loss, DPO.

- Reward model (Bradley-Terry, as InstructGPT and Llama 3): -log sigmoid(r_chosen - r_rejected). Llama 3 also
  ranks an edited response above the chosen one: with an edit the loss is the sum of the three pairwise terms of
  edited > chosen > rejected (edited-chosen, edited-rejected, chosen-rejected), each a Bradley-Terry term.
- DPO (Rafailov et al. 2023): -log sigmoid(beta x ((pi_c - ref_c) - (pi_r - ref_r))) on summed log-probabilities of
  the responses, plus, as in Llama 3, an NLL term on the chosen response scaled by `nll_coef` (0.2). The NLL term
  is the chosen response's mean NLL per target token.
Targets outside the loss are IGNORE_INDEX (-100): prompts, and the header and end-of-turn formatting tokens that
Llama 3 masks out of DPO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from herd.data.loader import IGNORE_INDEX


def sequence_logps(logits_NV: torch.Tensor, targets_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `targets_BT`: the summed log-probability of its targets and how many there are. The logits are
    computed only at the target positions: row n of `logits_NV` is the n-th position where `targets_BT` is not
    IGNORE_INDEX, in row-major order (`output(hidden[targets != IGNORE_INDEX])`)."""
    valid = targets_BT != IGNORE_INDEX
    logps = torch.log_softmax(logits_NV.float(), dim=-1)
    picked = logps.gather(-1, targets_BT[valid].unsqueeze(-1)).squeeze(-1)
    rows = valid.nonzero()[:, 0]
    sums = torch.zeros(targets_BT.shape[0], dtype=picked.dtype, device=picked.device).index_add(0, rows, picked)
    return sums, valid.sum(dim=-1)


def reward_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    edited: torch.Tensor | None = None,
    has_edit: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean Bradley-Terry loss over a batch of pairs; rows with an edit (`has_edit`) add the edited > chosen and
    edited > rejected terms."""
    loss = -F.logsigmoid(chosen - rejected)
    if edited is not None:
        extra = -F.logsigmoid(edited - chosen) - F.logsigmoid(edited - rejected)
        mask = torch.ones_like(loss, dtype=torch.bool) if has_edit is None else has_edit.bool()
        loss = loss + torch.where(mask, extra, torch.zeros_like(extra))
    return loss.mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    chosen_nll: torch.Tensor | None = None,
    nll_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean DPO loss (+ nll_coef x mean chosen NLL) and the usual metrics (rewards, margin, accuracy)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    if nll_coef and chosen_nll is not None:
        loss = loss + nll_coef * chosen_nll.mean()
    metrics = {
        "reward_chosen": chosen_reward.detach().mean(),
        "reward_rejected": rejected_reward.detach().mean(),
        "reward_margin": (chosen_reward - rejected_reward).detach().mean(),
        "reward_accuracy": (chosen_reward > rejected_reward).float().mean(),
    }
    return loss, metrics
