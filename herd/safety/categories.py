"""The hazard taxonomies Llama Guard classifies against, and custom ones read from a file.

Llama Guard 2 (MLCommons-aligned, 11 categories) and Llama Guard 3 (14) number the same hazards differently:
LG3 inserts Defamation at S5, so Specialized Advice is S5 in LG2 and S6 in LG3, and adds Elections (S13) and
Code Interpreter Abuse (S14). Llama Guard 3 1B is trained without S14. Names and codes are those of Meta's
published prompts (the Llama Guard 2 and 3 model cards; llama-stack's and llama-cookbook's prompt code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import SafetyError
from herd.fileio import read_json

_CODE = re.compile(r"^S[1-9][0-9]*$")


@dataclass(frozen=True, slots=True)
class Category:
    code: str
    """"S1", "S2", ...: what the guard answers with."""
    name: str
    description: str = ""
    """Optional policy text, written under the name in the prompt (custom categories only)."""


def _numbered(*names: str) -> tuple[Category, ...]:
    return tuple(Category(f"S{i}", name) for i, name in enumerate(names, start=1))


LLAMA_GUARD_2 = _numbered(
    "Violent Crimes",
    "Non-Violent Crimes",
    "Sex Crimes",
    "Child Exploitation",
    "Specialized Advice",
    "Privacy",
    "Intellectual Property",
    "Indiscriminate Weapons",
    "Hate",
    "Self-Harm",
    "Sexual Content",
)

LLAMA_GUARD_3 = _numbered(
    "Violent Crimes",
    "Non-Violent Crimes",
    "Sex Crimes",
    "Child Exploitation",
    "Defamation",
    "Specialized Advice",
    "Privacy",
    "Intellectual Property",
    "Indiscriminate Weapons",
    "Hate",
    "Self-Harm",
    "Sexual Content",
    "Elections",
    "Code Interpreter Abuse",
)

LLAMA_GUARD_3_1B = LLAMA_GUARD_3[:13]

TAXONOMIES = {"lg2": LLAMA_GUARD_2, "lg3": LLAMA_GUARD_3, "lg3-1b": LLAMA_GUARD_3_1B}


def taxonomy_for(model_name: str) -> str:
    """The taxonomy a guard checkpoint was trained on, from its name or path ("lg3" when the name does not say)."""
    name = model_name.lower().replace("_", "-")
    if re.search(r"guard-?2", name):
        return "lg2"
    if re.search(r"guard-?3-1b", name):
        return "lg3-1b"
    return "lg3"


def load_categories(path: str | Path) -> tuple[Category, ...]:
    """Custom categories from a JSON file: a list (or {"categories": [...]}) of {"name", "description"?, "code"?}.

    Codes default to S1, S2, ... in file order. Every problem is a one-line SafetyError naming the file and field.
    """
    path = Path(path)
    raw: Any = read_json(path, what="categories file", error=SafetyError)
    if isinstance(raw, dict):
        if "categories" not in raw:
            raise SafetyError(f"{path}: expected a list of categories or an object with a 'categories' list")
        raw = raw["categories"]
    if not isinstance(raw, list) or not raw:
        raise SafetyError(f"{path}: 'categories' must be a non-empty list")
    categories: list[Category] = []
    for i, item in enumerate(raw):
        where = f"{path}: categories[{i}]"
        if not isinstance(item, dict):
            raise SafetyError(f"{where}: expected an object with 'name', got {type(item).__name__}")
        if unknown := sorted(set(item) - {"name", "description", "code"}):
            raise SafetyError(f"{where}: unknown field {unknown[0]!r} (fields are name, description, code)")
        name, description, code = item.get("name"), item.get("description", ""), item.get("code", f"S{i + 1}")
        if not isinstance(name, str) or not name.strip() or "\n" in name:
            raise SafetyError(f"{where}.name: must be a non-empty single-line string")
        if not isinstance(description, str):
            raise SafetyError(f"{where}.description: must be a string")
        if not isinstance(code, str) or not _CODE.match(code):
            raise SafetyError(f"{where}.code: {code!r} is not a category code like 'S1'")
        if any(c.code == code for c in categories):
            raise SafetyError(f"{where}.code: {code!r} is used twice")
        categories.append(Category(code, name.strip().removesuffix("."), description.strip()))
    return tuple(categories)
