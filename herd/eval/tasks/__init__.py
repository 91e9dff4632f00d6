"""herd's own lm-eval tasks and the jsonl data behind them, built on the user's machine (nothing is downloaded).

The YAMLs beside this file name `custom_dataset: !function herd.eval.tasks.load_task`: lm-eval calls it when it
loads the task, and it builds the task's jsonl files into the data directory (HERD_EVAL_TASKS_DIR, default
~/.cache/herd/eval_tasks) the first time, then reads them. The data comes from the Python standard library or a
seeded generator, so every machine builds the same items (the docstrings task follows the Python version):

- herd_sequences (multiple_choice): what comes after / before a month, weekday, letter, Greek letter or number word;
- herd_stdlib_docs (loglikelihood_rolling): perplexity on standard-library module docstrings;
- herd_arithmetic (generate_until, 3-shot): sums, differences and products of small numbers, exact match.

A user's own YAML reads a local jsonl the same way with `custom_dataset: !function herd.eval.tasks.jsonl_dataset`
and `dataset_kwargs: {data_files: {test: path.jsonl}, fields: [question, answer]}`; a bad line is an EvalError
`file:line: reason`.
"""

from __future__ import annotations

import calendar
import importlib
import inspect
import json
import os
import random
import string
import sys
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from herd.errors import EvalError
from herd.eval.results import read_jsonl
from herd.fileio import atomic_file

TASKS_DIR = Path(__file__).parent
"""Pass to lm-eval as --include_path (herd eval harness does)."""

VERSION = 1
"""Part of each data file's name: a change to a builder bumps it, so stale cached files are not reused."""

Row = dict[str, Any]


def data_dir() -> Path:
    return Path(os.environ.get("HERD_EVAL_TASKS_DIR") or Path.home() / ".cache" / "herd" / "eval_tasks")


# ---------------------------------------------------------------------------------------------
# herd_sequences: ordered lists that ship with Python, asked forwards and backwards


_NUMBER_WORDS = [
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]


def _greek_letters() -> list[str]:
    # U+03B1..U+03C9 less the final sigma: "GREEK SMALL LETTER ALPHA" -> "alpha"
    names = [unicodedata.name(chr(c)) for c in range(0x3B1, 0x3CA) if c != 0x3C2]
    return [n.rsplit(" ", 1)[-1].lower() for n in names]


def _sequences() -> list[tuple[str, str, list[str], bool]]:
    """(id prefix, what one element is called, the elements, whether the list wraps around)."""
    return [
        ("month", "month", list(calendar.month_name)[1:], True),
        ("weekday", "day of the week", list(calendar.day_name), True),
        ("letter", "letter of the alphabet", list(string.ascii_uppercase), False),
        ("greek", "Greek letter", _greek_letters(), False),
        ("number", "number", _NUMBER_WORDS, False),
    ]


def build_sequences(rng: random.Random) -> dict[str, list[Row]]:
    rows = []
    for prefix, noun, items, wraps in _sequences():
        n = len(items)
        for i, item in enumerate(items):
            for step, word in ((1, "after"), (-1, "before")):
                j = i + step
                if not wraps and not 0 <= j < n:
                    continue
                answer = items[j % n]
                distractors = rng.sample([x for x in items if x not in (item, answer)], 3)
                choices = [answer, *distractors]
                rng.shuffle(choices)
                rows.append({
                    "id": f"{prefix}-{word}-{item}",
                    "question": f"What {noun} comes {word} {item}?",
                    "choices": choices,
                    "answer": choices.index(answer),
                })  # fmt: skip
    return {"test": rows}


# ---------------------------------------------------------------------------------------------
# herd_stdlib_docs: module docstrings of the running Python

_DOC_MODULES = [
    "argparse",
    "collections",
    "csv",
    "difflib",
    "hashlib",
    "heapq",
    "inspect",
    "json",
    "pickle",
    "pprint",
    "random",
    "sched",
    "socket",
    "statistics",
    "string",
    "struct",
    "tempfile",
    "tokenize",
    "typing",
    "unittest",
    "uuid",
    "wave",
    "zlib",
]
_MAX_DOC_CHARS = 1500


