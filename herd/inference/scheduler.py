"""Continuous batching: requests join and leave the running batch between decode steps.

One thread owns the model (`run()` in the caller's thread, or `start()` for a thread of its own). Each request
gets a row of a static KV cache (`max_batch` rows of `max_seq_len` slots); its prompt is prefilled alone into that
row (the Engine's chunked prefill, last position only), then every decode step feeds one token per running row, each
row at its own position (DecodeModel's per-row cache positions), and finished or cancelled rows free their slot for
the next request in the queue. A row computes exactly what it computes alone: the prefill is the Engine's, and the
decode kernels add a row's sums in the same order at any batch size, so greedy output does not depend on what else
is running.

Events (one per generated token, the last one carrying the Completion) go to the request's `emit` callback on the
scheduler thread; the server turns them into SSE chunks. `Row` (engine.py) does the stop strings and streaming
text, `sample_token` the sampling, as in `Engine.generate`. On top of these the scheduler applies OpenAI's
presence/frequency penalties, top logprobs and an optional JSON constraint (`herd.inference.constrain`), which the
server uses for forced tool calls and JSON mode.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from herd.errors import InferenceError
from herd.inference.constrain import JsonConstraint, constrained_token, token_texts
from herd.inference.decode_model import DecodeModel
from herd.inference.engine import Engine, Row, TokenEvent
from herd.inference.sampling import SamplingParams, sample_token


class QueueFull(InferenceError):
    """The scheduler's queue holds max_queue waiting requests already."""


