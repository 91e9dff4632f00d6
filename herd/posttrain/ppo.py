"""PPO for language models (Ziegler et al. 2019, InstructGPT / Ouyang et al. 2022), single process.

Each step samples a response per prompt with the inference Engine, scores it with a reward function, and turns the
score into per-token rewards: -kl_coef x (log pi - log pi_ref) on every response token, plus the score on the last
one. GAE over the response tokens gives advantages and returns, and a few epochs of the clipped policy and value
losses update the policy and a value head on its final hidden states.

Token-level tensors are aligned with next-token targets: position t of a (B, T) tensor is about `targets[:, t]`,
the token predicted from `inputs[:, : t + 1]`; `mask` is True on the response tokens.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from herd.errors import TrainError
from herd.inference import Completion, Engine, SamplingParams
from herd.model import Transformer
from herd.posttrain.config import PPOJobConfig, PPOSection, check
from herd.tokenizer import Tokenizer

# ---------------------------------------------------------------------------------------------
# Losses and advantages, on tensors


def token_logps(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> torch.Tensor:
    """Log-probability (B, T) of each token under the logits at the same position (shift before calling)."""
    logits_BTV = logits_BTV.float()
    picked = logits_BTV.gather(-1, tokens_BT.unsqueeze(-1)).squeeze(-1)
    return picked - logits_BTV.logsumexp(dim=-1)


def kl_penalized_rewards(
    scores_B: torch.Tensor, logps_BT: torch.Tensor, ref_logps_BT: torch.Tensor, mask_BT: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards: -kl_coef x (logp - ref_logp) on response tokens, plus each row's score on its last one."""
    mask = mask_BT.float()
    rewards = -kl_coef * (logps_BT - ref_logps_BT) * mask
    T = mask.shape[1]
    last = (mask * torch.arange(1, T + 1, device=mask.device)).argmax(dim=1)
    # A row without response tokens has no action to credit, so its score is dropped.
    score = scores_B.to(rewards.dtype) * mask.any(dim=1)
    return rewards.scatter_add(1, last[:, None], score[:, None])


def gae(
    rewards_BT: torch.Tensor, values_BT: torch.Tensor, mask_BT: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over the response tokens: (advantages, returns).

    The episode ends after a row's last response token (V = 0 beyond it). Positions outside the mask are skipped,
    not treated as steps: the next response token's value bootstraps across them. Both outputs are 0 there.
    """
    mask = mask_BT.bool()
    advantages = torch.zeros_like(values_BT)
    next_value = torch.zeros_like(values_BT[:, 0])
    next_advantage = torch.zeros_like(values_BT[:, 0])
    for t in reversed(range(values_BT.shape[1])):
        delta = rewards_BT[:, t] + gamma * next_value - values_BT[:, t]
        advantage = delta + gamma * lam * next_advantage
        m = mask[:, t]
        next_value = torch.where(m, values_BT[:, t], next_value)
        next_advantage = torch.where(m, advantage, next_advantage)
        advantages[:, t] = advantage * m
    return advantages, (advantages + values_BT) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked elements; 0 elsewhere."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def ppo_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float,
    value_clip: float,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate policy loss and clipped value loss (masked means over tokens), and their statistics.

    Advantages are whitened over the mask. The value loss is 0.5 x max((V - R)^2, (V_clipped - R)^2) with V kept
    within value_clip of the value at sampling time. Stats: clipfrac (share of tokens where the ratio clip is
    active) and approx_kl, 0.5 x mean (log ratio)^2, an estimate of KL(pi_old || pi).
    """
    advantages = whiten(advantages, mask)
    log_ratio = logps - old_logps
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_ratio, 1 + clip_ratio)
    policy_loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    values_clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    value_loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2), mask)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask).detach(),
        "approx_kl": 0.5 * masked_mean(log_ratio.detach() ** 2, mask),
    }
    return policy_loss, value_loss, stats


# ---------------------------------------------------------------------------------------------
# Policy with a value head


class PolicyWithValue(nn.Module):
    """A Transformer plus a scalar value head on its final (normed) hidden states, sharing one trunk."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        # float32 whatever the trunk's dtype; zero init so the first values do not add noise to the advantages.
        self.value_head = nn.Linear(model.args.dim, 1, device=model.tok_embeddings.weight.device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, tokens_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) in float32, as the model alone gives, and values (B, T) from one trunk pass."""
        h_BTD = self.model(tokens_BT, return_hidden=True)
        return self.model.output(h_BTD).float(), self.value_head(h_BTD.float()).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Training loop


def _prompt_order(n: int, seed: int) -> Iterator[int]:
    """Prompt indices forever: a fresh seeded permutation per pass."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from order


def _response_batch(completions: list[Completion], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Right-padded prompt + response rows as (inputs, targets, mask) for next-token prediction.

    A response that ended on a stop token keeps that token: stopping was one of the policy's actions, and the
    score then lands on it. A response cut at the length limit (or by a stop string, whose tokens are all in
    `tokens`) ends on its last generated token.
    """
    rows, spans = [], []
    for c in completions:
        stop = [c.stop_reason] if c.finish_reason == "stop" and isinstance(c.stop_reason, int) else []
        rows.append(c.prompt_tokens + c.tokens + stop)
        spans.append((len(c.prompt_tokens), len(rows[-1])))
    L = max(len(r) for r in rows)
    seq = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), L - 1, dtype=torch.bool)
    for i, (row, (start, end)) in enumerate(zip(rows, spans, strict=True)):
        seq[i, : len(row)] = torch.tensor(row)
        mask[i, start - 1 : end - 1] = True  # target t is token t + 1
    # Right padding needs no attention mask: causal attention keeps real tokens from seeing it.
    return seq[:, :-1].to(device), seq[:, 1:].to(device), mask.to(device)


