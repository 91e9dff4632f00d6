"""Verifiable synthetic tasks with exact checkers: SFT data, rewards for rejection sampling / PPO, and progress checks.

Families and their tasks:
    arithmetic   add, subtract (0-99, the result may be negative), multiply (2-20); the answer is the integer
    formatting   uppercase a phrase, reverse its word order, sort its words alphabetically (comma-separated)
    extraction   the email address, the year, or the number of listed items in a generated sentence

An item is `{"kind": "task", "family", "task", "key", "split", "messages": [user prompt], "answer": str}`. Every
prompt asks for just the answer, so `task_dialog` uses the bare answer as the assistant turn: it is the form the
prompt requests and the one the checker accepts most strictly.

Train and eval are disjoint by construction: an item's split is a hash partition of its key (the task and its
content, e.g. "add:17:25"), so the same problem can never land in both, whatever rng or n produced it.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from herd.errors import DataError

SPLITS = ("train", "eval")
EVAL_PERCENT = 20
"""Share of keys (hash partition) that belong to the eval split."""

_WORDS = (
    "apple", "anchor", "basket", "bridge", "candle", "castle", "cloud", "compass", "desert", "dragon", "engine",
    "feather", "forest", "garden", "glacier", "hammer", "harbor", "island", "jacket", "kettle", "ladder", "lantern",
    "meadow", "mirror", "needle", "orange", "pencil", "pepper", "planet", "pocket", "rabbit", "ribbon", "river",
    "rocket", "saddle", "shovel", "saucer", "spider", "stone", "spoon", "tiger", "timber", "tunnel", "vase",
    "violin", "wagon", "walnut", "window", "whistle", "yacht",
)  # fmt: skip
_NAMES = ("alice", "bruno", "chen", "dana", "emeka", "farah", "greta", "hiro", "ines", "jonas", "kofi", "lena")
_DOMAINS = ("example.com", "mail.org", "acme.io", "uni-berlin.de", "post.net", "herd.dev")
_NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)  # fmt: skip

_ARITHMETIC_PROMPTS = {
    "add": (
        "What is {a} + {b}? Reply with just the number.",
        "Compute {a} plus {b}. Give only the result.",
        "Add {a} and {b}. Answer with the number only.",
    ),
    "subtract": (
        "What is {a} - {b}? Reply with just the number.",
        "Compute {a} minus {b}. Give only the result.",
        "Subtract {b} from {a}. Answer with the number only.",
    ),
    "multiply": (
        "What is {a} × {b}? Reply with just the number.",
        "Compute {a} times {b}. Give only the result.",
        "Multiply {a} by {b}. Answer with the number only.",
    ),
}
_FORMATTING_PROMPTS = {
    "uppercase": (
        'Write "{text}" in uppercase letters. Reply with just the result.',
        'Convert to all caps: "{text}". Give only the converted text.',
    ),
    "reverse": (
        'Reverse the order of the words in "{text}". Reply with just the reversed words, separated by spaces.',
        'Write the words of "{text}" in reverse order, separated by spaces. Give only the words.',
    ),
    "sort": (
        "Sort these words alphabetically: {words}. Reply with just the sorted words, separated by commas.",
        'Put the words "{text}" in alphabetical order. Answer with the words only, comma-separated.',
    ),
}
_EXTRACTION_PROMPTS = {
    "email": (
        "What is the email address in this sentence? {sentence}\nReply with just the email address.",
        "Extract the email address from the following text: {sentence}\nGive only the address.",
    ),
    "year": (
        "Which year is mentioned in this sentence? {sentence}\nReply with just the year.",
        "Extract the year from the following text: {sentence}\nGive only the year.",
    ),
    "count": (
        "How many items are listed in this sentence? {sentence}\nReply with just the number.",
        "Count the things in the following list: {sentence}\nGive only the count as a number.",
    ),
}
_EMAIL_SENTENCES = (
    "Please send the signed form to {email} before Friday.",
    "For questions about the {noun} order, write to {email} or call the front desk.",
    "{name} said the {noun} report is ready and can be requested at {email}.",
)
_YEAR_SENTENCES = (
    "The {noun} factory opened in {year} and employed {k} people.",
    "Built in {year}, the old {noun} has been repaired {k} times since.",
    "In {year} the town counted {k} houses along the {noun} road.",
)
_COUNT_SENTENCES = ("The box holds {items}.", "On the table there are {items}.", "She packed {items} for the trip.")


def split_of(key: str) -> str:
    """The split a key belongs to: a stable hash partition, EVAL_PERCENT of keys in "eval"."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return "eval" if bucket < EVAL_PERCENT else "train"


