"""Speculative decoding: cheap drafts of the next few tokens, checked by one forward of the target model.

A drafter proposes k tokens after the accepted context. The target runs once over [last accepted token,
d_1..d_k] (T = k+1), which gives its distribution at each of the k+1 positions, and `verify` keeps the
longest acceptable prefix of the drafts plus one token from the target: between 1 and k+1 tokens per
target forward instead of one.

- Greedy (temperature 0): a draft is kept while it equals the target's argmax, so the output is the
  target's own greedy output.
- Sampling: the speculative sampling rule (Leviathan et al. 2023, Chen et al. 2023). Draft x, drawn from
  the drafter's distribution q, is kept with probability min(1, p(x)/q(x)), where p is the target's
  distribution after penalty, temperature, top-k and top-p; on the first rejection the token is drawn from
  normalize(max(0, p - q)); when all k are kept a bonus token is drawn from p. Every emitted token then
  follows p exactly, whatever q is; a good q only makes acceptance likelier.

Two drafters: prompt lookup (copy what followed the latest earlier occurrence of the last n tokens; no
extra model, q is a point mass) and a small draft model with the same vocabulary and its own KV cache.

Shape legend: J = k+1 verified positions, K = k drafts, V = vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from herd.errors import InferenceError
from herd.inference.decode_model import GenerationModel, model_device
from herd.inference.sampling import SamplingParams, penalized_logits, token_probs
from herd.model import causal_mask


@dataclass(kw_only=True, slots=True)
class SpeculativeConfig:
    method: Literal["prompt_lookup", "draft"]
    """"prompt_lookup": copy n-gram continuations from the prompt and output; "draft": ask draft_model."""
    num_draft_tokens: int = 4
    """Tokens proposed per target forward (k); fewer near the end of the context or of max_new_tokens."""
    max_ngram: int = 3
    """prompt_lookup: longest suffix to look up; shorter ones down to 1 token are tried when it is not found."""
    draft_model: GenerationModel | None = None
    """draft: a smaller model with the target's vocabulary. It needs its own KV cache, so not the target itself."""

    def __post_init__(self) -> None:
        if self.method not in ("prompt_lookup", "draft"):
            raise InferenceError(f"speculative method must be 'prompt_lookup' or 'draft', got {self.method!r}")
        if self.num_draft_tokens < 1:
            raise InferenceError(f"speculative num_draft_tokens must be >= 1, got {self.num_draft_tokens}")
        if self.max_ngram < 1:
            raise InferenceError(f"speculative max_ngram must be >= 1, got {self.max_ngram}")
        if self.method == "draft" and self.draft_model is None:
            raise InferenceError("speculative method 'draft' needs a draft_model")
        if self.method != "draft" and self.draft_model is not None:
            raise InferenceError(f"speculative draft_model is only used with method 'draft', not {self.method!r}")


@dataclass
class SpeculativeStats:
    """Counts over one `Engine.stream` / `generate` call, for benchmarks."""

    drafted: int = 0
    """Draft tokens the target checked."""
    accepted: int = 0
    """Of those, the ones it kept."""
    forwards: int = 0
    """Target decode forwards (prefill excluded)."""
    tokens: int = 0
    """Tokens those forwards produced (the first token, which comes from the prefill, excluded)."""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / self.forwards if self.forwards else 0.0


@dataclass
class Draft:
    tokens: list[int]
    probs_KV: torch.Tensor | None = None
    """The distribution each draft was drawn from; None means a point mass on the token (greedy drafts)."""


def forward_span(model: GenerationModel, tokens: list[int], pos: int) -> torch.Tensor:
    """Logits (T, V) of one sequence's tokens written at cache slots pos..pos+T-1, seeing every slot before.

    Positions and mask are explicit so any model with the herd call interface computes the same thing.
    """
    device = model_device(model)
    T = len(tokens)
    tokens_BT = torch.tensor([tokens], dtype=torch.long, device=device)
    positions_BT = torch.arange(pos, pos + T, device=device)[None]
    mask = causal_mask(T, pos + T, pos, device=device)[None, None]
    return model(tokens_BT, positions_BT=positions_BT, mask=mask, cache_pos=pos)[0]


class Drafter(Protocol):
    def start(self, total: int) -> None:
        """A new sequence begins; at most `total` cache slots will be used."""

    def propose(self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | None) -> Draft:
        """Up to k tokens to follow `context` (prompt and accepted output); fewer, or none, is allowed."""

    def finish(self) -> None:
        """The sequence is over (also after an error)."""


class PromptLookupDrafter:
    """Copy the tokens that followed the latest earlier occurrence of the context's last n tokens.

    Useful where output repeats its input: summaries, edits of code, quoted passages, structured data.
    An index from each n-gram to its latest position grows with the context, so a lookup is O(1).
    """

    def __init__(self, max_ngram: int) -> None:
        self.max_ngram = max_ngram
        self._latest: dict[tuple[int, ...], int] = {}
        self._indexed = 0

    def start(self, total: int) -> None:
        self._latest, self._indexed = {}, 0

    def propose(self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | None) -> Draft:
        # Index every n-gram that now has a follower: the one ending just before position t.
        for t in range(max(self._indexed, 1), len(context)):
            for n in range(1, min(self.max_ngram, t) + 1):
                self._latest[tuple(context[t - n : t])] = t - n
        self._indexed = len(context)
        for n in range(min(self.max_ngram, len(context) - 1), 0, -1):
            start = self._latest.get(tuple(context[-n:]))
            if start is None:
                continue
            # Copy from the match onward. When the copy runs into the context's end it continues with the
            # drafts themselves, which repeats the period: "a b a b" drafts "a b a b ...", not just "a".
            extended = list(context)
            for j in range(k):
                extended.append(extended[start + n + j])
            return Draft(extended[len(context) :])
        return Draft([])

    def finish(self) -> None:
        self._latest = {}