def ppo_train(
    policy: PolicyWithValue,
    reference: Transformer,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    reward_fn: Callable[[int, str], float],
    cfg: PPOSection,
    *,
    lr: float,
    seed: int,
    log: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train `policy` in place with PPO; return the stats of each step.

    `reward_fn(prompt_index, response_text)` scores a response (the index lets verifiable rewards look up the
    item). Only parameters with requires_grad are optimized, so a LoRA-wrapped model trains its adapters only.
    Stats per step: score (mean), kl (mean per response of the summed log pi - log pi_ref), policy_loss,
    value_loss, clipfrac and approx_kl (means over the epochs), response_len (mean, stop token included).
    """
    if not prompts:
        raise TrainError("ppo: no prompts")
    device = policy.model.tok_embeddings.weight.device
    engine = Engine(policy.model, tokenizer, max_batch_size=cfg.prompts_per_step)
    reference.eval()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    order = _prompt_order(len(prompts), seed)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    history = []
    for step in range(cfg.steps):
        indices = list(itertools.islice(order, cfg.prompts_per_step))
        rng = random.Random(f"{seed}:{step}")
        params = [
            SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=rng.getrandbits(62))
            for _ in indices
        ]
        completions = engine.generate([prompts[i] for i in indices], params)
        scores = torch.tensor([float(reward_fn(i, c.text)) for i, c in zip(indices, completions, strict=True)],
                              device=device)  # fmt: skip
        inputs, targets, mask = _response_batch(completions, pad_id, device)

        # Recomputed rather than taken from the Engine, so that the ratio is exactly 1 at the first epoch (the
        # KV-cache path rounds differently from a full forward).
        with torch.no_grad():
            logits, old_values = policy(inputs)
            old_logps = token_logps(logits / cfg.temperature, targets)
            ref_logps = token_logps(reference(inputs) / cfg.temperature, targets)
            rewards = kl_penalized_rewards(scores, old_logps, ref_logps, mask, cfg.kl_coef)
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)

        totals = {"policy_loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0, "approx_kl": 0.0}
        for _ in range(cfg.ppo_epochs):
            logits, values = policy(inputs)
            logps = token_logps(logits / cfg.temperature, targets)
            policy_loss, value_loss, stats = ppo_losses(logps, old_logps, advantages, values, old_values, returns,
                                                        mask, cfg.clip_ratio, cfg.value_clip)  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            (policy_loss + cfg.value_coef * value_loss).backward()
            optimizer.step()
            for name, value in (("policy_loss", policy_loss), ("value_loss", value_loss), *stats.items()):
                totals[name] += value.item() / cfg.ppo_epochs

        record = {
            "step": step + 1,
            "score": float(scores.mean()),
            "kl": float(((old_logps - ref_logps) * mask).sum(dim=1).mean()),
            **totals,
            "response_len": float(mask.sum(dim=1).float().mean()),
        }
        history.append(record)
        if log is not None:
            log(record)
    return history


def run_ppo(cfg: PPOJobConfig) -> dict[str, Any]:
    """`herd ppo`: the policy starts from model.init_from (LoRA optional), the reference is a frozen copy of the
    same weights, rewards come from a reward model or each prompt's verifiable checker; the policy is exported
    without its value head."""
    from herd.formats.load import load_pretrained
    from herd.posttrain.data import encode_prompt, read_prompts
    from herd.posttrain.rejection import checker_scorer, reward_model_scorer
    from herd.posttrain.stage import export, load_start, write_config, write_json

    check(cfg)
    run_dir = Path(cfg.job.dump_folder)
    records, problems = read_prompts(cfg.data.train, on_error=cfg.data.on_error)
    scorer = reward_model_scorer(cfg.ppo.reward_model) if cfg.ppo.reward_model else checker_scorer()
    model, tokenizer = load_start(cfg.model, seed=cfg.job.seed)
    reference = load_pretrained(cfg.model.init_from or None).model.eval().requires_grad_(False)
    write_config(run_dir, cfg)
    torch.manual_seed(cfg.job.seed)
    policy = PolicyWithValue(model)
    prompts = [encode_prompt(tokenizer, r["messages"]) for r in records]
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as log:

        def show(record: dict[str, Any]) -> None:
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(f"[ppo] step {record['step']}/{cfg.ppo.steps}  score {record['score']:.3f}  kl {record['kl']:.3f}  "
                  f"policy_loss {record['policy_loss']:.4f}", flush=True)  # fmt: skip

        history = ppo_train(policy, reference, tokenizer, prompts,
                            lambda i, text: scorer([records[i]], [text])[0], cfg.ppo, lr=cfg.optim.lr,
                            seed=cfg.job.seed, log=show)  # fmt: skip
    out = export(model, tokenizer, run_dir / "model", dtype=cfg.model.export_dtype)
    summary = {"prompts": len(records), "skipped_lines": len(problems), "problems": problems[:20],
               "steps": len(history), "score_first": history[0]["score"], "score_last": history[-1]["score"],
               "model": str(out)}  # fmt: skip
    write_json(run_dir / "summary.json", summary)
    return summary
