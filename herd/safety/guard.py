"""`Guard`: a Llama Guard classifier over any checkpoint herd loads, with a verdict and a score.

A real Llama Guard 3 (1B/8B) or Llama Guard 2 (8B) in HF or Meta format, a GGUF of one, or herd's embedded guard
(SmolLM2 fine-tuned in the Llama Guard 3 format by `herd guard train`) all run the same way: the dialog goes into
the published prompt (herd/safety/prompt.py), the model answers greedily, and the answer is parsed strictly. The
score is the probability of the first token of "unsafe" at the first answer position, for thresholds and PR
curves; it is read from the same forward pass as the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from herd.errors import SafetyError
from herd.safety.categories import TAXONOMIES, Category, load_categories, taxonomy_for
from herd.safety.prompt import Turn, check_role, dialog_turns, encode_guard_prompt, parse_verdict

EMBEDDED_NAME = "herd-guard (SmolLM2-135M-Instruct + LoRA, Llama Guard 3 format)"
_ANSWER_TOKENS = 16  # "unsafe\nS1,S2,...": a few tokens; a longer answer is malformed anyway


@dataclass(frozen=True, slots=True)
class GuardResult:
    safe: bool
    categories: tuple[str, ...]
    """The violated category codes ("S1", ...); empty when safe."""
    score: float
    """P(first token of "unsafe") at the first answer position."""
    role: str
    """"User" or "Agent": whose turn was judged."""
    answer: str
    """The guard's raw answer."""
    error: str | None = None
    """Why the answer could not be parsed; the result then counts as unsafe (a shield fails closed)."""

    def to_dict(self, names: dict[str, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "safe": self.safe,
            "categories": list(self.categories),
            "score": round(self.score, 6),
            "role": self.role,
            "answer": self.answer,
        }
        if names is not None:
            out["category_names"] = [names.get(c, c) for c in self.categories]
        if self.error is not None:
            out["error"] = self.error
        return out


class Guard:
    """Classify the last turn of dialogs. `taxonomy` is "lg2", "lg3" or "lg3-1b" (the prompt variant and default
    categories); `categories` replaces the taxonomy's categories with custom ones."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        taxonomy: str = "lg3",
        categories: Sequence[Category] | None = None,
        name: str = "guard",
    ) -> None:
        from herd.inference.engine import Engine

        if taxonomy not in TAXONOMIES:
            raise SafetyError(f"taxonomy {taxonomy!r}: expected one of {', '.join(TAXONOMIES)}")
        self.taxonomy, self.name, self.tokenizer = taxonomy, name, tokenizer
        self.categories = tuple(categories) if categories is not None else TAXONOMIES[taxonomy]
        self.engine = Engine(model, tokenizer)  # type: ignore[arg-type]  # a DecodeModel or a Transformer
        unsafe, safe = tokenizer.encode("unsafe"), tokenizer.encode("safe")
        if unsafe[0] == safe[0]:
            raise SafetyError(f"{name}: 'safe' and 'unsafe' start with the same token; the score would be meaningless")
        self.unsafe_token = unsafe[0]
        self._lock = threading.Lock()  # the Engine owns one KV cache: one batch at a time (a server calls from threads)

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        taxonomy: str | None = None,
        categories_file: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        quant: str = "none",
    ) -> Guard:
        """A guard checkpoint (HF/Meta directory or .gguf), or herd's embedded guard when `model` is None."""
        from herd.inference.load import load_decoder
        from herd.safety.train import load_embedded_guard

        categories = load_categories(categories_file) if categories_file is not None else None
        if model is None:
            decoder, tokenizer = load_embedded_guard()
            return cls(decoder, tokenizer, taxonomy=taxonomy or "lg3", categories=categories, name=EMBEDDED_NAME)
        loaded = load_decoder(str(model), dtype=dtype, quant=quant)
        taxonomy = taxonomy or taxonomy_for(str(model))
        return cls(loaded.model, loaded.tokenizer, taxonomy=taxonomy, categories=categories, name=str(model))

    @property
    def version(self) -> str:
        return "lg2" if self.taxonomy == "lg2" else "lg3"

    @property
    def category_names(self) -> dict[str, str]:
        return {c.code: c.name for c in self.categories}

    def prompt_ids(self, messages: Sequence[Any], role: str | None = None) -> list[int]:
        turns = _turns(messages)
        check_role(turns, role)
        return encode_guard_prompt(self.tokenizer, turns, self.categories, self.version)

    def classify(self, messages: Sequence[Any], role: str | None = None) -> GuardResult:
        """`messages`: OpenAI-style dicts or `Turn`s; `role` ("user"/"agent") must be the last turn's if given."""
        return self.classify_many([messages], [role])[0]

    def classify_many(
        self, dialogs: Sequence[Sequence[Any]], roles: Sequence[str | None] | None = None
    ) -> list[GuardResult]:
        """Batched: the Engine runs up to its max_batch_size dialogs per forward."""
        from herd.inference.sampling import SamplingParams

        roles = list(roles) if roles is not None else [None] * len(dialogs)
        turns = [_turns(d) for d in dialogs]
        judged = [check_role(t, r) for t, r in zip(turns, roles, strict=True)]
        prompts = [encode_guard_prompt(self.tokenizer, t, self.categories, self.version) for t in turns]
        params = SamplingParams(max_new_tokens=_ANSWER_TOKENS, temperature=0.0, first_step_logprobs=True)
        codes = [c.code for c in self.categories]
        with self._lock:
            completions = self.engine.generate(prompts, params)
        results = []
        for completion, role in zip(completions, judged, strict=True):
            assert completion.first_step_logprobs is not None  # asked for above
            score = float(completion.first_step_logprobs[self.unsafe_token].exp())
            try:
                verdict = parse_verdict(completion.text, codes)
            except SafetyError as e:
                results.append(GuardResult(False, (), score, role, completion.text, error=str(e)))
                continue
            results.append(GuardResult(verdict.safe, verdict.categories, score, role, completion.text))
        return results


def _turns(messages: Sequence[Any]) -> list[Turn]:
    if messages and all(isinstance(m, Turn) for m in messages):
        return list(messages)
    return dialog_turns(list(messages))
