"""The tool-call protocol: tool definitions, the system prompt that offers them, reading a call out of a model's
text, checking its arguments against the tool's JSON schema, and executing it.

A call is `{"name": str, "arguments": dict}` whatever the chat format; a tool is a `Tool` (name, description,
JSON-schema parameters and the function that runs a call). Two chat formats:
- "llama3": Meta's Llama 3.1 format. code_interpreter and search (named brave_search, the built-in the model knows)
  are turned on by the system prompt's "Environment: ipython" / "Tools:" lines; custom tools are described as
  JSON. Built-in calls end the turn with <|eom_id|> (stop_reason "end_of_message"), as in Meta's prompt guide.
  Rendering and parsing the turns themselves is `herd.tokenizer.chat_format`'s job.
- "json": any chat template. Every tool is a JSON schema in the system message, a call is a bare JSON object
  {"name", "arguments"} as the assistant's text, the result comes back in a "tool" turn.

The built-in tools (code interpreter, search, small JSON tools) are in `herd.tools.builtin`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from herd.errors import ToolError
from herd.tokenizer.chat_format import BUILTIN_TOOLS, custom_tools_prompt, parse_assistant_text, system_prompt

FORMATS = ("json", "llama3")


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the arguments: {"type": "object", "properties": {...}, "required": [...]}."""
    run: Callable[..., str]
    """Executes a call (arguments as keywords) and returns the result text; raises ToolError."""

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: expected one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------
# System prompts


_JSON_TOOLS_PROMPT = (
    "You can use these tools, each described by a JSON schema:\n{tools}\n\n"
    'To call a tool, reply with only a JSON object {{"name": <tool name>, "arguments": {{<argument>: <value>}}}} '
    "and nothing else. The result comes back in a tool message; then answer the user from it. "
    "If no tool is needed, answer directly."
)


def tool_system_prompt(tools: Iterable[Tool], fmt: str) -> str:
    """The system message that offers `tools` in chat format `fmt`."""
    check_format(fmt)
    tools = list(tools)
    if fmt == "json":
        return _JSON_TOOLS_PROMPT.format(tools="\n".join(json.dumps(t.spec()) for t in tools))
    builtins = [t.name for t in tools if t.name in BUILTIN_TOOLS]
    custom = [t.spec() for t in tools if t.name not in BUILTIN_TOOLS]
    instructions = custom_tools_prompt(custom) if custom else ""
    return system_prompt(tools=builtins, custom_tools=bool(custom), instructions=instructions)


# ---------------------------------------------------------------------------------------------
# Parsing, checking and executing calls


_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def parse_tool_call(text: str, fmt: str) -> dict[str, Any] | None:
    """{"name", "arguments"} of the tool call in a model response, or None when it is not exactly one call.

    json: the stripped response (a ```json fence allowed) is one JSON object with "name" and "arguments" (or
    "parameters"). llama3: the response read as a Llama 3.1 assistant turn (`parse_assistant_text`).
    """
    try:
        return read_tool_call(text, fmt)
    except ToolError:
        return None


def read_tool_call(text: str, fmt: str) -> dict[str, Any]:
    """`parse_tool_call` that raises ToolError, saying why, when the response is not exactly one call."""
    check_format(fmt)
    if fmt == "llama3":
        message = parse_assistant_text(text)
        if not message.tool_calls:
            raise ToolError(f"no tool call in the response {text!r:.60}")
        call = message.tool_calls[0]
        return {"name": call.name, "arguments": call.arguments}
    text = text.strip()
    if (fence := _FENCE.fullmatch(text)) is not None:
        text = fence.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ToolError(f"response is not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ToolError(f"response {text!r:.60} is not a JSON object with a string 'name'")
    args = obj.get("arguments", obj.get("parameters"))
    if isinstance(args, str):  # OpenAI writes arguments as a JSON string
        with contextlib.suppress(json.JSONDecodeError):
            args = json.loads(args)
    if not isinstance(args, dict):
        raise ToolError(f"call to {obj['name']!r} has no 'arguments' object")
    return {"name": obj["name"], "arguments": args}


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "number": (int, float),
    "integer": int,
    "boolean": bool,
    "object": dict,
    "array": list,
}


def _has_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind != "boolean":  # bool is an int in Python, not in JSON
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, _JSON_TYPES[kind])


def check_arguments(tool: Tool, arguments: Any) -> None:
    """Raises ToolError unless `arguments` fit the tool's schema: required present, no unknown keys, types and
    enums right."""
    if not isinstance(arguments, dict):
        raise ToolError(f"{tool.name}: arguments must be an object, got {type(arguments).__name__}")
    properties = tool.parameters.get("properties", {})
    if unknown := sorted(arguments.keys() - properties.keys()):
        raise ToolError(f"{tool.name}: unknown arguments {unknown}; expected {sorted(properties)}")
    if missing := [key for key in tool.parameters.get("required", []) if key not in arguments]:
        raise ToolError(f"{tool.name}: missing required arguments {missing}")
    for key, value in arguments.items():
        spec = properties[key]
        if not _has_type(value, spec["type"]):
            raise ToolError(f"{tool.name}: argument {key}={value!r:.40} is not a {spec['type']}")
        if "enum" in spec and value not in spec["enum"]:
            raise ToolError(f"{tool.name}: argument {key}={value!r:.40} is not one of {spec['enum']}")


def execute_tool_call(call: Mapping[str, Any], tools: Mapping[str, Tool]) -> str:
    """The result text of `call` ({"name", "arguments"}) after checking it against the tool's schema; raises
    ToolError for an unknown tool, bad arguments or a failed execution."""
    tool = tools.get(call["name"])
    if tool is None:
        raise ToolError(f"unknown tool {call['name']!r}; tools are {', '.join(tools)}")
    check_arguments(tool, call["arguments"])
    return tool.run(**call["arguments"])
