"""The agent loop of Llama 3.1's built-in tools: the model calls a tool, herd runs it and feeds the result back,
until the model answers in words (`herd agent`, and `herd serve --builtin-tools` server-side).

Built-ins:
- code_interpreter: Python in herd's sandbox (`herd.tools.sandbox`);
- search (brave_search in the Llama 3 format): Brave Search when BRAVE_API_KEY is set, otherwise the offline SQLite
  FTS5 index `herd index build` made (`herd.tools.index`);
- wolfram_alpha: offered when WOLFRAM_API_KEY is set; a call without the key gets an error result that says so.

A tool's failure is the tool's result ("error: ..."), as an executor would report it, so the model can recover.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import ToolError
from herd.tokenizer.chat_format import system_prompt
from herd.tools.builtin import code_interpreter
from herd.tools.calls import Tool, check_arguments, parse_tool_call, tool_system_prompt
from herd.tools.index import FtsIndex
from herd.tools.web import brave_search, wolfram_alpha

MAX_RESULT_CHARS = 4000
"""Results are cut to this many characters before they go back into the context."""


def _query_schema(description: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"query": {"type": "string", "description": description}},
            "required": ["query"]}  # fmt: skip


@dataclass
class Step:
    """One executed call: what the model asked and what it got back."""

    name: str
    arguments: dict[str, Any]
    result: str


class BuiltinTools:
    """The built-ins an agent offers, with their executors. Keys default to the environment's."""

    def __init__(
        self,
        *,
        index: str | Path | None = None,
        brave_key: str | None = None,
        wolfram_key: str | None = None,
        code: bool = True,
    ) -> None:
        # An empty key (given or in the environment) is no key: tests and users switch a backend off with "".
        self.brave_key = (os.environ.get("BRAVE_API_KEY") if brave_key is None else brave_key) or None
        self.wolfram_key = (os.environ.get("WOLFRAM_API_KEY") if wolfram_key is None else wolfram_key) or None
        self.index = FtsIndex(index) if index is not None and self.brave_key is None else None
        self.code = code

    def tools(self, fmt: str) -> list[Tool]:
        """The tools to offer in chat format `fmt` ("llama3" names search brave_search, the name 3.1 knows)."""
        offered = []
        if self.code:
            offered.append(Tool("code_interpreter", "Run Python code and return what it prints to stdout.",
                                {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
                                code_interpreter))  # fmt: skip
        if self.brave_key is not None or self.index is not None:
            name = "brave_search" if fmt == "llama3" else "search"
            offered.append(Tool(name, "Search the web and return the best results (title, snippet, url).",
                                _query_schema("Search terms."), self._search))  # fmt: skip
        if self.wolfram_key is not None:
            offered.append(Tool("wolfram_alpha", "Ask Wolfram Alpha to compute or look up a fact.",
                                _query_schema("A question or expression."), self._wolfram))  # fmt: skip
        return offered

    def system_prompt(self, fmt: str) -> str:
        if fmt == "llama3":  # built-ins are switched on by name; the model knows how to call them
            return system_prompt(tools=[t.name for t in self.tools(fmt)])
        return tool_system_prompt(self.tools(fmt), "json")

    def execute(self, name: str, arguments: dict[str, Any], fmt: str) -> str:
        """The result text of a call; failures are results too ("error: ...")."""
        tools = {t.name: t for t in self.tools(fmt)}
        try:
            if name in ("search", "brave_search") and name not in tools:
                raise ToolError("search needs BRAVE_API_KEY or an index (`herd index build`, then --index)")
            if name == "wolfram_alpha" and name not in tools:
                raise ToolError("wolfram_alpha needs WOLFRAM_API_KEY")
            tool = tools.get(name)
            if tool is None:
                raise ToolError(f"unknown tool {name!r}; tools are {', '.join(tools) or 'none'}")
            check_arguments(tool, arguments)
            result = tool.run(**arguments)
        except ToolError as e:
            result = f"error: {e}"
        return result if len(result) <= MAX_RESULT_CHARS else result[:MAX_RESULT_CHARS] + "\n[result truncated]"

    def _search(self, query: str) -> str:
        if self.brave_key is not None:
            return json.dumps(brave_search(query, self.brave_key))
        assert self.index is not None  # offered only with a key or an index
        return json.dumps(self.index.search(query))

    def _wolfram(self, query: str) -> str:
        assert self.wolfram_key is not None  # offered only with a key
        return wolfram_alpha(query, self.wolfram_key)


def call_messages(name: str, arguments: dict[str, Any], result: str, fmt: str) -> list[dict[str, Any]]:
    """The assistant's call and the tool's answer as dialog messages of format `fmt`."""
    if fmt == "llama3":
        call = {"role": "assistant", "tool_calls": [{"name": name, "arguments": arguments}],
                "stop_reason": "end_of_message"}  # fmt: skip
    else:
        call = {"role": "assistant", "content": json.dumps({"name": name, "arguments": arguments})}
    return [call, {"role": "tool", "content": result}]


def run_agent(
    complete: Callable[[list[dict[str, Any]]], str],
    messages: list[dict[str, Any]],
    tools: BuiltinTools,
    fmt: str,
    *,
    max_steps: int = 6,
    on_step: Callable[[Step], None] | None = None,
) -> tuple[str, list[Step]]:
    """Run the loop from `messages` (the system prompt offering `tools` is added first): `complete` gives the
    model's next turn as text. Returns the final answer and the executed steps; after `max_steps` calls the
    model answers without tools."""
    dialog = [{"role": "system", "content": tools.system_prompt(fmt)}, *messages]
    if messages and messages[0].get("role") == "system":
        dialog = [{"role": "system", "content": f"{dialog[0]['content']}\n\n{messages[0]['content']}"}, *messages[1:]]
    steps: list[Step] = []
    for _ in range(max_steps):
        text = complete(dialog)
        call = parse_tool_call(text, fmt)
        if call is None:
            return text, steps
        step = Step(call["name"], call["arguments"], tools.execute(call["name"], call["arguments"], fmt))
        steps.append(step)
        if on_step is not None:
            on_step(step)
        dialog += call_messages(step.name, step.arguments, step.result, fmt)
    dialog.append({"role": "user", "content": "Answer now from the results above, without calling tools."})
    return complete(dialog), steps
