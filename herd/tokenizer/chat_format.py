"""Llama 3 / 3.1 dialogs: messages with tool calls, the 3.1 tool system prompt, encoding, decoding, loss masks.

Token layout (Meta's `llama_models.llama3.chat_format.ChatFormat`, and the 3.1 prompt-format guide that ships
with llama-models as `llama3_1/prompt_format.md`):

    <|begin_of_text|>
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>     per message; role "tool" is "ipython"
    <|start_header_id|>assistant<|end_header_id|>\\n\\n                     open turn for the model

An assistant turn that calls a tool ends with <|eom_id|> (end of message: the executor runs the call and answers
in an ipython turn) instead of <|eot_id|>. Built-in calls are `brave_search.call(query="...")`, code-interpreter
calls are Python after <|python_tag|>, custom tools are JSON. Every piece of text is encoded as ordinary text, so
a user who types "<|eot_id|>" cannot end a turn.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from herd.errors import TokenizerError
from herd.tokenizer.llama3 import Llama3Tokenizer

ROLES = ("system", "user", "assistant", "ipython")
ROLE_ALIASES = {"tool": "ipython"}  # OpenAI / llama-models name for the tool-result turn
STOP_REASONS = ("end_of_turn", "end_of_message", "out_of_tokens")
SEARCH_TOOLS = ("brave_search", "wolfram_alpha", "photogen")  # built-ins called as name.call(query="...")
CODE_INTERPRETER = "code_interpreter"
BUILTIN_TOOLS = (*SEARCH_TOOLS, CODE_INTERPRETER)
CUSTOM_FORMATS = ("json", "function_tag", "python_list")

_BUILTIN_CALL = re.compile(r'\b(?P<name>\w+)\.call\(query="(?P<query>[^"]*)"\)')
_FUNCTION_TAG_CALL = re.compile(r"<function=(?P<name>[^}]+)>(?P<args>{.*?})")


@dataclass
class ToolCall:
    name: str
    """A built-in (brave_search, wolfram_alpha, photogen, code_interpreter) or a custom function name."""
    arguments: dict[str, Any]
    """{"query": ...} for search tools, {"code": ...} for the code interpreter, the function's arguments otherwise."""
    call_id: str | None = None
    """Not part of the prompt; kept for callers that match results to calls."""


@dataclass
class Message:
    role: str
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    stop_reason: str | None = None
    """Assistant turns: "end_of_message" ends with <|eom_id|> (waiting for a tool result), else <|eot_id|>."""
    context: str | None = None
    """Retrieved text appended to a user turn (Meta's reference encodes it after a blank line)."""

    def __post_init__(self) -> None:
        for name in ("role", "stop_reason", "context"):  # dialogs are files: a list here must not reach a dict lookup
            value = getattr(self, name)
            if not (isinstance(value, str) or (value is None and name != "role")):
                raise TokenizerError(f"message {name} must be a string, got {type(value).__name__}")
        self.role = ROLE_ALIASES.get(self.role, self.role)
        if self.role not in ROLES:
            raise TokenizerError(f"role {self.role!r} is not one of {', '.join(ROLES)} (or 'tool')")
        if not isinstance(self.content, str):
            raise TokenizerError(f"{self.role} message: content must be a string, got {type(self.content).__name__}")
        if self.stop_reason is not None and self.stop_reason not in STOP_REASONS:
            raise TokenizerError(f"stop_reason {self.stop_reason!r} is not one of {', '.join(STOP_REASONS)}")
        if self.tool_calls and self.role != "assistant":
            raise TokenizerError(f"{self.role} message has tool_calls; only assistant messages call tools")

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, index: int | None = None) -> Message:
        """Accepts herd's form ({"name", "arguments"} calls) and OpenAI's ({"function": {"name", "arguments"}})."""
        where = f"message {index}: " if index is not None else ""
        if not isinstance(d, dict) or "role" not in d:
            raise TokenizerError(f"{where}expected a dict with a role, got {d!r:.80}")
        calls = []
        for call in d.get("tool_calls") or []:
            fn = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(fn, dict) or "name" not in fn:
                raise TokenizerError(f"{where}tool call {call!r:.80} has no name")
            args = fn.get("arguments", {})
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError as e:
                    raise TokenizerError(f"{where}tool call {fn['name']!r}: arguments are not JSON ({e})") from None
            if not isinstance(fn["name"], str) or not isinstance(args, dict):
                raise TokenizerError(f"{where}tool call {fn!r:.80}: expected a string name and an object of arguments")
            calls.append(ToolCall(name=fn["name"], arguments=args, call_id=call.get("id", call.get("call_id"))))
        try:
            return cls(
                role=d["role"],
                content=d.get("content") or "",
                tool_calls=calls,
                stop_reason=d.get("stop_reason"),
                context=d.get("context"),
            )
        except TokenizerError as e:
            raise TokenizerError(f"{where}{e}") from None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = [{"name": c.name, "arguments": c.arguments} for c in self.tool_calls]
        if self.stop_reason is not None:
            d["stop_reason"] = self.stop_reason
        if self.context is not None:
            d["context"] = self.context
        return d