@dataclass(eq=False)
class Request:
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[TokenEvent], None]
    """Called on the scheduler thread for every event of this request; the last has `finished` set."""
    presence_penalty: float = 0.0
    """OpenAI's: subtracted from the logit of every token generated at least once."""
    frequency_penalty: float = 0.0
    """OpenAI's: subtracted once per earlier occurrence in the generated tokens."""
    top_logprobs: int = 0
    constraint: JsonConstraint | None = None
    """The output is kept a valid prefix of the constraint's JSON schema and ends when it is complete."""
    on_error: Callable[[BaseException], None] | None = None
    """Called (instead of more events) if generation fails for this request."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None
    """Seconds from submission to the first token."""
    tokens: int = 0
    """Tokens generated so far."""


@dataclass(eq=False)
class _Running:
    request: Request
    row: Row
    pos: int
    """The cache slot (and RoPE position) of `last`, the token to feed next."""
    last: int
    seen: torch.Tensor | None
    counts: torch.Tensor | None


class Scheduler:
    """Continuous batching over an Engine's DecodeModel. `start()` runs the loop in a daemon thread."""

    def __init__(self, engine: Engine, *, max_batch: int = 8, max_queue: int = 64, max_seq_len: int = 2048) -> None:
        if not isinstance(engine.model, DecodeModel):
            raise InferenceError("the scheduler needs a DecodeModel (herd.inference.load_decoder gives one)")
        if max_batch < 1 or max_queue < 0:
            raise InferenceError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.engine, self.model = engine, engine.model
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_seq_len = min(max_seq_len, self.model.args.max_seq_len)
        self.on_event: Callable[[Request, bool, bool], None] | None = None
        """Metrics hook, called on the scheduler thread for each generated token: (request, first, finished)."""
        self._queue: deque[Request] = deque()
        self._rows: dict[int, _Running] = {}
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- the caller's side ------------------------------------------------------------------------

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """The loop, in the calling thread, until `stop()` or `until()` (checked twice a second when idle).

        `herd serve` runs it in the main thread and the web server in another: the thread that loaded the model
        has an OpenMP thread team already, and a second team on a second thread makes libgomp manage more threads
        than there are cores, so its workers stop spinning between parallel regions and every region pays for
        waking them (see benchmarks/README.md, serving)."""
        self.model.setup_caches(self.max_batch, self.max_seq_len)
        try:
            self._loop(until)
        finally:
            self.model.clear_caches()

    def start(self) -> None:
        """Run the loop in a daemon thread (for a model served from a process that does other work)."""
        self._thread = threading.Thread(target=self.run, name="herd-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def running(self) -> int:
        """Requests in the running batch (read by /metrics from another thread: a len, no lock needed)."""
        return len(self._rows)

    @property
    def queued(self) -> int:
        """Requests waiting for a row."""
        return len(self._queue)

    def check(self, prompt: list[int]) -> None:
        """Raises InferenceError if this prompt cannot run: empty, too long for the context, or holding an id
        outside the vocabulary (the caller answers 400)."""
        if not prompt:
            raise InferenceError("the prompt is empty")
        if len(prompt) >= self.max_seq_len:
            raise InferenceError(
                f"the prompt has {len(prompt)} tokens; this server's context is {self.max_seq_len} tokens "
                "(prompt and completion together)"
            )
        vocab = self.model.args.vocab_size
        if bad := [t for t in prompt if not 0 <= t < vocab]:
            raise InferenceError(f"token id {bad[0]} is outside the vocabulary (size {vocab})")

    def submit(self, request: Request) -> None:
        """Queue a request; raises QueueFull when max_queue requests are waiting already."""
        self.check(request.prompt)
        with self._cv:
            if len(self._queue) >= self.max_queue and len(self._rows) + len(self._queue) >= self.max_batch:
                raise QueueFull(f"{len(self._queue)} requests are waiting (--max-queue {self.max_queue})")
            self._queue.append(request)
            self._cv.notify()

    # -- the scheduler thread ---------------------------------------------------------------------

    def _loop(self, until: Callable[[], bool]) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._queue and not self._rows and not until():
                    self._cv.wait(timeout=0.5)
                if self._stop or until():
                    return
                admitted: list[Request] = []
                while self._queue and len(self._rows) + len(admitted) < self.max_batch:
                    admitted.append(self._queue.popleft())
            free = (r for r in range(self.max_batch) if r not in self._rows)
            for request, slot in zip(admitted, free, strict=False):
                if not request.cancelled.is_set():
                    self._guard(request, self._admit, request, slot)
            for slot, state in list(self._rows.items()):
                if state.request.cancelled.is_set():
                    del self._rows[slot]
            if self._rows:
                self._step()

    def _guard(self, request: Request, work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except Exception as e:  # one request's failure must not take the server down
            for slot, state in list(self._rows.items()):
                if state.request is request:
                    del self._rows[slot]
            if request.on_error is not None:
                request.on_error(e)

    @torch.inference_mode()
    def _admit(self, request: Request, slot: int) -> None:
        prompt, params = request.prompt, request.params  # checked by submit()
        vocab = self.model.args.vocab_size
        P = len(prompt)
        tokens = torch.tensor([prompt])
        logits = self.engine._prefill(tokens, torch.arange(P)[None], torch.ones(1, P, dtype=torch.bool), slot)[0]
        seen = counts = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(vocab, dtype=torch.bool)
            seen[tokens[0]] = True
        if request.presence_penalty or request.frequency_penalty:
            counts = torch.zeros(vocab)
        state = _Running(request, Row(0, prompt, params, self.engine.tokenizer), P, -1, seen, counts)
        self._rows[slot] = state
        self._next(slot, state, logits)

    @torch.inference_mode()
    def _step(self) -> None:
        B = max(self._rows) + 1  # rows above the highest running one are left out; idle rows below are fed 0
        tokens = torch.zeros(B, 1, dtype=torch.long)
        pos = torch.zeros(B, dtype=torch.long)
        for slot, state in self._rows.items():
            tokens[slot, 0], pos[slot] = state.last, state.pos
        try:
            logits_BV = self.model(tokens, cache_pos=pos)[:, -1]
        except Exception as e:  # fail every running request, keep serving
            for slot, state in list(self._rows.items()):
                del self._rows[slot]
                if state.request.on_error is not None:
                    state.request.on_error(e)
            return
        for slot, state in list(self._rows.items()):
            state.pos += 1
            self._guard(state.request, self._next, slot, state, logits_BV[slot])

    def _next(self, slot: int, state: _Running, logits_V: torch.Tensor) -> None:
        """Choose the row's next token from `logits_V`, emit its event, and free the row when it is done."""
        request, row = state.request, state.row
        top = None
        logprob = None
        if row.params.logprobs:  # the model's own distribution, before penalties (as the Engine reports it)
            lp = logits_V.log_softmax(dim=-1)
            if request.top_logprobs:
                values, ids = lp.topk(request.top_logprobs)
                top = list(zip(ids.tolist(), values.tolist(), strict=True))
        if state.counts is not None:
            logits_V = (
                logits_V - request.presence_penalty * (state.counts > 0) - request.frequency_penalty * state.counts
            )
        constraint = request.constraint
        if constraint is not None:
            token = constrained_token(logits_V, constraint, self._texts(), row.params, row.generator, -1, state.seen)
            if token == -1:  # the constrained value is complete
                self._emit(slot, state, row.end("stop"))
                return
            constraint.feed(self._texts()[token])
        else:
            token = sample_token(logits_V, row.params, row.generator, state.seen)
        if row.params.logprobs:
            logprob = float(lp[token])
        if request.first_token_s is None:
            request.first_token_s = time.monotonic() - request.submitted
        event = row.add(token, logprob)
        event.top_logprobs = top
        state.last = token
        if state.seen is not None:
            state.seen[token] = True
        if state.counts is not None:
            state.counts[token] += 1
        request.tokens += 1
        if event.finished is None and state.pos + 1 >= self.max_seq_len:
            request.emit(event)  # the context is full: no slot for another token
            event = row.truncate() or event
        if self.on_event is not None:
            self.on_event(request, request.tokens == 1, event.finished is not None)
        self._emit(slot, state, event)

    def _emit(self, slot: int, state: _Running, event: TokenEvent) -> None:
        state.request.emit(event)
        if event.finished is not None:
            del self._rows[slot]

    _token_texts: list[str] | None = None

    def _texts(self) -> list[str]:
        """Every token's text, for constrained decoding (built on the first constrained request)."""
        if self._token_texts is None:
            self._token_texts = token_texts(self.engine.tokenizer)
        return self._token_texts