def build_stdlib_docs(rng: random.Random) -> dict[str, list[Row]]:
    del rng  # the documents are what they are
    rows = []
    for name in _DOC_MODULES:
        doc = inspect.cleandoc(importlib.import_module(name).__doc__ or "")
        if not doc:
            continue  # python -OO strips docstrings
        if len(doc) > _MAX_DOC_CHARS:  # cut at a paragraph break: long documents only cost time
            cut = doc.rfind("\n\n", 0, _MAX_DOC_CHARS)
            doc = doc[: cut if cut > 0 else _MAX_DOC_CHARS]
        rows.append({"id": name, "text": doc, "python": sys.version.split()[0]})
    if not rows:
        raise EvalError("herd_stdlib_docs: this Python has no module docstrings (run without -OO)")
    return {"test": rows}


# ---------------------------------------------------------------------------------------------
# herd_arithmetic: small sums, differences and products (a few train items serve as the shots)


def _arithmetic(rng: random.Random, n: int, prefix: str) -> list[Row]:
    rows = []
    for i in range(n):
        op = ("+", "-", "*")[i % 3]
        a, b = (rng.randint(2, 12), rng.randint(2, 12)) if op == "*" else (rng.randint(1, 99), rng.randint(1, 99))
        if op == "-" and b > a:
            a, b = b, a  # no negative answers: the number filter then needs no sign handling
        value = a + b if op == "+" else a - b if op == "-" else a * b
        rows.append({"id": f"{prefix}-{i}", "question": f"{a} {op} {b}", "answer": str(value)})
    return rows


def build_arithmetic(rng: random.Random) -> dict[str, list[Row]]:
    return {"train": _arithmetic(rng, 5, "train"), "test": _arithmetic(rng, 120, "test")}


# ---------------------------------------------------------------------------------------------
# building, reading, and the functions the YAMLs name

BUILDERS: dict[str, tuple[Callable[[random.Random], dict[str, list[Row]]], dict[str, type | tuple[type, ...]]]] = {
    "herd_sequences": (build_sequences, {"id": str, "question": str, "choices": list, "answer": int}),
    "herd_stdlib_docs": (build_stdlib_docs, {"id": str, "text": str}),
    "herd_arithmetic": (build_arithmetic, {"id": str, "question": str, "answer": str}),
}
"""task name -> (builder, the fields and types every row holds)."""


def task_files(name: str, folder: Path | None = None) -> dict[str, Path]:
    """The task's jsonl files by split, built first if missing."""
    if name not in BUILDERS:
        raise EvalError(f"unknown herd task {name!r}; herd's tasks are {', '.join(BUILDERS)}")
    folder = folder or data_dir()
    build, _ = BUILDERS[name]
    marker = folder / f"{name}.v{VERSION}.done"
    if marker.is_file():
        return {split: Path(p) for split, p in json.loads(marker.read_text()).items()}
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in build(random.Random(f"{name}-{VERSION}")).items():
        path = files[split] = folder / f"{name}.v{VERSION}.{split}.jsonl"
        _write_jsonl(path, rows)
    with atomic_file(marker, "w") as f:  # written last: a half-built set of files is rebuilt next time
        json.dump({split: str(p) for split, p in files.items()}, f)
    return files


def _write_jsonl(path: Path, rows: Iterable[Row]) -> None:
    with atomic_file(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_task(herd_task: str, **_metadata: Any) -> Any:
    """lm-eval's `custom_dataset` for herd's tasks (it also passes the run's metadata, which is not needed)."""
    _, required = BUILDERS.get(herd_task, (None, {}))
    return _dataset({split: read_jsonl(p, required) for split, p in task_files(herd_task).items()})


def jsonl_dataset(data_files: dict[str, str] | str, fields: list[str] | None = None, **_metadata: Any) -> Any:
    """lm-eval's `custom_dataset` for a user's local jsonl: `data_files` is a path (the test split) or
    {split: path}; each line must hold `fields`. Relative paths are from the working directory."""
    files = {"test": data_files} if isinstance(data_files, str) else data_files
    if not isinstance(files, dict) or not all(isinstance(p, str) for p in files.values()):
        raise EvalError(f"jsonl_dataset: data_files must be a path or {{split: path}}, got {data_files!r}")
    required: dict[str, type | tuple[type, ...]] = {f: (object, bool) for f in fields or []}  # any JSON value
    return _dataset({split: read_jsonl(Path(p).expanduser(), required) for split, p in files.items()})


def _dataset(splits: dict[str, list[Row]]) -> Any:
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows) for split, rows in splits.items()})