# ---------------------------------------------------------------------------------------------
# Prompt text for tools


def system_prompt(
    *,
    tools: Sequence[str] = (),
    custom_tools: bool = False,
    knowledge_cutoff: str | None = "December 2023",
    today: date | str | None = None,
    instructions: str = "",
) -> str:
    """The Llama 3.1 system message that turns tools on.

    `tools` names built-ins; any tool (or `custom_tools`) adds "Environment: ipython", which also enables the code
    interpreter; search tools are listed on the "Tools:" line. The date lines follow when a cutoff or today's date
    is given (a str is used as is; a date is written like "21 September 2024").
    """
    if unknown := [t for t in tools if t not in BUILTIN_TOOLS]:
        raise TokenizerError(f"unknown built-in tools {unknown}; built-ins are {', '.join(BUILTIN_TOOLS)}")
    text = ""
    if tools or custom_tools:
        search = [t for t in tools if t != CODE_INTERPRETER]
        text += "Environment: ipython\n" + (f"Tools: {', '.join(search)}\n" if search else "\n")
    dated = []
    if knowledge_cutoff:
        dated.append(f"Cutting Knowledge Date: {knowledge_cutoff}")
    if today is not None:
        dated.append(f"Today Date: {today if isinstance(today, str) else today.strftime('%d %B %Y')}")
    text += "\n".join(dated)
    if instructions:
        text = f"{text}\n\n{instructions}" if text else instructions
    return text


def custom_tools_prompt(functions: Sequence[dict[str, Any]], fmt: str = "json") -> str:
    """User-turn instructions that describe custom tools (the 3.1 guide puts them in the first user message).

    `functions`: {"name", "description", "parameters"} definitions, as in OpenAI's function tools.
    """
    if fmt == "json":
        defs = "\n".join(_pretty_json({"type": "function", "function": f}) for f in functions)
        return (
            "Answer the user's question by making use of the following functions if needed.\n"
            "If none of the function can be used, please say so.\n"
            f"Here is a list of functions in JSON format:\n{defs}\n\nReturn function calls in JSON format."
        )
    if fmt == "function_tag":
        uses = "\n".join(
            f"Use the function '{f['name']}' to '{f.get('description', '')}':\n{json.dumps(f)}\n" for f in functions
        )
        return (
            f"You have access to the following functions:\n\n{uses}\n"
            "Think very carefully before calling functions.\n"
            "If you choose to call a function ONLY reply in the following format with no prefix or suffix:\n\n"
            '<function=example_function_name>{"example_name": "example_value"}</function>\n\n'
            "Reminder:\n"
            "- If looking for real time information use relevant functions before falling back to brave_search\n"
            "- Function calls MUST follow the specified format, start with <function= and end with </function>\n"
            "- Required parameters MUST be specified\n"
            "- Only call one function at a time\n"
            "- Put the entire function call reply on one line"
        )
    raise TokenizerError(f"custom tool prompt format {fmt!r} is not one of json, function_tag")


