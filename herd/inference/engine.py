"""Batched generation over the model's static KV cache.

Prompts of different lengths share one batch: they are left-padded to the longest, each row gets
its own RoPE positions (counting only its real tokens) and a mask that hides the padding, so every
row computes what it would compute alone. The prefill fills the cache in chunks of `prefill_chunk`
tokens (attention then holds chunk x prompt scores, not prompt x prompt) and projects only the last
position to the vocabulary; then each step feeds one token per row. Rows finish on their own (stop token,
stop string, length); the step loop ends when all have.

With a SpeculativeConfig, a batch of one prompt decodes speculatively (herd/inference/speculative.py):
each target forward checks several drafted tokens and yields 1..k+1 of them. Batches of several prompts
decode as without it: rows accept different numbers of drafts, and keeping their cache slots aligned would
throw most of the gain away. So latency-bound single requests speed up and batched throughput is as before.
Greedy output is the same either way. Sampled output has the same distribution, but the random numbers are
spent differently, so a seeded request alone (speculative) and in a batch (plain) gives different tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from herd.errors import InferenceError
from herd.inference.decode_model import GenerationModel, model_device
from herd.inference.sampling import SamplingParams, sample_token
from herd.inference.speculative import (
    Draft,
    SpeculativeConfig,
    SpeculativeStats,
    forward_span,
    make_drafter,
    verify,
)
from herd.model import causal_mask
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
    first_step_logprobs: torch.Tensor | None = None
    """(V,) log-probabilities at the first step (temperature 1, before penalties), when the params ask for them."""


@dataclass
class TokenEvent:
    """One streamed step of one row: the new token and the text it completes (may be empty)."""

    index: int
    token: int
    text: str
    logprob: float | None = None
    finished: Completion | None = None
    """Set on the row's last event."""
    top_logprobs: list[tuple[int, float]] | None = None
    """The most likely tokens at this step and their log-probabilities, when asked for (the server sets it)."""


