"""The OpenAI API requests herd serves, as pydantic models: what FastAPI validates and what /openapi.json shows.

Field names, types and ranges follow OpenAI's API reference. `top_k` and `repetition_penalty` are extensions (as in
vLLM). Unknown fields are ignored, as OpenAI-compatible servers do, so newer clients keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from herd.errors import InferenceError
from herd.inference.sampling import SamplingParams

MAX_N = 16
"""Most choices per request."""
MAX_STOP = 4
"""Most stop strings per request (OpenAI's limit)."""
SAMPLING_FLOOR = 1e-6
"""The sampler works in float32: a far tinier temperature or repetition penalty overflows the logits it divides to
inf, and a top_p rounds to 0 and drops every token (NaN probabilities). At this floor each setting has its limit
effect already: greedy for temperature (as in vLLM), only the top token (p >= 1/vocab) for top_p."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionDef(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """JSON schema of the arguments."""


class ToolDef(_Model):
    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionCall(_Model):
    name: str
    arguments: str
    """JSON text, as OpenAI sends it."""


class ToolCall(_Model):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool", "ipython"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class NamedFunction(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(_Model):
    name: str = "response"
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class _Sampling(_Model):
    model: str | None = None
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    """Default 1.0, as OpenAI's; 0 is greedy."""
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    top_k: Annotated[int | None, Field(ge=0)] = None
    repetition_penalty: Annotated[float | None, Field(gt=0)] = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def sampling_params(self, room: int, *, logprobs: bool) -> list[SamplingParams]:
        """herd's settings for each of the n choices, with at most `room` new tokens (what the context leaves).
        Choice i > 0 gets seed + i, so the choices differ and choice 0 is what the request gives alone."""
        wanted = getattr(self, "max_completion_tokens", None) or self.max_tokens or room
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not s for s in stop):
            raise InferenceError("stop strings must not be empty")
        temperature = 1.0 if self.temperature is None else self.temperature
        return [
            SamplingParams(
                max_new_tokens=min(wanted, room),
                temperature=temperature if temperature >= SAMPLING_FLOOR else 0.0,
                top_p=1.0 if self.top_p is None else max(self.top_p, SAMPLING_FLOOR),
                top_k=self.top_k or 0,
                repetition_penalty=max(self.repetition_penalty or 1.0, SAMPLING_FLOOR),
                stop=stop,
                seed=None if self.seed is None else self.seed + i,
                logprobs=logprobs,
            )
            for i in range(self.n)
        ]


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    logprobs: bool = False
    top_logprobs: Annotated[int | None, Field(ge=0, le=20)] = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: Annotated[int | None, Field(ge=0, le=20)] = None
    echo: bool = False


class TokenizeRequest(_Model):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True
