"""What `herd generate` and `herd chat` print about a stream: time to first token and decode speed."""

from __future__ import annotations

import json
import time

from herd.inference.engine import Completion


class StreamStats:
    """Time to first token (prefill) and decode speed, as llama.cpp and vLLM report them.

    Create it just before the stream starts and `tick()` on every event; `line()` formats the result.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last = self.start
        self.n = 0

    def tick(self) -> None:
        self.last = time.perf_counter()
        self.first = self.first or self.last
        self.n += 1

    def line(self, prompt_tokens: int) -> str:
        if self.first is None:
            return "(no tokens generated)"
        prefill = self.first - self.start
        decode = self.last - self.first
        rate = (self.n - 1) / decode if self.n > 1 and decode > 0 else float("nan")
        return (
            f"({prompt_tokens} prompt tokens in {prefill * 1000:.0f} ms, "
            f"{self.n} tokens generated at {rate:.1f} tokens/s)"
        )


def completion_json(c: Completion) -> str:
    """The JSON line `herd generate --json` prints for a completion."""
    out = {"text": c.text, "tokens": c.tokens, "logprobs": c.logprobs, "finish_reason": c.finish_reason}
    return json.dumps(out, ensure_ascii=False)
