"""Sampling settings and the logits -> next-token step (greedy, temperature, top-k, top-p, repetition penalty)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from herd.errors import InferenceError


@dataclass(kw_only=True, slots=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 keeps all."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches top_p (nucleus sampling)."""
    repetition_penalty: float = 1.0
    """> 1 discourages tokens already in the prompt or output (CTRL: positive logits divided, negative multiplied)."""
    stop_token_ids: list[int] | None = None
    """Tokens that end generation; None uses the tokenizer's end-of-turn tokens."""
    stop: list[str] = field(default_factory=list)
    """Strings that end generation; the returned text stops before them."""
    seed: int | None = None
    """Same seed, same prompt, same settings -> same output, whatever else is in the batch."""
    logprobs: bool = False
    """Return the model's log-probability of each generated token (temperature 1, before penalties)."""
    first_step_logprobs: bool = False
    """Keep the log-probabilities of the whole vocabulary at the first step (`Completion.first_step_logprobs`):
    classifiers such as Llama Guard read a verdict token's probability there."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InferenceError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InferenceError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InferenceError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InferenceError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise InferenceError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if any(not s for s in self.stop):
            raise InferenceError("stop strings must not be empty")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set the logits of excluded tokens to -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def penalized_logits(logits_V: torch.Tensor, params: SamplingParams, seen_V: torch.Tensor | None) -> torch.Tensor:
    """float32 logits after the repetition penalty; any leading dims (one row per position) work alike."""
    logits_V = logits_V.float()
    if seen_V is not None:
        logits_V = apply_repetition_penalty(logits_V, seen_V, params.repetition_penalty)
    return logits_V


def token_probs(logits_V: torch.Tensor, params: SamplingParams, seen_V: torch.Tensor | None = None) -> torch.Tensor:
    """The distribution that sampling draws from (penalty, temperature, top-k, top-p); temperature must be > 0.

    Speculative sampling needs this distribution itself, not just a draw from it, to accept or reject a draft.
    """
    logits_V = penalized_logits(logits_V, params, seen_V)
    return filter_top_k_top_p(logits_V / params.temperature, params.top_k, params.top_p).softmax(dim=-1)


def sample_token(
    logits_V: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    seen_V: torch.Tensor | None = None,
) -> int:
    """Next token for one sequence. Rows are sampled one by one so that each has its own settings and
    random stream: a seeded request gives the same output alone or batched with others."""
    if params.temperature == 0:
        return int(penalized_logits(logits_V, params, seen_V).argmax())
    return int(torch.multinomial(token_probs(logits_V, params, seen_V), 1, generator=generator))
