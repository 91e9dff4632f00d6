"""Batched generation over the model's static KV cache.

Prompts of different lengths share one batch: they are left-padded to the longest, each row gets
its own RoPE positions (counting only its real tokens) and a mask that hides the padding, so every
row computes what it would compute alone. One prefill forward fills the cache, then each step
feeds one token per row. Rows finish on their own (stop token, stop string, length); the step
loop ends when all have.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from herd.errors import InferenceError
from herd.inference.sampling import SamplingParams, sample_token
from herd.model import Transformer, causal_mask
from herd.tokenizer import StreamDecoder, Tokenizer


@dataclass
class Completion:
    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    """Generated tokens, without the stop token that ended generation."""
    text: str = ""
    """Decoded text, cut before a matched stop string."""
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    """"stop" (stop token or string) or "length" (max_new_tokens or the context limit)."""
    stop_reason: int | str | None = None
    """The stop token id or stop string that ended generation."""


@dataclass
class TokenEvent:
    """One streamed step of one row: the new token and the text it completes (may be empty)."""

    index: int
    token: int
    text: str
    logprob: float | None = None
    finished: Completion | None = None
    """Set on the row's last event."""


class _Row:
    """Per-sequence decoding state: text assembly, stop strings and the hold-back needed to stream them."""

    def __init__(self, index: int, prompt: list[int], params: SamplingParams, tokenizer: Tokenizer) -> None:
        self.index, self.params = index, params
        self.completion = Completion(prompt_tokens=list(prompt), logprobs=[] if params.logprobs else None)
        self.stop_ids = set(tokenizer.stop_ids if params.stop_token_ids is None else params.stop_token_ids)
        self.decoder = StreamDecoder(tokenizer)
        self.full_text = ""
        self.emitted = 0
        self.generator = None
        if params.temperature > 0:
            self.generator = torch.Generator()
            seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
            self.generator.manual_seed(seed)

    @property
    def done(self) -> bool:
        return self.completion.finish_reason is not None

    def add(self, token: int, logprob: float | None) -> TokenEvent:
        c = self.completion
        if token in self.stop_ids:
            return self._finish(token, "stop", token, logprob)
        c.tokens.append(token)
        if c.logprobs is not None:
            assert logprob is not None  # computed for every row whose params ask for logprobs
            c.logprobs.append(logprob)
        self.full_text += self.decoder.push(token)
        for stop in self.params.stop:
            at = self.full_text.find(stop, max(0, self.emitted - len(stop)))
            if at >= 0:
                self.full_text = self.full_text[:at]
                return self._finish(token, "stop", stop, logprob)
        if len(c.tokens) >= self.params.max_new_tokens:
            return self._finish(token, "length", None, logprob)
        # Hold back a tail that could still grow into a stop string.
        hold = max((_overlap(self.full_text, s) for s in self.params.stop), default=0)
        return TokenEvent(self.index, token, self._emit(len(self.full_text) - hold), logprob)

    def truncate(self) -> TokenEvent | None:
        """The context is full: finish with reason "length" if still running."""
        if self.done:
            return None
        self.full_text += self.decoder.flush()
        self.completion.finish_reason = "length"
        self.completion.text = self.full_text
        return TokenEvent(self.index, -1, self._emit(len(self.full_text)), None, self.completion)

    def _finish(self, token: int, reason: str, stop: int | str | None, logprob: float | None) -> TokenEvent:
        if not isinstance(stop, str):  # after a stop string, pending bytes belong to the cut-off tail
            self.full_text += self.decoder.flush()
        self.completion.finish_reason, self.completion.stop_reason = reason, stop
        self.completion.text = self.full_text
        return TokenEvent(self.index, token, self._emit(len(self.full_text)), logprob, self.completion)

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        text, self.emitted = self.full_text[self.emitted : upto], upto
        return text


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


class Engine:
    """Generation for one model + tokenizer. Not thread-safe: one batch at a time owns the KV cache."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, *, max_batch_size: int = 8) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        results: dict[int, Completion] = {}
        for event in self.stream(prompts, params):
            if event.finished is not None:
                results[event.index] = event.finished
        return [results[i] for i in range(len(prompts))]

    def stream(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
    ) -> Iterator[TokenEvent]:
        """Yield a TokenEvent per row per step; batches of max_batch_size run one after another."""
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise InferenceError(f"got {len(prompts)} prompts but {len(params)} sampling settings")
        for start in range(0, len(prompts), self.max_batch_size):
            stop = start + self.max_batch_size
            for event in self._stream_batch(prompts[start:stop], params[start:stop]):
                event.index += start
                yield event

    @torch.inference_mode()
    def _stream_batch(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> Iterator[TokenEvent]:
        model, vocab = self.model, self.model.args.vocab_size
        for i, p in enumerate(prompts):
            if not p:
                raise InferenceError(f"prompt {i} is empty")
            if bad := [t for t in p if not 0 <= t < vocab]:
                raise InferenceError(f"prompt {i} has token id {bad[0]} outside the vocabulary (size {vocab})")
        B, P = len(prompts), max(len(p) for p in prompts)
        if P >= model.args.max_seq_len:
            raise InferenceError(
                f"prompt of {P} tokens leaves no room in the model's context ({model.args.max_seq_len})"
            )
        total = min(P + max(p.max_new_tokens for p in params), model.args.max_seq_len)
        device = model.tok_embeddings.weight.device
        rows = [_Row(i, list(p), sp, self.tokenizer) for i, (p, sp) in enumerate(zip(prompts, params, strict=True))]

        tokens = torch.zeros(B, P, dtype=torch.long, device=device)
        valid = torch.zeros(B, total, dtype=torch.bool, device=device)  # key slots holding real tokens
        for i, p in enumerate(prompts):
            tokens[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
            valid[i, P - len(p) : P] = True
        positions = (valid[:, :P].cumsum(dim=1) - 1).clamp(min=0)
        seen = None
        if any(sp.repetition_penalty != 1.0 for sp in params):
            seen = torch.zeros(B, vocab, dtype=torch.bool, device=device)
            seen.scatter_(1, tokens, valid[:, :P])

        # Padding queries attend to themselves only, so no softmax row is empty (that would give NaN).
        eye = torch.eye(P, dtype=torch.bool, device=device)
        mask = (causal_mask(P, P, device=device) & valid[:, None, :P]) | eye
        model.setup_caches(B, total)
        try:
            logits_BV = model(tokens, positions_BT=positions, mask=mask[:, None], cache_pos=0)[:, -1]
            next_pos = positions[:, -1] + 1
            for slot in range(P, total):
                chosen = torch.zeros(B, dtype=torch.long, device=device)
                logprobs_BV = logits_BV.log_softmax(dim=-1) if any(sp.logprobs for sp in params) else None
                for row in rows:
                    if row.done:
                        continue
                    i = row.index
                    token = sample_token(logits_BV[i], row.params, row.generator, None if seen is None else seen[i])
                    chosen[i] = token
                    logprob = float(logprobs_BV[i, token]) if logprobs_BV is not None else None
                    yield row.add(token, logprob)
                    if seen is not None:
                        seen[i, token] = True
                if all(row.done for row in rows):
                    return
                if slot + 1 == total:
                    break
                valid[:, slot] = True
                logits_BV = model(
                    chosen[:, None],
                    positions_BT=next_pos[:, None],
                    mask=valid[:, None, None, : slot + 1],
                    cache_pos=slot,
                )[:, -1]
                next_pos += 1
            for row in rows:
                if (event := row.truncate()) is not None:
                    yield event
        finally:
            model.clear_caches()