def _pretty_json(value: Any, level: int = 0) -> str:
    """JSON indented by 4 like the 3.1 guide prints tool definitions: objects and lists of objects span lines,
    lists of plain values stay on one line."""
    pad, inner = " " * 4 * level, " " * 4 * (level + 1)
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(k)}: {_pretty_json(v, level + 1)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(f"{inner}{_pretty_json(v, level + 1)}" for v in value) + f"\n{pad}]"
    return json.dumps(value)


def format_tool_call(call: ToolCall, fmt: str = "json") -> str:
    """The text of a tool call as the model writes it."""
    # The built-in tools' forms hold one argument; a call without it (or with another type) cannot be written.
    builtin = "query" if call.name in SEARCH_TOOLS else "code" if call.name == CODE_INTERPRETER else None
    args = call.arguments if isinstance(call.arguments, dict) else {}
    if builtin is not None and not isinstance(args.get(builtin), str):
        raise TokenizerError(f"a {call.name} call needs a string {builtin!r} argument, got {call.arguments!r:.80}")
    if call.name in SEARCH_TOOLS:
        return f'{call.name}.call(query="{call.arguments["query"]}")'
    if call.name == CODE_INTERPRETER:
        return call.arguments["code"]
    if fmt == "json":
        return json.dumps({"type": "function", "name": call.name, "parameters": call.arguments})
    if fmt == "function_tag":
        return f"<function={call.name}>{json.dumps(call.arguments)}</function>"
    if fmt == "python_list":
        return f"[{call.name}({', '.join(f'{k}={_python_value(v)}' for k, v in call.arguments.items())})]"
    raise TokenizerError(f"tool call format {fmt!r} is not one of {', '.join(CUSTOM_FORMATS)}")


def _python_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return f"[{', '.join(_python_value(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_python_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def parse_tool_call(text: str, *, python_tag: bool) -> ToolCall | None:
    """The tool call an assistant wrote, or None. Never raises: anything malformed is not a call.

    Order as in Meta's reference: custom calls (<function=...>, a JSON object with a name, a Python list of calls),
    then built-in `name.call(query="...")`, then, after <|python_tag|>, code for the interpreter. Unlike the
    reference, text after <|python_tag|> that looks like JSON or a function tag but does not parse is left as
    content rather than sent to the code interpreter.
    """
    custom = _parse_custom_call(text)
    if custom is not None:
        name, args = custom
        if name in SEARCH_TOOLS and args:  # built-in tools called in the custom format
            return ToolCall(name=name, arguments={"query": next(iter(args.values()))})
        return ToolCall(name=name, arguments=args)
    if (m := _BUILTIN_CALL.search(text)) is not None:
        return ToolCall(name=m.group("name"), arguments={"query": m.group("query")})
    stripped = text.strip()
    if python_tag and stripped and not stripped.startswith(("{", "<function=")):
        return ToolCall(name=CODE_INTERPRETER, arguments={"code": text})
    return None


def _parse_custom_call(text: str) -> tuple[str, dict[str, Any]] | None:
    if (m := _FUNCTION_TAG_CALL.search(text)) is not None:
        try:
            args = json.loads(m.group("args").replace("'", '"'))
        except json.JSONDecodeError:
            return None
        return (m.group("name"), args) if isinstance(args, dict) else None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        if (obj.get("type") == "function" or "name" in obj) and isinstance(obj.get("name"), str):
            params = obj.get("parameters", obj.get("arguments", {}))
            return (obj["name"], params) if isinstance(params, dict) else None
        return None
    return _parse_python_call_list(text)


def _parse_python_call_list(text: str) -> tuple[str, dict[str, Any]] | None:
    """`[name(a=1, b="x")]`: the first call of a Python list of keyword-only calls."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    calls = tree.body.elts if isinstance(tree.body, ast.List) else []
    if not calls or not all(isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and not c.args for c in calls):
        return None
    first = calls[0]
    assert isinstance(first, ast.Call) and isinstance(first.func, ast.Name)  # checked for every call above
    kwargs = [(kw.arg, kw.value) for kw in first.keywords if kw.arg is not None]
    if len(kwargs) < len(first.keywords):  # f(**mapping) is not a keyword-only call (its keyword has no name)
        return None
    try:
        return first.func.id, {name: ast.literal_eval(value) for name, value in kwargs}
    except (ValueError, TypeError, SyntaxError):
        return None


# ---------------------------------------------------------------------------------------------
# Encoding and decoding


class ChatFormat:
    """Encode dialogs for a Llama 3 tokenizer, and decode assistant turns back into messages.

    tool_format: how custom tool calls are written (json, function_tag or python_list).
    python_tag_all_calls: Meta's reference encoder writes <|python_tag|> only before code-interpreter calls, while
        the 3.1 guide shows the model writing it before every built-in and JSON call. The default follows the
        reference (token-identical); True encodes what the model itself emits.
    """

    def __init__(
        self, tokenizer: Llama3Tokenizer, *, tool_format: str = "json", python_tag_all_calls: bool = False
    ) -> None:
        if tool_format not in CUSTOM_FORMATS:
            raise TokenizerError(f"tool_format {tool_format!r} is not one of {', '.join(CUSTOM_FORMATS)}")
        self.tokenizer = tokenizer
        self.tool_format = tool_format
        self.python_tag_all_calls = python_tag_all_calls
        special = tokenizer.special_tokens
        self.start_header, self.end_header = special["<|start_header_id|>"], special["<|end_header_id|>"]
        self.eot, self.eom, self.python_tag = special["<|eot_id|>"], special["<|eom_id|>"], special["<|python_tag|>"]

    def encode_header(self, role: str) -> list[int]:
        role = ROLE_ALIASES.get(role, role)
        return [self.start_header, *self.tokenizer.encode(role), self.end_header, *self.tokenizer.encode("\n\n")]

    def encode_message(self, message: Message) -> tuple[list[int], list[int]]:
        """(header tokens, body tokens); the body ends with <|eot_id|> or <|eom_id|>."""
        encode = self.tokenizer.encode
        body: list[int] = []
        calls = message.tool_calls if message.role == "assistant" else []
        if calls and (self.python_tag_all_calls or calls[0].name == CODE_INTERPRETER):
            body.append(self.python_tag)
        # Pieces are encoded one by one, as the reference does: BPE never merges across their boundaries.
        body += encode(message.content)
        if message.role == "user" and message.context is not None:
            body += encode("\n\n") + encode(message.context)
        for call in calls:
            body += encode(format_tool_call(call, self.tool_format))
        end_of_message = message.role == "assistant" and message.stop_reason == "end_of_message"
        body.append(self.eom if end_of_message else self.eot)
        return self.encode_header(message.role), body

    def encode_dialog_prompt(self, messages: Sequence[Message]) -> list[int]:
        """The dialog followed by an open assistant header, for the model to complete."""
        tokens = [self.tokenizer.bos_id]
        for message in messages:
            header, body = self.encode_message(message)
            tokens += header + body
        return tokens + self.encode_header("assistant")

    def encode_dialog(self, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
        """A finished dialog and its loss mask: True on the tokens an assistant wrote (body and end token), which
        are the training targets; headers, bos and every other role are context."""
        tokens, mask = [self.tokenizer.bos_id], [False]
        for message in messages:
            header, body = self.encode_message(message)
            tokens += header + body
            mask += [False] * len(header) + [message.role == "assistant"] * len(body)
        return tokens, mask

    def decode_assistant_message(self, tokens: Sequence[int], stop_reason: str | None = None) -> Message:
        """An assistant turn from generated tokens (the header is optional; a final eot/eom sets stop_reason)."""
        return parse_assistant_text(self.tokenizer.decode(tokens), stop_reason)


def parse_assistant_text(text: str, stop_reason: str | None = None) -> Message:
    content = text.strip(" ")
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    content = content.removeprefix(header)
    python_tag = content.startswith("<|python_tag|>")
    content = content.removeprefix("<|python_tag|>")
    if content.endswith("<|eot_id|>"):
        content, stop_reason = content.removesuffix("<|eot_id|>"), "end_of_turn"
    elif content.endswith("<|eom_id|>"):
        content, stop_reason = content.removesuffix("<|eom_id|>"), "end_of_message"
    call = parse_tool_call(content, python_tag=python_tag)
    if call is None:
        return Message(role="assistant", content=content, stop_reason=stop_reason)
    return Message(role="assistant", content="", tool_calls=[call], stop_reason=stop_reason)
