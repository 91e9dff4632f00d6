"""The built-in tools, defined and executable: code_interpreter (runs in `herd.tools.sandbox`), search (a BM25
`herd.tools.SearchIndex` over given documents, by default the first docstring paragraph of the installed stdlib
modules, read at run time) and custom JSON tools that run a deterministic Python function (convert_units,
date_diff, http_status, word_count).

`make_tools(fmt=...)` gives them by name as `herd.tools.calls.Tool`s, ready for `execute_tool_call`. Every function
raises ToolError for input it cannot handle, so a bad call never passes as a result.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import math
import sys
import tokenize
from datetime import date
from http import HTTPStatus
from typing import Any

from herd.errors import ToolError
from herd.tools.calls import Tool, check_format
from herd.tools.sandbox import run_python
from herd.tools.search import SearchIndex

LENGTH_M = {"m": 1.0, "km": 1000.0, "cm": 0.01, "mm": 0.001, "mi": 1609.344, "yd": 0.9144, "ft": 0.3048, "in": 0.0254}
"""Length units of convert_units, in meters."""
MASS_KG = {"kg": 1.0, "g": 0.001, "mg": 1e-6, "t": 1000.0, "lb": 0.45359237, "oz": 0.028349523125}
"""Mass units of convert_units, in kilograms."""
TEMPERATURES = ("C", "F", "K")
UNIT_NAMES = {
    "m": "meters", "km": "kilometers", "cm": "centimeters", "mm": "millimeters", "mi": "miles", "yd": "yards",
    "ft": "feet", "in": "inches", "kg": "kilograms", "g": "grams", "mg": "milligrams", "t": "tonnes",
    "lb": "pounds", "oz": "ounces", "C": "degrees Celsius", "F": "degrees Fahrenheit", "K": "kelvin",
}  # fmt: skip
"""Every unit convert_units knows (the enum of its unit arguments), with its name in words."""


def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    for table in (LENGTH_M, MASS_KG):
        if from_unit in table and to_unit in table:
            result = value * table[from_unit] / table[to_unit]
            break
    else:
        if from_unit not in TEMPERATURES or to_unit not in TEMPERATURES:
            raise ToolError(f"cannot convert {from_unit!r} to {to_unit!r}: not a length, mass or temperature pair")
        kelvin = {"C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15, "K": value}[from_unit]
        if kelvin < 0:
            raise ToolError(f"{value} {from_unit} is below absolute zero")
        result = {"C": kelvin - 273.15, "F": (kelvin - 273.15) * 9 / 5 + 32, "K": kelvin}[to_unit]
    if not math.isfinite(result):
        raise ToolError(f"converting {value} {from_unit} to {to_unit} overflows")
    return json.dumps({"result": float(f"{result:.6g}"), "unit": to_unit})


def date_diff(start: str, end: str) -> str:
    days = []
    for key, value in (("start", start), ("end", end)):
        try:
            days.append(date.fromisoformat(value))
        except ValueError:
            raise ToolError(f"{key}={value!r} is not an ISO date (YYYY-MM-DD)") from None
    return json.dumps({"days": (days[1] - days[0]).days})


def http_status(code: int) -> str:
    try:
        status = HTTPStatus(code)
    except ValueError:
        raise ToolError(f"code={code} is not an HTTP status code") from None
    return json.dumps({"code": status.value, "phrase": status.phrase, "description": status.description})


def word_count(text: str) -> str:
    return json.dumps({"words": len(text.split()), "characters": len(text)})


def code_interpreter(code: str) -> str:
    result = run_python(code)
    if not result.ok:
        raise ToolError(f"code failed: {result.error}")
    return result.stdout


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _schema(properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


def make_tools(*, fmt: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Tool]:
    """Every tool, by name. Search runs over `docs` ({"title", "text", "url"?}), default `default_docs()`; it is
    named brave_search in the llama3 format (the built-in Llama 3.1 knows) and search in the json format."""
    check_format(fmt)
    index = SearchIndex(default_docs() if docs is None else docs)
    units = list(UNIT_NAMES)
    unit_help = ", ".join(f"{u} ({name})" for u, name in UNIT_NAMES.items())
    conversion = {
        "value": {"type": "number", "description": "The amount to convert."},
        "from_unit": _string("The unit of the value.", enum=units),
        "to_unit": _string("The unit to convert to.", enum=units),
    }
    tools = [
        Tool(
            "convert_units",
            f"Convert a length, mass or temperature from one unit to another of the same kind. Units: {unit_help}.",
            _schema(conversion),
            convert_units,
        ),
        Tool(
            "date_diff",
            "The number of days from the start date to the end date (negative when the end is earlier).",
            _schema({"start": _string("ISO date, YYYY-MM-DD."), "end": _string("ISO date, YYYY-MM-DD.")}),
            date_diff,
        ),
        Tool(
            "http_status",
            "The reason phrase and meaning of an HTTP status code.",
            _schema({"code": {"type": "integer", "description": "The status code, e.g. 404."}}),
            http_status,
        ),
        Tool(
            "word_count",
            "Count the words (separated by whitespace) and the characters of a text.",
            _schema({"text": _string("The text to count.")}),
            word_count,
        ),
        Tool(
            "code_interpreter",
            "Run Python code and return what it prints to stdout; print() every result you need.",
            _schema({"code": _string("A Python program.")}),
            code_interpreter,
        ),
        Tool(
            search_name(fmt),
            "Search the documentation and return the best matching passages (title, snippet, url).",
            _schema({"query": _string("Search terms.")}),
            lambda query: json.dumps(index.search(query, k=3)),
        ),
    ]
    return {tool.name: tool for tool in tools}


def search_name(fmt: str) -> str:
    """The search tool's name in chat format `fmt`."""
    return "brave_search" if fmt == "llama3" else "search"


@functools.cache
def _stdlib_docs() -> tuple[tuple[str, str], ...]:
    docs = []
    for name in sorted(sys.stdlib_module_names):
        spec = None if name.startswith("_") else importlib.util.find_spec(name)  # finds the file, imports nothing
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        with open(spec.origin, "rb") as f:
            # The first token is enough: parsing whole modules would take seconds.
            first = next(t for t in tokenize.tokenize(f.readline) if t.type not in _SKIPPED_TOKENS)
        doc = ast.literal_eval(first.string) if first.type == tokenize.STRING else None
        if isinstance(doc, str) and doc.strip():
            docs.append((name, " ".join(doc.strip().split("\n\n")[0].split())))
    return tuple(docs)


_SKIPPED_TOKENS = (tokenize.ENCODING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE)


def default_docs() -> list[dict[str, str]]:
    """{"title": module, "text": first docstring paragraph} for each stdlib module of this Python with a docstring
    in a .py file (about 140 on CPython 3.11): no network and no data files, but they vary with the Python version."""
    return [{"title": name, "text": text} for name, text in _stdlib_docs()]