def make_tasks(rng: random.Random, n: int, *, split: str, tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """n distinct task items of one split, each task drawn uniformly from `tasks` (default: all of them)."""
    if split not in SPLITS:
        raise DataError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    names = list(_MAKERS) if tasks is None else list(tasks)
    if unknown := [t for t in names if t not in _MAKERS]:
        raise DataError(f"unknown task {unknown[0]!r}: expected some of {', '.join(_MAKERS)}")
    items: dict[str, dict[str, Any]] = {}
    for _ in range(50 * n + 100):
        if len(items) == n:
            break
        task = rng.choice(names)
        family, key, prompt_args, answer = _MAKERS[task](rng)
        key = f"{task}:{key}"
        if key in items or split_of(key) != split:
            continue
        prompt = rng.choice(_PROMPTS[task]).format(**prompt_args)
        items[key] = {
            "kind": "task",
            "family": family,
            "task": task,
            "key": key,
            "split": split,
            "messages": [{"role": "user", "content": prompt}],
            "answer": answer,
        }
    if len(items) < n:
        raise DataError(f"could make only {len(items)} distinct {split} items of tasks {', '.join(names)}, not {n}")
    return list(items.values())


def check_task(item: dict[str, Any], response: str) -> bool:
    """Whether `response` gives exactly the item's answer after `_clean`. Numbers may be bare, a word up to twenty,
    or "The answer is N" / "Answer: N"; uppercase is case-sensitive; word order, sorting and emails are not."""
    text = _clean(response)
    answer = item["answer"]
    task = item["task"]
    if task in ("add", "subtract", "multiply", "year", "count"):
        value = _parse_number(text)
        return value is not None and value == int(answer)
    if task == "uppercase":
        return " ".join(text.split()) == answer
    if task == "reverse":
        return text.lower().split() == answer.lower().split()
    if task == "sort":
        return [w.strip().lower() for w in text.split(",")] == answer.lower().split(", ")
    if task == "email":
        text = text.removeprefix("mailto:").strip("<>")
        return text.lower() == answer.lower()
    raise DataError(f"unknown task {task!r} in item {item.get('key')!r}")


def task_reward(item: dict[str, Any], response: str) -> float:
    return 1.0 if check_task(item, response) else 0.0


def task_dialog(item: dict[str, Any]) -> dict[str, Any]:
    """An SFT record: the prompt, then the bare answer as the assistant turn (what every prompt asks for)."""
    return {"messages": [*item["messages"], {"role": "assistant", "content": item["answer"]}]}


# ---------------------------------------------------------------------------------------------
# Checking

_QUOTES = ('"', "'", "`", "“", "”", "‘", "’")
_NUMBER_ANSWER = re.compile(r"(?:(?:the\s+)?(?:final\s+)?(?:answer|result)\s*(?:is|:|=)\s*)?(-?\d+|[a-z]+)", re.I)


def _clean(response: str) -> str:
    """Strip whitespace, one trailing period and surrounding quotes / backticks (``` fences too), until stable."""
    text = response.strip()
    while True:
        before = text
        text = text.removesuffix(".").strip()
        if text.startswith("```") and text.endswith("```") and len(text) >= 6:
            text = text[3:-3].strip()
        elif len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
        if text == before:
            return text


def _parse_number(text: str) -> int | None:
    """The integer of a bare number, a number word up to twenty, or "The answer is N" / "Answer: N"; else None."""
    m = _NUMBER_ANSWER.fullmatch(text.replace("−", "-"))
    if m is None:
        return None
    value = m.group(1).lower()
    if value.lstrip("-").isdigit():
        return int(value)
    return _NUMBER_WORDS.index(value) if value in _NUMBER_WORDS else None


# ---------------------------------------------------------------------------------------------
# Makers: rng -> (family, key payload, prompt arguments, answer)

Made = tuple[str, str, dict[str, Any], str]


def _arithmetic(op: str) -> Callable[[random.Random], Made]:
    def make(rng: random.Random) -> Made:
        lo, hi = (2, 20) if op == "multiply" else (0, 99)
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        result = {"add": a + b, "subtract": a - b, "multiply": a * b}[op]
        return "arithmetic", f"{a}:{b}", {"a": a, "b": b}, str(result)

    return make


def _formatting(task: str) -> Callable[[random.Random], Made]:
    def make(rng: random.Random) -> Made:
        words = rng.sample(_WORDS, rng.randint(2, 4) if task == "uppercase" else rng.randint(3, 5))
        text = " ".join(words)
        answer = {"uppercase": text.upper(), "reverse": " ".join(reversed(words)), "sort": ", ".join(sorted(words))}
        return "formatting", text, {"text": text, "words": ", ".join(words)}, answer[task]

    return make


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _email(rng: random.Random) -> Made:
    name = rng.choice(_NAMES)
    email = f"{name}.{rng.choice(_WORDS)}{rng.randint(1, 99)}@{rng.choice(_DOMAINS)}"
    sentence = rng.choice(_EMAIL_SENTENCES).format(email=email, noun=rng.choice(_WORDS), name=name.title())
    return "extraction", sentence, {"sentence": sentence}, email


def _year(rng: random.Random) -> Made:
    year = rng.randint(1700, 2030)
    # The distractor number stays below 1000 so that the year is the only four-digit number.
    sentence = rng.choice(_YEAR_SENTENCES).format(year=year, k=rng.randint(2, 950), noun=rng.choice(_WORDS))
    return "extraction", sentence, {"sentence": sentence}, str(year)


def _count(rng: random.Random) -> Made:
    things = [_article(w) for w in rng.sample(_WORDS, rng.randint(2, 7))]
    items = f"{', '.join(things[:-1])} and {things[-1]}"
    sentence = rng.choice(_COUNT_SENTENCES).format(items=items)
    return "extraction", sentence, {"sentence": sentence}, str(len(things))


_MAKERS: dict[str, Callable[[random.Random], Made]] = {
    **{op: _arithmetic(op) for op in _ARITHMETIC_PROMPTS},
    **{task: _formatting(task) for task in _FORMATTING_PROMPTS},
    "email": _email,
    "year": _year,
    "count": _count,
}
_PROMPTS = {**_ARITHMETIC_PROMPTS, **_FORMATTING_PROMPTS, **_EXTRACTION_PROMPTS}
