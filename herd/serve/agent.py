"""`herd serve --builtin-tools`: the agent loop of `herd agent` (herd.tools.agent.run_agent), run by the server.

A chat request without client tools gets the built-ins (code interpreter, search, Wolfram Alpha when keyed) offered
in its system prompt; each call the model writes is executed here and its result fed back, until the model answers
in words. The model's turns go through the same scheduler as every other request. The answer comes back as one
message (one content chunk when streamed: a turn is known to be final only once it is complete), and the executed
calls are listed under the response's "herd" key, an extension OpenAI clients ignore.
"""

from __future__ import annotations

import queue
import time
from dataclasses import asdict
from typing import Any

from herd.errors import InferenceError
from herd.inference.engine import TokenEvent
from herd.inference.scheduler import Request, Scheduler
from herd.serve.chat import messages_for_template
from herd.serve.schemas import ChatCompletionRequest
from herd.tokenizer import Tokenizer
from herd.tools.agent import BuiltinTools, run_agent


class AgentTimeout(InferenceError):
    """A turn of the loop ran past the request's timeout."""


def run_builtin_agent(
    scheduler: Scheduler,
    tokenizer: Tokenizer,
    tools: BuiltinTools,
    fmt: str,
    body: ChatCompletionRequest,
    *,
    timeout: float,
    max_steps: int,
) -> dict[str, Any]:
    """Run the loop for one request (blocking; the app calls it in a worker thread). Returns the answer, the
    executed steps and the usage summed over every turn. Raises QueueFull or InferenceError like a plain request."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    deadline = time.monotonic() + timeout
    finish = {"reason": "stop"}

    def complete(messages: list[dict[str, Any]]) -> str:
        prompt = tokenizer.encode_chat(messages)
        scheduler.check(prompt)
        params = body.sampling_params(scheduler.max_seq_len - len(prompt), logprobs=False)[0]
        events: queue.SimpleQueue[TokenEvent | BaseException] = queue.SimpleQueue()
        request = Request(prompt, params, events.put, on_error=events.put, presence_penalty=body.presence_penalty,
                          frequency_penalty=body.frequency_penalty)  # fmt: skip
        scheduler.submit(request)
        while True:
            try:
                item = events.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                request.cancelled.set()
                raise AgentTimeout(f"the tool loop ran past the timeout of {timeout:.0f} s") from None
            if isinstance(item, BaseException):
                raise item
            if item.finished is not None:
                usage["prompt_tokens"] += len(prompt)
                usage["completion_tokens"] += request.tokens
                finish["reason"] = item.finished.finish_reason or "stop"
                return item.finished.text

    messages = messages_for_template(body.messages, fmt)
    answer, steps = run_agent(complete, messages, tools, fmt, max_steps=max_steps)
    return {
        "answer": answer,
        "finish_reason": finish["reason"],
        "steps": [asdict(s) for s in steps],
        "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
    }
