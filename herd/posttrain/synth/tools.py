"""Tool-use SFT data and held-out tool evals, every call checked by executing it.

The recipe of the Llama 3 paper (section 4.3.5, tool use): dialogs in which the assistant calls a tool, the call is
executed, its result comes back in an "ipython" turn, and the assistant answers from it. Here a dialog is

    system (the tools on offer) -> user request -> assistant call -> ipython result -> assistant answer

with the request, call and answer filled in from templates and sampled values, and the result the real output of
the call with the built-in tools of `herd.tools.builtin` (custom JSON tools, code_interpreter in the sandbox,
search over given documents). A draw whose call fails to execute, or whose result does not answer the request, is
dropped and drawn again, so every stored call is valid. A small share of dialogs needs no tool and is answered
directly, so the model does not learn to call a tool for every request.

Dialogs come in the two chat formats of `herd.tools.calls` ("llama3", "json"), both written as herd's neutral
messages (the data layer renders them); `score_tool_call` checks a model's response to an eval item with the same
protocol (parse, check the arguments, execute).

[Note: disjoint eval] Eval items are disjoint from training data whatever the seeds: each task's last user phrasing
is used only for eval, and a call goes to eval exactly when crc32 of (tool, arguments) is 0 mod 5, so no eval
request text and no eval call (tool and argument values, e.g. the searched document or the status code) ever
appears in training dialogs.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from http import HTTPStatus
from typing import Any

from herd.errors import ToolError
from herd.tokenizer.chat_format import BUILTIN_TOOLS
from herd.tools.builtin import LENGTH_M, MASS_KG, TEMPERATURES, UNIT_NAMES, default_docs, make_tools, search_name
from herd.tools.calls import Tool, check_format, execute_tool_call, read_tool_call, tool_system_prompt

EVAL_BUCKETS = 5
"""One call in EVAL_BUCKETS (by crc32 of tool and arguments) is held out for eval."""
_MAX_DRAWS = 200


def score_tool_call(item: Mapping[str, Any], response: str, tools: Mapping[str, Tool]) -> dict[str, Any]:
    """{"valid", "right_tool", "error"} for a model's response to an eval item (its "fmt" says how to parse).

    valid: the response is one call of a known tool, its arguments fit the schema and executing it succeeds (code
    runs without error). right_tool: it names the item's expected tool. error: why it is not valid, else None.
    """
    try:
        call = read_tool_call(response, item["fmt"])
    except ToolError as e:
        return {"valid": False, "right_tool": False, "error": str(e)}
    right_tool = call["name"] == item["tool"]
    try:
        execute_tool_call(call, tools)
    except ToolError as e:
        return {"valid": False, "right_tool": right_tool, "error": str(e)}
    return {"valid": True, "right_tool": right_tool, "error": None}


# ---------------------------------------------------------------------------------------------
# Tasks: request templates, argument samplers and answer templates per tool


@dataclass(frozen=True, slots=True)
class _Task:
    tool: str
    """The tool's format-independent name ("search" also in the llama3 format)."""
    prompts: tuple[str, ...]
    """User phrasings; the last one is used only for eval."""
    answers: tuple[str, ...]
    draw: Callable[[random.Random, list[dict[str, Any]]], tuple[dict[str, Any], dict[str, Any]]]
    """(arguments, fields for the prompts) from the rng and the search documents."""
    read: Callable[[dict[str, Any], str], dict[str, Any] | None]
    """Fields for the answers from the prompt fields and the result; None when the result does not answer."""


def _read_json(fields: dict[str, Any], output: str) -> dict[str, Any]:
    return json.loads(output)


def _read_stdout(fields: dict[str, Any], output: str) -> dict[str, Any]:
    return {"out": output.strip()}


