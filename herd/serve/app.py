"""The FastAPI app: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus /tokenize, /health and
/metrics, over one model and the continuous-batching scheduler (`herd.inference.scheduler`).

Errors have OpenAI's body, {"error": {"message", "type", "param", "code"}}: 400 for a request that cannot run (bad
JSON, wrong types, a prompt longer than the context), 401 without the API key, 404 for another model's name, 429
with Retry-After when the queue is full, 504 past the request timeout. A client that disconnects cancels its
request's generation.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from herd.errors import HerdError
from herd.inference.constrain import JsonConstraint
from herd.inference.engine import Completion, Engine, TokenEvent
from herd.inference.load import LoadedDecoder
from herd.inference.sampling import SamplingParams
from herd.inference.scheduler import QueueFull, Scheduler
from herd.inference.scheduler import Request as GenRequest
from herd.safety.shield import Shield
from herd.serve import chat
from herd.serve.agent import AgentTimeout, run_builtin_agent
from herd.serve.metrics import Metrics
from herd.serve.schemas import ChatCompletionRequest, CompletionRequest, TokenizeRequest
from herd.tools.agent import BuiltinTools


@dataclass(kw_only=True, slots=True)
class ServeOptions:
    model_name: str
    """The id clients send as `model` (and /v1/models lists)."""
    api_key: str | None = None
    """When set, /v1/* and /tokenize need `Authorization: Bearer <key>`."""
    max_batch: int = 8
    """Requests decoding together (rows of the KV cache)."""
    max_queue: int = 64
    """Requests waiting for a row; one more gets 429."""
    max_seq_len: int = 2048
    """Context per request, prompt and completion (capped by the model's)."""
    request_timeout: float = 600.0
    """Seconds a request may run before it is cancelled (504, or the stream ends)."""
    builtin_tools: bool = False
    """Run the built-in tools server-side for requests without client tools (`herd.serve.agent`)."""
    index: str | None = None
    """The offline search index of the built-in search (without BRAVE_API_KEY)."""
    max_tool_steps: int = 6
    """Built-in tool calls per request before the model must answer."""


class APIError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def create_app(
    loaded: LoadedDecoder, options: ServeOptions, *, scheduler_thread: bool = True, shield: Shield | None = None
) -> FastAPI:
    """The app for one loaded model. Its scheduler (`app.state.scheduler`) runs in a thread that starts and stops
    with the app's lifespan, or, with `scheduler_thread=False`, wherever the caller runs `scheduler.run()`.

    With a `shield`, chat requests pass Llama Guard both ways: a blocked request is answered with the shield's
    refusal (finish_reason "content_filter") without reaching the model, and a blocked reply is replaced. A
    streamed reply is then held back until the output shield has judged all of it: nothing unchecked reaches
    the client, at the cost of streaming (the text arrives in one chunk at the end)."""
    tokenizer = loaded.tokenizer
    scheduler = Scheduler(
        Engine(loaded.model, tokenizer),
        max_batch=options.max_batch,
        max_queue=options.max_queue,
        max_seq_len=options.max_seq_len,
    )
    metrics = Metrics(scheduler)
    fmt = chat.tool_format(tokenizer)
    created = int(time.time())
    builtins = BuiltinTools(index=options.index) if options.builtin_tools else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if scheduler_thread:
            scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="herd", version="1", lifespan=lifespan)
    app.state.scheduler = scheduler

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        message = str(first["msg"])
        return APIError(400, f"{where}: {message}" if where else message, param=where or None).response()

    def authorize(request: Request) -> None:
        if options.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not secrets.compare_digest(given.encode(), options.api_key.encode()):
            message = "missing or wrong API key (send Authorization: Bearer <key>)"
            raise APIError(401, message, kind="authentication_error", code="invalid_api_key")

    def check_model(name: str | None) -> None:
        if name is not None and name != options.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {options.model_name!r}",
                           param="model", code="model_not_found")  # fmt: skip

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        body, content_type = metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        card = {"id": options.model_name, "object": "model", "created": created, "owned_by": "herd",
                "max_model_len": scheduler.max_seq_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.post("/tokenize", dependencies=[Depends(authorize)])
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt and messages", param="prompt")
        try:
            if body.messages is not None:
                ids = chat.encode_chat(tokenizer, body.messages, None)
            else:
                ids = tokenizer.encode(body.prompt or "", bos=body.add_special_tokens and tokenizer.add_bos)
        except HerdError as e:
            raise APIError(400, str(e)) from None
        return {"tokens": ids, "count": len(ids), "max_model_len": scheduler.max_seq_len}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(body.model)
        dialog: list[dict[str, str]] = []  # what the shields judge; built only when there are shields
        if shield is not None:
            dialog = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
            ]
            try:
                checked = await run_in_threadpool(shield.check_input, dialog)
            except HerdError as e:
                raise APIError(400, str(e), param="messages") from None
            if checked.blocked:
                metrics.request("chat")
                return refusal(body, checked.message, checked.categories)
        if builtins is not None and not body.tools and body.tool_choice != "none":
            return await agent_completion(body)
        tools = body.tools if body.tools and body.tool_choice != "none" else None
        names = {t.function.name for t in tools or []}
        forced = _forced_tool(body, names)
        prefix = chat.call_prefix(forced, fmt) if forced else ""
        try:
            prompt = chat.encode_chat(tokenizer, body.messages, tools, prefix=prefix)
        except HerdError as e:
            raise APIError(400, str(e), param="messages") from None
        constraint = _constraint(body, forced, tools)
        _check_capacity(body.n, options)
        job = _submit(scheduler, body, prompt, options, constraint=constraint,
                      logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0)  # fmt: skip
        metrics.request("chat")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"

        async def finish(c: Completion) -> tuple[dict[str, Any], str]:
            text = prefix + c.text + ("}" if forced and c.finish_reason == "stop" else "")
            calls = chat.parse_tool_calls(text, fmt, names) if tools else []
            if calls:
                return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
            if shield is not None and (checked := await run_in_threadpool(shield.check_output, dialog, text)).blocked:
                return {"role": "assistant", "content": checked.message}, "content_filter"
            return {"role": "assistant", "content": text}, c.finish_reason or "stop"

        def logprobs(events: list[TokenEvent]) -> dict[str, Any] | None:
            return {"content": [_chat_logprob(tokenizer, e) for e in events if e.token >= 0]} if body.logprobs else None

        base = {"id": completion_id, "created": int(time.time()), "model": options.model_name}
        if body.stream:
            # A call is known only once its text is complete; a reply is shown only once the shield has judged it.
            buffer = tools is not None or forced is not None or shield is not None
            usage = body.stream_options is not None and body.stream_options.include_usage

            async def chunks() -> AsyncIterator[str]:
                def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
                    return _sse({**base, "object": "chat.completion.chunk", "choices": choices, **extra})

                for i in range(body.n):
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
                async for i, event in job.events(request):
                    if not buffer and (event.text or event.finished is None):
                        lp = (
                            {"content": [_chat_logprob(tokenizer, event)]}
                            if body.logprobs and event.token >= 0
                            else None
                        )
                        yield chunk(
                            [{"index": i, "delta": {"content": event.text}, "logprobs": lp, "finish_reason": None}]
                        )
                    if event.finished is not None:
                        message, reason = await finish(event.finished)
                        delta = {k: v for k, v in message.items() if k != "role" and v is not None} if buffer else {}
                        for n, call in enumerate(delta.get("tool_calls", [])):
                            call["index"] = n
                        yield chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}])
                if usage:
                    yield chunk([], usage=job.usage())
                yield "data: [DONE]\n\n"

            return StreamingResponse(job.guard(chunks()), media_type="text/event-stream")

        results = await job.collect(request)
        choices = []
        for i, (completion, events) in enumerate(results):
            message, reason = await finish(completion)
            choices.append({"index": i, "message": message, "logprobs": logprobs(events), "finish_reason": reason})
        return {**base, "object": "chat.completion", "choices": choices, "usage": job.usage()}

    def refusal(body: ChatCompletionRequest, text: str, categories: tuple[str, ...]) -> Any:
        """The input shield's answer, shaped like a completion; the model saw nothing, so usage is zero."""
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": options.model_name}
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        extension = {"herd_shield": {"side": "input", "categories": list(categories)}}
        message = {"role": "assistant", "content": text}
        if not body.stream:
            choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": "content_filter"}
                       for i in range(body.n)]  # fmt: skip
            return {**base, "object": "chat.completion", "choices": choices, "usage": usage, **extension}

        async def chunks() -> AsyncIterator[str]:
            for i in range(body.n):
                delta = {"index": i, "delta": message, "logprobs": None, "finish_reason": "content_filter"}
                yield _sse({**base, "object": "chat.completion.chunk", "choices": [delta], **extension})
            if body.stream_options is not None and body.stream_options.include_usage:
                yield _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def agent_completion(body: ChatCompletionRequest) -> Any:
        assert builtins is not None  # called only with --builtin-tools
        if body.n > 1 or body.logprobs or body.response_format is not None:
            raise APIError(
                400, "with the server's built-in tools, n > 1, logprobs and response_format are not supported"
            )
        try:
            run = functools.partial(
                run_builtin_agent, timeout=options.request_timeout, max_steps=options.max_tool_steps
            )
            out = await asyncio.to_thread(run, scheduler, tokenizer, builtins, fmt, body)
        except QueueFull as e:
            raise _busy(e) from None
        except AgentTimeout as e:
            raise APIError(504, str(e), kind="timeout") from None
        except HerdError as e:  # a turn that outgrew the context, a dialog the chat format cannot encode
            raise APIError(400, str(e), param="messages") from None
        metrics.request("chat")
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": options.model_name}
        extension = {"herd": {"tool_steps": out["steps"]}}
        if not body.stream:
            message = {"role": "assistant", "content": out["answer"]}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": out["finish_reason"]}
            return {**base, "object": "chat.completion", "choices": [choice], "usage": out["usage"], **extension}

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return _sse({**base, "object": "chat.completion.chunk", "choices": choices, **extra})

        async def chunks() -> AsyncIterator[str]:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": out["answer"]}, "finish_reason": None}])
            yield chunk([{"index": 0, "delta": {}, "finish_reason": out["finish_reason"]}], **extension)
            if body.stream_options is not None and body.stream_options.include_usage:
                yield chunk([], usage=out["usage"])
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo")
        prompts = _completion_prompts(tokenizer, body.prompt)
        _check_capacity(len(prompts) * body.n, options)
        jobs = [_submit(scheduler, body, p, options, logprobs=body.logprobs is not None,
                        top_logprobs=body.logprobs or 0) for p in prompts]  # fmt: skip
        metrics.request("completions")
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": options.model_name}
        if body.stream:
            usage_wanted = body.stream_options is not None and body.stream_options.include_usage

            async def chunks() -> AsyncIterator[str]:
                for p, job in enumerate(jobs):
                    emitted = [0] * body.n  # characters streamed per choice: logprobs' text_offset counts from there
                    async for i, event in job.events(request):
                        lp = None
                        if body.logprobs is not None:
                            lp = _completion_logprobs(tokenizer, [event], start=emitted[i])
                            emitted[i] += sum(map(len, lp["tokens"]))
                        reason = event.finished.finish_reason if event.finished else None
                        choice = {"index": p * body.n + i, "text": event.text, "logprobs": lp, "finish_reason": reason}
                        yield _sse({**base, "object": "text_completion", "choices": [choice]})
                if usage_wanted:
                    yield _sse({**base, "object": "text_completion", "choices": [], "usage": _sum_usage(jobs)})
                yield "data: [DONE]\n\n"

            return StreamingResponse(_guard_all(jobs, chunks()), media_type="text/event-stream")
        choices = []
        for p, job in enumerate(jobs):
            for i, (completion, events) in enumerate(await job.collect(request)):
                lp = _completion_logprobs(tokenizer, events) if body.logprobs is not None else None
                choices.append({"index": p * body.n + i, "text": completion.text, "logprobs": lp,
                                "finish_reason": completion.finish_reason})  # fmt: skip
        return {**base, "object": "text_completion", "choices": choices, "usage": _sum_usage(jobs)}

    return app


# ---------------------------------------------------------------------------------------------
# Requests -> scheduler jobs


def _forced_tool(body: ChatCompletionRequest, names: set[str]) -> str | None:
    """The function the answer must call: a named tool_choice, or "required" with exactly one tool."""
    choice = body.tool_choice
    if choice is not None and not isinstance(choice, str):
        if choice.function.name not in names:
            raise APIError(
                400, f"tool_choice names {choice.function.name!r}, which is not in tools", param="tool_choice"
            )
        return choice.function.name
    if choice == "required":
        if not names:
            raise APIError(400, 'tool_choice "required" needs tools', param="tool_choice")
        if len(names) == 1:
            return next(iter(names))
    return None


def _constraint(body: ChatCompletionRequest, forced: str | None, tools: Any) -> JsonConstraint | None:
    try:
        if forced is not None:
            spec = next(t.function for t in tools if t.function.name == forced)
            return JsonConstraint(spec.parameters or {"type": "object"})
        if body.tool_choice == "required":  # several tools: a call object whose name picks the arguments' schema
            return JsonConstraint({"anyOf": [_call_schema(t.function.name, t.function.parameters) for t in tools]})
        if body.response_format is not None and body.response_format.type == "json_object":
            return JsonConstraint({"type": "object"})
        if body.response_format is not None and body.response_format.type == "json_schema":
            schema = body.response_format.json_schema.schema_ if body.response_format.json_schema else None
            return JsonConstraint(schema or {"type": "object"})
    except ValueError as e:
        raise APIError(400, f"schema not supported: {e}", param="tools") from None
    return None


def _call_schema(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "object", "properties": {"name": {"const": name}, "arguments": parameters or {"type": "object"}},
            "required": ["name", "arguments"]}  # fmt: skip


def _check_capacity(choices: int, options: ServeOptions) -> None:
    """More choices than the server runs and queues at once would get 429 even when idle, which clients retry in
    vain: refuse them as a bad request."""
    limit = options.max_batch + options.max_queue
    if choices > limit:
        raise APIError(400, f"{choices} choices (prompts x n) are more than this server queues ({limit})", param="n")


def _completion_prompts(tokenizer: Any, prompt: Any) -> list[list[int]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt is empty", param="prompt")
    vocab = tokenizer.vocab_size
    for p in prompt:
        if isinstance(p, list) and (bad := [t for t in p if not 0 <= t < vocab]):
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary (size {vocab})", param="prompt")
    return [p if isinstance(p, list) else tokenizer.encode(p, bos=tokenizer.add_bos) for p in prompt]


class _Job:
    """The n choices of one prompt: scheduler requests whose events arrive on an asyncio queue as (choice, event)."""

    def __init__(self, prompt: list[int], params: list[SamplingParams], timeout: float, **extra: Any) -> None:
        self.prompt, self.timeout = prompt, timeout
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, TokenEvent | BaseException]] = asyncio.Queue()
        self.requests = [
            GenRequest(prompt, p, self._emitter(i), on_error=self._emitter(i), **extra) for i, p in enumerate(params)
        ]

    def _emitter(self, i: int) -> Callable[[Any], None]:
        def emit(item: TokenEvent | BaseException) -> None:  # called on the scheduler thread
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (i, item))

        return emit

    def cancel(self) -> None:
        for r in self.requests:
            r.cancelled.set()

    async def events(self, request: Request) -> AsyncIterator[tuple[int, TokenEvent]]:
        """Events until every choice finished; cancels the work if the client goes away or time runs out."""
        deadline = time.monotonic() + self.timeout
        running = len(self.requests)
        while running:
            try:
                i, item = await asyncio.wait_for(self.queue.get(), timeout=min(0.5, deadline - time.monotonic()))
            except TimeoutError:
                if await request.is_disconnected():
                    self.cancel()
                    return
                if time.monotonic() >= deadline:
                    self.cancel()
                    message = f"the request ran past the timeout of {self.timeout:.0f} s"
                    raise APIError(504, message, kind="timeout") from None
                continue
            if isinstance(item, BaseException):
                self.cancel()
                raise APIError(500, f"generation failed: {type(item).__name__}: {item}", kind="server_error")
            if item.finished is not None:
                running -= 1
            yield i, item

    async def collect(self, request: Request) -> list[tuple[Completion, list[TokenEvent]]]:
        events: list[list[TokenEvent]] = [[] for _ in self.requests]
        done: list[Completion | None] = [None] * len(self.requests)
        async for i, event in self.events(request):
            events[i].append(event)
            if event.finished is not None:
                done[i] = event.finished
        if any(c is None for c in done):
            raise APIError(499, "client closed the request", kind="cancelled")
        return [(c, e) for c, e in zip(done, events, strict=True) if c is not None]

    def usage(self) -> dict[str, int]:
        generated = sum(r.tokens for r in self.requests)  # counted by the scheduler, the stop token included
        return {"prompt_tokens": len(self.prompt), "completion_tokens": generated,
                "total_tokens": len(self.prompt) + generated}  # fmt: skip

    async def guard(self, stream: AsyncIterator[str]) -> AsyncIterator[str]:
        """A streamed body that cancels the generation when it stops early (client gone, error)."""
        async for item in _guard_all([self], stream):
            yield item


async def _guard_all(jobs: list[_Job], stream: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for item in stream:
            yield item
    except APIError as e:  # headers are sent already: the error goes in the stream
        yield _sse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}})
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            job.cancel()


def _sum_usage(jobs: list[_Job]) -> dict[str, int]:
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for job in jobs:
        for k, v in job.usage().items():
            totals[k] += v
    return totals


def _submit(scheduler: Scheduler, body: Any, prompt: list[int], options: ServeOptions, *,
            constraint: JsonConstraint | None = None, logprobs: bool, top_logprobs: int) -> _Job:  # fmt: skip
    try:
        scheduler.check(prompt)
    except HerdError as e:
        raise APIError(400, str(e), param="messages", code="context_length_exceeded") from None
    try:
        params = body.sampling_params(scheduler.max_seq_len - len(prompt), logprobs=logprobs)
    except HerdError as e:
        raise APIError(400, str(e), param="stop") from None
    if constraint is not None and body.n > 1:
        raise APIError(400, "n > 1 with a forced tool call or JSON response format is not supported", param="n")
    job = _Job(prompt, params, options.request_timeout, presence_penalty=body.presence_penalty,
               frequency_penalty=body.frequency_penalty, top_logprobs=top_logprobs, constraint=constraint)  # fmt: skip
    submitted = []
    try:
        for r in job.requests:
            scheduler.submit(r)
            submitted.append(r)
    except QueueFull as e:
        for r in submitted:
            r.cancelled.set()
        raise _busy(e) from None
    return job


def _busy(e: QueueFull) -> APIError:
    return APIError(429, f"server busy: {e}", kind="rate_limit_error", headers={"Retry-After": "1"})


# ---------------------------------------------------------------------------------------------
# Response pieces


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _token_entry(tokenizer: Any, token: int, logprob: float) -> dict[str, Any]:
    text = tokenizer.decode([token])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def _chat_logprob(tokenizer: Any, event: TokenEvent) -> dict[str, Any]:
    entry = _token_entry(tokenizer, event.token, event.logprob if event.logprob is not None else 0.0)
    entry["top_logprobs"] = [_token_entry(tokenizer, t, lp) for t, lp in event.top_logprobs or []]
    return entry


def _completion_logprobs(tokenizer: Any, events: list[TokenEvent], start: int = 0) -> dict[str, Any]:
    """The completions API's logprobs of `events`; text_offset counts from `start` characters into the text."""
    kept = [e for e in events if e.token >= 0]
    tokens = [tokenizer.decode([e.token]) for e in kept]
    offsets, at = [], start
    for t in tokens:
        offsets.append(at)
        at += len(t)
    top = [{tokenizer.decode([t]): lp for t, lp in e.top_logprobs or []} for e in kept]
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in kept], "top_logprobs": top, "text_offset": offsets}