class Row:
    """Per-sequence decoding state: text assembly, stop strings and the hold-back needed to stream them
    (the Engine's batches and the server's scheduler both keep one per sequence)."""

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

    def end(self, reason: str) -> TokenEvent:
        """Finish now without a token: "stop" (a constrained output is complete) or "length"."""
        return self._finish(-1, reason, None, None)

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

    def __init__(
        self,
        model: GenerationModel,
        tokenizer: Tokenizer,
        *,
        max_batch_size: int = 8,
        speculative: SpeculativeConfig | None = None,
        prefill_chunk: int = 512,
    ) -> None:
        if prefill_chunk < 1:
            raise InferenceError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.prefill_chunk = prefill_chunk
        self.speculative = speculative
        if speculative is not None and (draft := speculative.draft_model) is not None:
            if draft is model:
                raise InferenceError(
                    "speculative draft_model is the target model itself; the two need separate KV caches, "
                    "so pass a copy (copy.deepcopy(model))"
                )
            if draft.args.vocab_size != model.args.vocab_size:
                raise InferenceError(
                    f"speculative draft_model has vocab_size {draft.args.vocab_size}, "
                    f"the target {model.args.vocab_size}; they must share the tokenizer"
                )
        self.drafter = None if speculative is None else make_drafter(speculative)
        self.last_stats = SpeculativeStats()
        """Drafted / accepted counts of the latest stream or generate call (zeros without speculation)."""

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
        self.last_stats = SpeculativeStats()
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
        if self.drafter is not None and B == 1:
            yield from self._stream_speculative(list(prompts[0]), params[0], total)
            return
        device = model_device(model)
        rows = [Row(i, list(p), sp, self.tokenizer) for i, (p, sp) in enumerate(zip(prompts, params, strict=True))]

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

        model.setup_caches(B, total)
        try:
            logits_BV = self._prefill(tokens, positions, valid[:, :P])
            next_pos = positions[:, -1] + 1
            for slot in range(P, total):
                chosen = torch.zeros(B, dtype=torch.long, device=device)
                logprobs_BV = logits_BV.log_softmax(dim=-1) if any(sp.logprobs for sp in params) else None
                for row in rows:
                    if row.done:
                        continue
                    i = row.index
                    if slot == P and row.params.first_step_logprobs:
                        row.completion.first_step_logprobs = logits_BV[i].float().log_softmax(dim=-1)
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

    def _prefill(
        self,
        tokens_BP: torch.Tensor,
        positions_BP: torch.Tensor,
        valid_BP: torch.Tensor,
        cache_row: int | None = None,
    ) -> torch.Tensor:
        """Fill the KV cache with the (left-padded) prompts and return the last position's logits (B, V).

        Chunks of `prefill_chunk` queries keep attention's scores at chunk x P, not P x P, for long prompts, and
        only the last position goes through the vocabulary projection. `cache_row` (a DecodeModel only) puts the
        batch in cache rows cache_row.. instead of 0..: the server's scheduler fills one request's row."""
        model, (B, P), device = self.model, tokens_BP.shape, tokens_BP.device
        logits_BV = torch.empty(0)
        for start in range(0, P, self.prefill_chunk):
            end = min(start + self.prefill_chunk, P)
            # Padding queries attend to themselves only, so no softmax row is empty (that would give NaN).
            itself = torch.arange(end, device=device)[None, :] == torch.arange(start, end, device=device)[:, None]
            mask = (causal_mask(end - start, end, start, device=device) & valid_BP[:, None, :end]) | itself
            wanted = torch.zeros(B, end - start, dtype=torch.bool, device=device)
            wanted[:, -1] = end == P
            row = {} if cache_row is None else {"cache_row": cache_row}
            logits_BV = model(
                tokens_BP[:, start:end],
                positions_BT=positions_BP[:, start:end],
                mask=mask[:, None],
                cache_pos=start,
                output_mask=wanted,
                **row,
            )
        return logits_BV

    @torch.inference_mode()
    def _stream_speculative(self, prompt: list[int], params: SamplingParams, total: int) -> Iterator[TokenEvent]:
        """One sequence: draft, verify with one forward, emit the kept tokens through the row like plain decoding."""
        model, vocab, drafter, stats = self.model, self.model.args.vocab_size, self.drafter, self.last_stats
        assert drafter is not None and self.speculative is not None  # only called with a speculative config
        k_max = self.speculative.num_draft_tokens
        row = Row(0, prompt, params, self.tokenizer)
        device = model_device(model)
        seen_V = None
        if params.repetition_penalty != 1.0:
            seen_V = torch.zeros(vocab, dtype=torch.bool, device=device)
            seen_V[torch.tensor(prompt, device=device)] = True
        model.setup_caches(1, total)
        try:
            drafter.start(total)
            # The first token comes from the prefill exactly as in plain decoding (chunked, last position only).
            P = len(prompt)
            tokens = torch.tensor([prompt], device=device)
            positions = torch.arange(P, device=device)[None]
            logits_JV = self._prefill(tokens, positions, torch.ones(1, P, dtype=torch.bool, device=device))
            if params.first_step_logprobs:
                row.completion.first_step_logprobs = logits_JV[0].float().log_softmax(dim=-1)
            new_tokens = [sample_token(logits_JV[0], params, row.generator, seen_V)]
            context = list(prompt)  # prompt and accepted tokens; the cache holds all but the newest
            while True:
                logprobs_JV = logits_JV.log_softmax(dim=-1) if params.logprobs else None
                for j, token in enumerate(new_tokens):
                    yield row.add(token, None if logprobs_JV is None else float(logprobs_JV[j, token]))
                    context.append(token)
                    if seen_V is not None:
                        seen_V[token] = True
                    if row.done:
                        return
                # A forward of [newest, k drafts] writes slots up to len(context) + k - 1 and may yield k+1
                # tokens: both must stay within the `total` slots (the context or max_new_tokens limit).
                room = total - len(context)
                if room == 0:
                    break
                k = min(k_max, room - 1)
                draft = drafter.propose(context, k, params, row.generator) if k else Draft([])
                logits_JV = forward_span(model, [context[-1], *draft.tokens], len(context) - 1)
                if draft.tokens:
                    new_tokens = verify(logits_JV, draft, params, row.generator, seen_V)
                else:  # nothing drafted: a plain decoding step
                    new_tokens = [sample_token(logits_JV[0], params, row.generator, seen_V)]
                stats.forwards += 1
                stats.drafted += len(draft.tokens)
                stats.accepted += len(new_tokens) - 1
                stats.tokens += len(new_tokens)
            if (event := row.truncate()) is not None:
                yield event
        finally:
            model.clear_caches()
            drafter.finish()