class DraftModelDrafter:
    """A small model drafts greedily (temperature 0) or by sampling from its own distribution with the same
    settings. Its cache slots past the accepted context are simply written over in the next round."""

    def __init__(self, model: GenerationModel) -> None:
        self.model = model.eval()
        self._stable = 0  # context length at the last proposal: its slots stay valid
        self._tail: list[int] = []  # drafts written after those slots

    def start(self, total: int) -> None:
        if total > self.model.args.max_seq_len:
            raise InferenceError(
                f"the draft model's context ({self.model.args.max_seq_len}) is shorter than this generation "
                f"needs ({total} tokens); use a draft model with max_seq_len >= {total} or fewer max_new_tokens"
            )
        self.model.setup_caches(1, total)
        self._stable, self._tail = 0, []

    def propose(self, context: list[int], k: int, params: SamplingParams, generator: torch.Generator | None) -> Draft:
        model = self.model
        # Reuse the slots whose tokens are still in the context (the accepted drafts); at least the last
        # token is fed again, for the logits that predict the first draft.
        keep = self._stable
        for token in self._tail:
            if keep >= len(context) - 1 or context[keep] != token:
                break
            keep += 1
        logits_V = forward_span(model, context[keep:], keep)[-1]
        seen_V = None
        if params.repetition_penalty != 1.0:
            seen_V = torch.zeros(model.args.vocab_size, dtype=torch.bool, device=logits_V.device)
            seen_V[torch.tensor(context, device=logits_V.device)] = True
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        for j in range(k):
            if params.temperature == 0:
                token = int(penalized_logits(logits_V, params, seen_V).argmax())
            else:
                probs.append(token_probs(logits_V, params, seen_V))
                token = int(torch.multinomial(probs[-1], 1, generator=generator))
            tokens.append(token)
            if seen_V is not None:
                seen_V[token] = True
            if j + 1 < k:  # the last draft is not fed: its logits are not needed
                logits_V = forward_span(model, [token], len(context) + j)[-1]
        self._stable, self._tail = len(context), tokens[:-1]
        return Draft(tokens, torch.stack(probs) if probs else None)

    def finish(self) -> None:
        self.model.clear_caches()


def make_drafter(config: SpeculativeConfig) -> Drafter:
    if config.method == "draft":
        assert config.draft_model is not None  # checked in SpeculativeConfig.__post_init__
        return DraftModelDrafter(config.draft_model)
    return PromptLookupDrafter(config.max_ngram)


def verify(
    logits_JV: torch.Tensor,
    draft: Draft,
    params: SamplingParams,
    generator: torch.Generator | None,
    seen_V: torch.Tensor | None,
) -> list[int]:
    """The tokens to append: the accepted drafts, then one token from the target.

    logits_JV: the target's logits over [last accepted token, *draft.tokens]; row j predicts the token after
    the first j drafts. seen_V: tokens already in the prompt and output, for the repetition penalty; row j
    also counts the first j drafts as seen, since it is only used when they were accepted.
    """
    drafts = draft.tokens
    k = len(drafts)
    seen_JV = None
    if seen_V is not None:
        seen_JV = seen_V.expand(k + 1, -1).clone()
        for j, token in enumerate(drafts):
            seen_JV[j + 1 :, token] = True
    if params.temperature == 0:
        choice = penalized_logits(logits_JV, params, seen_JV).argmax(dim=-1).tolist()
        n = 0
        while n < k and drafts[n] == choice[n]:
            n += 1
        return [*drafts[:n], choice[n]]

    p_JV = token_probs(logits_JV, params, seen_JV)
    q_KV = None if draft.probs_KV is None else draft.probs_KV.to(p_JV.device)
    n = 0
    if k:
        d_K1 = torch.tensor(drafts, device=p_JV.device)[:, None]
        p_K = p_JV[:k].gather(1, d_K1)[:, 0]
        q_K = torch.ones_like(p_K) if q_KV is None else q_KV.gather(1, d_K1)[:, 0]
        # Accept draft j with probability min(1, p/q): u < p/q for u uniform in [0, 1).
        u_K = torch.rand(k, generator=generator)
        rejected = (u_K >= (p_K / q_K).cpu()).nonzero()
        n = int(rejected[0]) if len(rejected) else k
    if n == k:
        weights_V = p_JV[k]
    else:
        if q_KV is None:  # point mass: max(0, p - q) is p without the rejected token
            weights_V = p_JV[n].clone()
            weights_V[drafts[n]] = 0
        else:
            weights_V = (p_JV[n] - q_KV[n]).clamp(min=0)
        if not float(weights_V.sum()) > 0:
            # Rejection with p <= q everywhere happens only when p == q up to rounding; then p is the answer.
            weights_V = p_JV[n]
    return [*drafts[:n], int(torch.multinomial(weights_V, 1, generator=generator))]
