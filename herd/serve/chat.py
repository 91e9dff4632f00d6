"""OpenAI chat messages and tools -> the model's prompt, and the model's text -> content or tool calls.

Two tool formats, picked by the tokenizer:
- "llama3" (Meta's tokenizer): Llama 3.1's own. Function tools are offered as JSON in the system prompt
  ("Environment: ipython"), functions named brave_search / wolfram_alpha / code_interpreter turn on the built-ins;
  the model answers `{"name": ..., "parameters": ...}` or `<|python_tag|>` calls, tool results go back in the
  ipython role (`herd.tokenizer.chat_format`).
- "json" (Jinja chat templates): a template that takes `tools` gets them as is; otherwise (SmolLM2's template)
  herd's JSON tool prompt goes into the system message, a call is a bare JSON object {"name", "arguments"} and
  assistant calls in the history are written back the same way.

Everything a client sends is text: control-token strings in a message stay text (the tokenizers encode message
content without matching special tokens).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from herd.errors import ToolError
from herd.serve.schemas import ChatMessage, ToolDef
from herd.tokenizer import Llama3Tokenizer, Tokenizer
from herd.tokenizer.chat_format import BUILTIN_TOOLS, custom_tools_prompt, parse_assistant_text, system_prompt
from herd.tools.calls import Tool, read_tool_call, tool_system_prompt


def tool_format(tokenizer: Tokenizer) -> str:
    return "llama3" if isinstance(tokenizer, Llama3Tokenizer) else "json"


def _call_dict(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def _arguments(text: str, where: str) -> dict[str, Any]:
    try:
        args = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise ToolError(f"{where}: function arguments are not JSON ({e.msg})") from None
    if not isinstance(args, dict):
        raise ToolError(f"{where}: function arguments must be a JSON object")
    return args


def messages_for_template(messages: list[ChatMessage], fmt: str) -> list[dict[str, Any]]:
    """herd's message dicts: roles mapped (developer -> system), text parts joined, tool calls as the format writes
    them. Raises ToolError (the server answers 400) for arguments that are not a JSON object."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = {"developer": "system", "ipython": "tool"}.get(m.role, m.role)
        d: dict[str, Any] = {"role": role, "content": m.text()}
        calls = [
            _call_dict(c.function.name, _arguments(c.function.arguments, f"messages[{i}].tool_calls"))
            for c in m.tool_calls or []
        ]
        if calls and role == "assistant":
            if fmt == "llama3":
                d["tool_calls"] = calls
                d["stop_reason"] = "end_of_message" if calls[0]["name"] in BUILTIN_TOOLS else None
                d = {k: v for k, v in d.items() if v is not None}
            else:  # a template without tool support sees the call as the text the model wrote
                d["content"] = "\n".join(json.dumps(c) for c in calls)
        out.append(d)
    return out


def _tool_prompt(functions: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        tools = [
            Tool(f["name"], f.get("description") or "", f.get("parameters") or {}, _client_runs) for f in functions
        ]
        return tool_system_prompt(tools, "json")
    builtins = [f["name"] for f in functions if f["name"] in BUILTIN_TOOLS]
    custom = [f for f in functions if f["name"] not in BUILTIN_TOOLS]
    return system_prompt(
        tools=builtins, custom_tools=bool(custom), instructions=custom_tools_prompt(custom) if custom else ""
    )


def _client_runs(**_: Any) -> str:
    raise ToolError("function tools run on the client, not in the server")


def encode_chat(
    tokenizer: Tokenizer, messages: list[ChatMessage], tools: list[ToolDef] | None, *, prefix: str = ""
) -> list[int]:
    """Prompt ids for the dialog with `tools` offered (None: no tools) and an open assistant turn, followed by
    `prefix` (text the answer is made to start with: the server writes the opening of a forced tool call)."""
    fmt = tool_format(tokenizer)
    dialog = messages_for_template(messages, fmt)
    variables: dict[str, Any] = {}
    if tools:
        functions = [t.function.model_dump(exclude_none=True) for t in tools]
        if tokenizer.supports_tools:
            variables["tools"] = [t.model_dump(exclude_none=True) for t in tools]
        else:
            text = _tool_prompt(functions, fmt)
            if dialog and dialog[0]["role"] == "system":
                dialog[0] = {**dialog[0], "content": f"{text}\n\n{dialog[0]['content']}".rstrip()}
            else:
                dialog.insert(0, {"role": "system", "content": text})
    ids = tokenizer.encode_chat(dialog, **variables)
    return ids + tokenizer.encode(prefix) if prefix else ids


def call_prefix(name: str, fmt: str) -> str:
    """The opening the server writes for a call to `name` (the arguments object follows, constrained)."""
    key = "parameters" if fmt == "llama3" else "arguments"
    return f'{{"name": {json.dumps(name)}, "{key}": '


def parse_tool_calls(text: str, fmt: str, names: set[str]) -> list[dict[str, Any]]:
    """OpenAI `tool_calls` from the model's text, or [] when it is not a call to one of `names` (then the text is
    the answer's content). Never raises: malformed calls are content."""
    try:
        if fmt == "llama3":
            message = parse_assistant_text(text)
            calls = [_call_dict(c.name, c.arguments) for c in message.tool_calls]
        else:
            calls = [read_tool_call(text, "json")]
    except (ToolError, ValueError):
        return []
    if not calls or any(c["name"] not in names for c in calls):
        return []
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
        }
        for c in calls
    ]