def _draw_conversion(rng: random.Random, docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    units = rng.choice((list(LENGTH_M), list(MASS_KG), list(TEMPERATURES)))
    from_unit, to_unit = rng.sample(units, 2)
    value: float  # an int, or a float with one decimal
    if from_unit in TEMPERATURES:
        value = rng.randint(230, 390) if from_unit == "K" else rng.randint(-40, 110)
    else:
        value = rng.choice((rng.randint(2, 500), round(rng.uniform(0.1, 100), 1)))
    args = {"value": value, "from_unit": from_unit, "to_unit": to_unit}
    return args, {"value": value, "src": _unit_shown(rng, from_unit), "dst": _unit_shown(rng, to_unit)}


# How people write units besides the tool's codes and their names: requests name a unit any of these ways, and
# the call always takes the code.
_UNIT_SPELLINGS = {
    "C": ("°C", "Celsius", "celsius"), "F": ("°F", "Fahrenheit", "fahrenheit"), "K": ("kelvins",),
    "lb": ("lbs", "pound"), "kg": ("kilos", "kilogram"), "km": ("kilometres", "kms"), "m": ("metres", "meter"),
    "mi": ("mile",), "ft": ("foot",), "in": ("inch",), "g": ("gram",), "oz": ("ounce",), "t": ("metric tons",),
    "cm": ("centimetres",), "mm": ("millimetres",), "yd": ("yard",), "mg": ("milligram",),
}  # fmt: skip


def _unit_shown(rng: random.Random, unit: str) -> str:
    return rng.choice((UNIT_NAMES[unit], UNIT_NAMES[unit], unit, *_UNIT_SPELLINGS.get(unit, ())))


def _read_conversion(fields: dict[str, Any], output: str) -> dict[str, Any]:
    return {"result": f"{json.loads(output)['result']:.6g}"}


def _draw_dates(rng: random.Random, docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    start = date(2000, 1, 1) + timedelta(days=rng.randrange(30 * 365))
    end = start + timedelta(days=rng.randint(1, 3000))
    if rng.random() < 0.5:  # requests mix ISO and written dates; the call always takes ISO
        shown = {"start": f"{start:%B} {start.day}, {start.year}", "end": f"{end:%B} {end.day}, {end.year}"}
    else:
        shown = {"start": start.isoformat(), "end": end.isoformat()}
    return {"start": start.isoformat(), "end": end.isoformat()}, shown


_STATUS_CODES = [status.value for status in HTTPStatus]


def _draw_status(rng: random.Random, docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    code = rng.choice(_STATUS_CODES)
    return {"code": code}, {"code": code}


def _read_status(fields: dict[str, Any], output: str) -> dict[str, Any]:
    result = json.loads(output)
    return {"phrase": result["phrase"], "about": f": {result['description']}" if result["description"] else ""}


_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "our", "team", "ships", "small",
    "careful", "changes", "every", "week", "and", "reviews", "each", "test", "before", "release", "of", "new",
    "data", "tools", "models", "reports", "plans", "notes",
)  # fmt: skip


def _draw_text(rng: random.Random, docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    words = rng.choices(_WORDS, k=rng.randint(4, 30))
    text = " ".join(words).capitalize() + "."
    return {"text": text}, {"text": text}


def _draw_search(rng: random.Random, docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    title = rng.choice(docs)["title"]
    return {"query": title}, {"title": title}


def _read_search(fields: dict[str, Any], output: str) -> dict[str, Any] | None:
    results = json.loads(output)
    if not results or results[0]["title"] != fields["title"] or '"' in fields["title"]:
        return None  # a miss, or a title that cannot be quoted in Llama's brave_search.call(query="...")
    top = results[0]
    return {"snippet": top["snippet"], "source": f" (source: {top['url']})" if top["url"] else ""}


def _code_task(
    prompts: tuple[str, ...],
    answers: tuple[str, ...],
    draw: Callable[[random.Random], dict[str, Any]],
    code: str,
    read: Callable[[dict[str, Any], str], dict[str, Any] | None] = _read_stdout,
) -> _Task:
    """A code_interpreter task whose program is `code` formatted with the drawn fields."""

    def draw_call(rng: random.Random, docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        fields = draw(rng)
        return {"code": code.format(**fields)}, fields

    return _Task("code_interpreter", prompts, answers, draw_call, read)


def _numbers(rng: random.Random) -> dict[str, Any]:
    return {"nums": ", ".join(str(rng.randint(1, 99)) for _ in range(rng.randint(5, 9)))}


_TASKS = (
    _Task(
        "convert_units",
        (
            "How many {dst} is {value} {src}?",
            "Convert {value} {src} to {dst}.",
            "I have {value} {src}. What is that in {dst}?",
            "hey, {value} {src} in {dst}?",
            "{value} {src} -> {dst}",
            "My notes say {value} {src}, but I need the figure in {dst}. Can you convert it?",
            "Could you please turn {value} {src} into {dst} for me? Thanks!",
            "quick conversion: {value} {src} to {dst}",
            "What's {value} {src} expressed in {dst}?",
        ),
        ("{value} {src} is {result} {dst}.", "That's {result} {dst}.", "{value} {src} converts to {result} {dst}."),
        _draw_conversion,
        _read_conversion,
    ),
    _Task(
        "date_diff",
        (
            "How many days are there between {start} and {end}?",
            "Count the days from {start} to {end}.",
            "If today is {start}, how many days until {end}?",
            "days between {start} and {end}?",
            "I signed the lease on {start} and it runs out on {end}. How many days is that?",
            "Could you please work out how many days lie between {start} and {end}? Thank you.",
            "{start} to {end}: how many days?",
            "What is the number of days separating {start} and {end}?",
        ),
        ("There are {days} days between {start} and {end}.", "From {start} to {end} is {days} days.", "{days} days."),
        _draw_dates,
        _read_json,
    ),
    _Task(
        "http_status",
        (
            "What does HTTP status code {code} mean?",
            "My server returned {code}. What is that?",
            "Look up the HTTP status {code} for me.",
            "got a {code} error, what's that?",
            "HTTP {code}?",
            "The API I call answered with status {code}. What does it mean?",
            "Could you please look up what status code {code} stands for?",
            "Which reason phrase goes with HTTP {code}?",
        ),
        ('HTTP {code} is "{phrase}"{about}.', 'Status {code} means "{phrase}"{about}.'),
        _draw_status,
        _read_status,
    ),
    _Task(
        "word_count",
        (
            'How many words are in this text: "{text}"',
            "Count the words in the following sentence:\n{text}",
            "Word count please: {text}",
            "word count: {text}",
            'Here is a line from my essay: "{text}" How many words does it have?',
            'Could you please count the words in "{text}"? Thanks.',
            "Tell me how many words this has: {text}",
        ),
        ("That text has {words} words.", "I count {words} words ({characters} characters).", "{words} words."),
        _draw_text,
        _read_json,
    ),
    _Task(
        "search",
        (
            "What is {title}?",
            "Search for {title} and tell me what it is.",
            "Look up {title} for me.",
            "search {title}",
            "I keep hearing about {title}. Can you look it up?",
            "Find information about {title}.",
        ),
        (
            "According to the search results, {title}: {snippet}{source}",
            "Here is what I found about {title}: {snippet}",
        ),
        _draw_search,
        _read_search,
    ),
    _code_task(
        ("What is {a} raised to the power {b}?", "Compute {a}**{b} exactly.", "Calculate {a} to the power of {b}."),
        ("{a}^{b} = {out}", "{a} to the power {b} is {out}."),
        lambda rng: {"a": rng.randint(2, 99), "b": rng.randint(12, 40)},
        "print({a} ** {b})",
    ),
    _code_task(
        ("What is {n} factorial?", "Compute the factorial of {n}.", "Give me the exact value of {n}!"),
        ("{n}! = {out}", "The factorial of {n} is {out}."),
        lambda rng: {"n": rng.randint(15, 60)},
        "import math\nprint(math.factorial({n}))",
    ),
    _code_task(
        ("Is {n} a prime number?", "Check whether {n} is prime.", "Tell me if {n} is prime or composite."),
        ("{verdict}", "I checked: {verdict}"),
        lambda rng: {"n": rng.randint(1000, 200_000)},
        "n = {n}\nprint(n > 1 and all(n % d for d in range(2, int(n**0.5) + 1)))",
        lambda fields, out: {"verdict": f"{fields['n']} is {'' if out.strip() == 'True' else 'not '}a prime number."},
    ),
    _code_task(
        (
            "What is the Fibonacci number F({n}), with F(0) = 0 and F(1) = 1?",
            "Compute F({n}) of the Fibonacci sequence (F(0) = 0, F(1) = 1).",
            "Find Fibonacci number {n}, counting F(0) = 0 and F(1) = 1.",
        ),
        ("F({n}) = {out}", "Fibonacci number {n} is {out}."),
        lambda rng: {"n": rng.randint(30, 300)},
        "a, b = 0, 1\nfor _ in range({n}):\n    a, b = b, a + b\nprint(a)",
    ),
    _code_task(
        (
            "What are the mean and the median of {nums}?",
            "Give me the average and the median of these numbers: {nums}",
            "Compute mean and median for {nums}.",
        ),
        ("The mean is {mean} and the median is {median}.", "Mean: {mean}. Median: {median}."),
        _numbers,
        "import statistics\nxs = [{nums}]\nprint(round(statistics.mean(xs), 4), statistics.median(xs))",
        lambda fields, out: dict(zip(("mean", "median"), out.split(), strict=True)),
    ),
)
_TASKS_BY_TOOL = {tool: [t for t in _TASKS if t.tool == tool] for tool in dict.fromkeys(t.tool for t in _TASKS)}

_CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Canada": "Ottawa", "Peru": "Lima", "Norway": "Oslo",
    "Egypt": "Cairo", "Australia": "Canberra", "Italy": "Rome", "Vietnam": "Hanoi", "Chile": "Santiago",
}  # fmt: skip
_OPPOSITES = {
    "hot": "cold", "early": "late", "open": "closed", "happy": "sad", "light": "dark", "fast": "slow",
    "full": "empty", "strong": "weak", "ancient": "modern", "generous": "stingy",
}  # fmt: skip
_CHAT = (
    (
        "Hi! What can you do?",
        "Hello! I can answer questions directly, and when a request needs it I can use the tools I have been given, "
        "such as running code or searching documents. What would you like to do?",
    ),
    ("Thanks, that's all I needed.", "You're welcome! Let me know if anything else comes up."),
    ("Can you say hello in Spanish?", '"Hola" is hello in Spanish.'),
)


def _no_tool_exchange(rng: random.Random) -> tuple[str, str]:
    """A request answered without a tool: general knowledge or small talk."""
    kind = rng.randrange(3)
    if kind == 0:
        country = rng.choice(list(_CAPITALS))
        return f"What is the capital of {country}?", f"The capital of {country} is {_CAPITALS[country]}."
    if kind == 1:
        word = rng.choice(list(_OPPOSITES))
        return f'What is the opposite of "{word}"?', f'The opposite of "{word}" is "{_OPPOSITES[word]}".'
    return rng.choice(_CHAT)


# ---------------------------------------------------------------------------------------------
# Generators


@dataclass(frozen=True, slots=True)
class _Draw:
    task: _Task
    call: dict[str, Any]
    request: str
    output: str
    fields: dict[str, Any]


def _is_eval(tool: str, arguments: dict[str, Any]) -> bool:
    key = json.dumps([tool, arguments], sort_keys=True)
    return zlib.crc32(key.encode()) % EVAL_BUCKETS == 0


def _draw(rng: random.Random, tools: dict[str, Tool], docs: list[dict[str, Any]], *, fmt: str, held_out: bool) -> _Draw:
    """A request with its call executed; draws until the call is on the right side of the split, runs and answers."""
    problem = "every draw fell in the other split"
    for _ in range(_MAX_DRAWS):
        task = rng.choice(_TASKS_BY_TOOL[rng.choice(list(_TASKS_BY_TOOL))])
        args, fields = task.draw(rng, docs)
        if _is_eval(task.tool, args) != held_out:
            continue
        call = {"name": search_name(fmt) if task.tool == "search" else task.tool, "arguments": args}
        try:
            output = execute_tool_call(call, tools)
        except ToolError as e:
            problem = str(e)
            continue
        extra = task.read(fields, output)
        if extra is None:
            problem = f"{call['name']} result does not answer {args}"
            continue
        prompt = task.prompts[-1] if held_out else rng.choice(task.prompts[:-1])
        return _Draw(task, call, prompt.format(**fields), output, fields | extra)
    raise ToolError(f"no executable tool call in {_MAX_DRAWS} draws (last problem: {problem})")


def _menu(rng: random.Random, tools: dict[str, Tool], needed: str | None, max_tools: int = 0) -> list[Tool]:
    """The tools offered in one dialog: the needed one and each other with probability 1/2, in random order; at
    most `max_tools` (0: no cap), which keeps prompts short for small models and CPU budgets."""
    others = [t for t in tools.values() if t.name != needed and rng.random() < 0.5]
    if max_tools:
        others = others[: max_tools - (needed is not None)]
    menu = [t for t in tools.values() if t.name == needed] + others or [rng.choice(list(tools.values()))]
    rng.shuffle(menu)
    return menu


def make_tool_dialogs(
    rng: random.Random,
    n: int,
    *,
    fmt: str,
    docs: list[dict[str, Any]] | None = None,
    no_tool_share: float = 0.1,
    max_tools: int = 0,
) -> list[dict[str, Any]]:
    """`n` SFT records {"messages": [system, user, assistant call, ipython result, assistant answer]}, or
    [system, user, assistant] for the `no_tool_share` that needs no tool. Every call was executed."""
    check_format(fmt)
    docs = default_docs() if docs is None else docs
    tools = make_tools(fmt=fmt, docs=docs)
    records = []
    for _ in range(n):
        if rng.random() < no_tool_share:
            request, answer = _no_tool_exchange(rng)
            system = tool_system_prompt(_menu(rng, tools, None, max_tools), fmt)
            records.append({"messages": [_text("system", system), _text("user", request), _text("assistant", answer)]})
            continue
        drawn = _draw(rng, tools, docs, fmt=fmt, held_out=False)
        call_turn: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": [drawn.call]}
        if fmt == "llama3" and drawn.call["name"] in BUILTIN_TOOLS:
            call_turn["stop_reason"] = "end_of_message"  # Llama 3.1 ends built-in calls with <|eom_id|>
        system = tool_system_prompt(_menu(rng, tools, drawn.call["name"], max_tools), fmt)
        answer = rng.choice(drawn.task.answers).format(**drawn.fields)
        records.append(
            {
                "messages": [
                    _text("system", system),
                    _text("user", drawn.request),
                    call_turn,
                    _text("ipython", drawn.output),
                    _text("assistant", answer),
                ]
            }
        )
    return records


def make_tool_eval(
    rng: random.Random, n: int, *, fmt: str, docs: list[dict[str, Any]] | None = None, max_tools: int = 0
) -> list[dict[str, Any]]:
    """`n` held-out items {"kind": "tool", "fmt", "messages": [system, user], "tool", "arguments"}: "tool" is the
    expected tool's name, "arguments" one call that executes and answers. Disjoint from `make_tool_dialogs` data
    (see [Note: disjoint eval])."""
    check_format(fmt)
    docs = default_docs() if docs is None else docs
    tools = make_tools(fmt=fmt, docs=docs)
    items = []
    for _ in range(n):
        drawn = _draw(rng, tools, docs, fmt=fmt, held_out=True)
        system = tool_system_prompt(_menu(rng, tools, drawn.call["name"], max_tools), fmt)
        items.append(
            {
                "kind": "tool",
                "fmt": fmt,
                "messages": [_text("system", system), _text("user", drawn.request)],
                "tool": drawn.call["name"],
                "arguments": drawn.call["arguments"],
            }
        )
    return items


def _text(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}
