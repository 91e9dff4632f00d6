"""Tools a model calls: the code interpreter (Python in a bubblewrap sandbox), offline BM25 search, the
tool-call protocol (definitions, system prompts, parsing, argument checks, execution) and the built-in tools.

- sandbox.py: `run_python`, the code interpreter; `allow_unsandboxed`, the opt-out where bubblewrap is missing;
- search.py: `SearchIndex`, BM25 over given documents;
- calls.py: `Tool`, `tool_system_prompt`, `parse_tool_call` / `read_tool_call`, `check_arguments`,
  `execute_tool_call`, in the "json" and "llama3" chat formats;
- builtin.py: `make_tools`, the built-in tools (code_interpreter, search, convert_units, date_diff, http_status,
  word_count) with their executors, and `default_docs`, the default search documents.
"""

from herd.tools.builtin import default_docs, make_tools
from herd.tools.calls import (
    FORMATS,
    Tool,
    check_arguments,
    execute_tool_call,
    parse_tool_call,
    read_tool_call,
    tool_system_prompt,
)
from herd.tools.sandbox import SandboxResult, allow_unsandboxed, run_python
from herd.tools.search import SearchIndex

__all__ = [
    "FORMATS",
    "SandboxResult",
    "SearchIndex",
    "Tool",
    "allow_unsandboxed",
    "check_arguments",
    "default_docs",
    "execute_tool_call",
    "make_tools",
    "parse_tool_call",
    "read_tool_call",
    "run_python",
    "tool_system_prompt",
]
