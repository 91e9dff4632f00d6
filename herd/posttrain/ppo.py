"""PPO for language models (Ziegler et al. 2019, InstructGPT / Ouyang et al. 2022), as an objective of the one
Trainer (single process: rollouts decode on the inference engine over the live weights).

Every `ppo.epochs` optimizer steps, the objective samples one response per prompt for `training.batch_size`
prompts with the Engine, scores each with a reward function, and turns the score into per-token rewards:
-kl_coef x (log pi - log pi_ref) on every response token, plus the score on the last one. GAE over the response
tokens gives advantages (whitened over the batch) and returns; each optimizer step is then the clipped policy
loss plus value_coef x the clipped value loss on that batch, as means over its response tokens. The value head
sits on the policy's final hidden states.

Token-level tensors are aligned with next-token targets: position t of a (B, T) tensor is about `targets[:, t]`,
the token predicted from `inputs[:, : t + 1]`; `mask` is True on the response tokens.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from herd.config import JobConfig
from herd.errors import TrainError
from herd.inference import Completion, Engine, SamplingParams
from herd.model import Transformer
from herd.posttrain.data import format_problems
from herd.posttrain.stage import export_model, load_start, run_tokenizer, write_json
from herd.tokenizer import Tokenizer
from herd.train.objective import Objective
from herd.train.schedule import StepPlan
from herd.train.trainer import Trainer

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


def ppo_loss_sums(
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
    """Clipped surrogate policy loss and clipped value loss, summed over the masked tokens, and the sums of their
    statistics; divided by the batch's response tokens they are the usual means.

    `advantages` are whitened already (over the whole batch). The value loss is 0.5 x max((V - R)^2,
    (V_clipped - R)^2) with V kept within value_clip of the value at sampling time. Stats: clipfrac (tokens where
    the ratio clip is active) and approx_kl, 0.5 x (log ratio)^2, an estimate of KL(pi_old || pi).
    """
    m = mask.to(logps.dtype)
    log_ratio = logps - old_logps
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_ratio, 1 + clip_ratio)
    policy = (torch.maximum(unclipped, clipped) * m).sum()
    values_clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    value = 0.5 * (torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2) * m).sum()
    stats = {"clipfrac": ((clipped > unclipped).to(m.dtype) * m).sum().detach(),
             "approx_kl": 0.5 * (log_ratio.detach() ** 2 * m).sum()}  # fmt: skip
    return policy, value, stats


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
# Rollouts


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


@dataclass(slots=True)
class Rollout:
    """One batch of sampled responses with everything the updates on it need (fixed while they run)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    old_logps: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    """Whitened over the batch's response tokens."""
    returns: torch.Tensor
    stats: dict[str, float]
    """score (mean), kl (mean per response of the summed log pi - log pi_ref), response_len (stop token included)."""


@dataclass(slots=True)
class RolloutBatch:
    """A step's view of the current rollout, as the Trainer sees it: the loss is a mean over response tokens."""

    rollout: Rollout
    index: int
    rows: slice = field(default_factory=lambda: slice(None))

    @property
    def count(self) -> int:
        return int(self.rollout.mask.sum())

    @property
    def num_tokens(self) -> int:
        return self.rollout.inputs.numel()

    @property
    def seq_len(self) -> int:
        return self.rollout.inputs.shape[1]

    def shard(self, rank: int, world_size: int) -> RolloutBatch:
        return RolloutBatch(self.rollout, self.index, slice(rank, None, world_size))

    def split(self, size: int) -> list[dict[str, torch.Tensor]]:
        r = self.rollout
        fields = {k: getattr(r, k)[self.rows] for k in ("inputs", "targets", "mask", "old_logps", "old_values",
                                                         "advantages", "returns")}  # fmt: skip
        size = size or len(fields["inputs"])
        return [{k: v[i : i + size] for k, v in fields.items()} for i in range(0, len(fields["inputs"]), size)]


class PPO(Objective):
    """`reward_fn(prompt_index, response_text)` scores a response (the index lets verifiable rewards look up the
    prompt's item). The reference is a frozen copy of the starting weights."""

    name = "ppo"

    def __init__(self, cfg: JobConfig, prompts: list[list[int]], reward_fn: Callable[[int, str], float],
                 tokenizer: Tokenizer, reference: Transformer) -> None:  # fmt: skip
        if not prompts:
            raise TrainError("ppo: no prompts")
        self.cfg, self.p = cfg, cfg.ppo
        self.prompts, self.reward_fn, self.chat_tokenizer = prompts, reward_fn, tokenizer
        self.reference = reference.eval().requires_grad_(False)
        self.vocab_size = tokenizer.vocab_size
        self.tokenizer, self.tokenizer_files = run_tokenizer(tokenizer, Path(cfg.job.dump_folder))
        self.batches = 0
        self.current: Rollout | None = None
        self.policy: PolicyWithValue | None = None

    def wrap(self, transformer: Transformer) -> nn.Module:
        self.policy = PolicyWithValue(transformer)
        return self.policy

    def prepare(self, module: nn.Module) -> None:
        self.reference.to(next(module.parameters()).device)

    def longest(self, cfg: JobConfig) -> int:
        return max(len(p) for p in self.prompts) + self.p.max_new_tokens

    def next_batch(self, plan: StepPlan) -> RolloutBatch:
        if self.current is None or self.batches % self.p.epochs == 0:
            self.current = self.rollout(self.batches // self.p.epochs)
        batch = RolloutBatch(self.current, self.batches)
        self.batches += 1
        return batch

    def split(self, rows: RolloutBatch, plan: StepPlan) -> list[dict[str, torch.Tensor]]:
        return rows.split(self.cfg.training.micro_batch_size)

    def loss(self, module: nn.Module, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, values = module(micro["inputs"])
        logps = token_logps(logits / self.p.temperature, micro["targets"])
        policy, value, stats = ppo_loss_sums(logps, micro["old_logps"], micro["advantages"], values,
                                             micro["old_values"], micro["returns"], micro["mask"], self.p.clip_ratio,
                                             self.p.value_clip)  # fmt: skip
        return policy + self.p.value_coef * value, {"policy_loss": policy.detach(), "value_loss": value.detach(),
                                                    **stats}  # fmt: skip

    def record(self) -> dict[str, float]:
        return dict(self.current.stats) if self.current is not None else {}

    @torch.no_grad()
    def rollout(self, k: int) -> Rollout:
        """The k-th batch of samples: prompts in a seeded order (a new permutation every pass), one response each,
        seeded per row, so a resumed run samples exactly what an uninterrupted one would."""
        assert self.policy is not None
        indices = self._prompt_indices(k)
        rng = random.Random(f"{self.cfg.job.seed}:{k}")
        params = [SamplingParams(max_new_tokens=self.p.max_new_tokens, temperature=self.p.temperature,
                                 seed=rng.getrandbits(62)) for _ in indices]  # fmt: skip
        engine = Engine(self.policy.model, self.chat_tokenizer, max_batch_size=len(indices))
        completions = engine.generate([self.prompts[i] for i in indices], params)
        device = next(self.policy.parameters()).device
        scores = torch.tensor([float(self.reward_fn(i, c.text)) for i, c in zip(indices, completions, strict=True)],
                              device=device)  # fmt: skip
        tok = self.chat_tokenizer
        inputs, targets, mask = _response_batch(completions, tok.pad_id if tok.pad_id is not None else tok.eos_id,
                                                device)  # fmt: skip
        # Recomputed rather than taken from the Engine, so that the ratio is exactly 1 at the first update (the
        # KV-cache path rounds differently from a full forward).
        bf16 = self.cfg.model.dtype == "bfloat16"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits, old_values = self.policy(inputs)
            ref_logits = self.reference(inputs)
        old_logps = token_logps(logits / self.p.temperature, targets)
        ref_logps = token_logps(ref_logits / self.p.temperature, targets)
        rewards = kl_penalized_rewards(scores, old_logps, ref_logps, mask, self.p.kl_coef)
        advantages, returns = gae(rewards, old_values, mask, self.p.gamma, self.p.lam)
        stats = {"score": float(scores.mean()), "kl": float(((old_logps - ref_logps) * mask).sum(dim=1).mean()),
                 "response_len": float(mask.sum(dim=1).float().mean())}  # fmt: skip
        return Rollout(inputs, targets, mask, old_logps, old_values, whiten(advantages, mask), returns, stats)

    def _prompt_indices(self, k: int) -> list[int]:
        """Positions k x B .. (k + 1) x B of the prompt stream: a seeded shuffle of every prompt, pass after pass."""
        size, n = self.cfg.training.batch_size, len(self.prompts)
        rng = random.Random(self.cfg.job.seed)
        order: list[int] = []
        while len(order) < (k + 1) * size:
            passes = list(range(n))
            rng.shuffle(passes)
            order += passes
        return order[k * size : (k + 1) * size]

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "prompts": len(self.prompts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["prompts"] != len(self.prompts):
            raise TrainError(f"the checkpoint was trained on {state['prompts']} prompts; these files hold "
                             f"{len(self.prompts)}")  # fmt: skip
        # Checkpoints fall between batches of samples (checkpoint.interval is a multiple of ppo.epochs): the next
        # step samples afresh from the restored weights.
        self.batches, self.current = state["batches"], None


def run_ppo(cfg: JobConfig) -> dict[str, Any]:
    """`herd ppo`: the policy starts from model.init_from (LoRA optional), the reference is a frozen copy of the
    same weights, rewards come from a reward model or each prompt's verifiable checker; the policy is exported
    without its value head."""
    from herd.posttrain.data import encode_prompt, read_prompts
    from herd.posttrain.rejection import checker_scorer, reward_model_scorer

    records, problems = read_prompts(cfg.data.files, on_error=cfg.data.on_error)
    scorer = reward_model_scorer(cfg.ppo.reward_model) if cfg.ppo.reward_model else checker_scorer()
    start = load_start(cfg)
    tokenizer = start.tokenizer
    reference = copy.deepcopy(start.model)
    prompts = [encode_prompt(tokenizer, r["messages"]) for r in records]
    objective = PPO(cfg, prompts, lambda i, text: scorer([records[i]], [text])[0], tokenizer, reference)
    trainer = Trainer(cfg, objective, command="ppo", initial=start.model)
    del start  # the Trainer copied the weights; a second copy held through training is memory wasted
    result = trainer.train()
    out = export_model(trainer, tokenizer, trainer.run_dir / "model", dtype=cfg.model.export_dtype,
                       prefix="model.")  # fmt: skip
    scores = [json.loads(x)["score"] for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = {"prompts": len(records), "skipped_lines": len(problems), "problems": problems[:20],
               "steps": result["steps"], "score_first": scores[0], "score_last": scores[-1], "model": str(out),
               "seconds": result["seconds"]}  # fmt: skip
    write_json(trainer.run_dir / "summary.json", summary)
    trainer.shutdown()
    return summary


def format_summary(s: dict[str, Any]) -> str:
    return "\n".join([*format_problems(s["problems"]), (
        f"done: {s['steps']} steps; mean score {s['score_first']:.3f} (first rollout) -> {s['score_last']:.3f} "
        f"(last); model {s['model']}")])  # fmt: skip
