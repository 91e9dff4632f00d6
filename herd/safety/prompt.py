"""Llama Guard's prompt and answer formats, character for character as Meta publishes them.

The prompt text is the same for Llama Guard 2 and 3 but for two details taken from Meta's prompt code: LG2 wraps
it in `[INST] ... [/INST]` and writes each category as "S1: Violent Crimes. " (trailing space), LG3 sends it as
the user turn of the Llama 3 chat format and writes "S1: Violent Crimes.". The conversation lists the turns as
"User: ..." / "Agent: ...", and the question is about the last turn's role.

The answer is `safe`, or `unsafe` and a second line of comma-separated category codes. Anything else is an error:
a guard that answers in an unexpected way is never read as "safe".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import SafetyError
from herd.fileio import read_json
from herd.safety.categories import Category
from herd.tokenizer import Tokenizer

ROLES = ("User", "Agent")
# Which dialog roles the guard sees as which side. A tool's output is input the model did not write, like the
# user's: an injection hidden in it is judged as the user's. System prompts are the deployer's and are left out.
_SIDE = {"user": "User", "assistant": "Agent", "tool": "User", "ipython": "User"}


@dataclass(frozen=True, slots=True)
class Turn:
    role: str
    """"User" or "Agent"."""
    content: str


@dataclass(frozen=True, slots=True)
class Verdict:
    safe: bool
    categories: tuple[str, ...] = ()


def dialog_turns(messages: Sequence[Any], *, where: str = "dialog") -> list[Turn]:
    """OpenAI-style messages -> the guard's turns; `where` names the source in errors ("file.json: messages")."""
    if not isinstance(messages, list | tuple) or not messages:
        raise SafetyError(f"{where}: expected a non-empty list of messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise SafetyError(f"{where}[{i}]: expected an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role == "system":
            continue
        if role not in _SIDE:
            raise SafetyError(f"{where}[{i}].role: {role!r} is not one of system, user, assistant, tool, ipython")
        if isinstance(content, list):  # OpenAI content parts: the guard reads the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise SafetyError(f"{where}[{i}].content: expected a string")
        turns.append(Turn(_SIDE[role], content))
    if not turns:
        raise SafetyError(f"{where}: only system messages, nothing to classify")
    return turns


def read_dialog(path: str | Path) -> list[Turn]:
    """A dialog file: a JSON list of messages, or an object with a "messages" list (`-` reads stdin)."""
    where = "<stdin>" if str(path) == "-" else str(path)
    raw = read_json(path, what="dialog", error=SafetyError)
    if isinstance(raw, dict):
        if "messages" not in raw:
            raise SafetyError(f"{where}: expected a list of messages or an object with a 'messages' list")
        return dialog_turns(raw["messages"], where=f"{where}: messages")
    return dialog_turns(raw, where=where)


def check_role(turns: Sequence[Turn], role: str | None) -> str:
    """The role being judged: the last turn's. `role` ("user"/"agent"), when given, must agree with it."""
    last = turns[-1].role
    if role is not None and role.capitalize() != last:
        raise SafetyError(
            f"role: asked to judge the {role.capitalize()} but the dialog ends with a {last} turn "
            "(Llama Guard judges the last turn)"
        )
    return last


def format_categories(categories: Sequence[Category], version: str) -> str:
    end = ". " if version == "lg2" else "."
    return "\n".join(f"{c.code}: {c.name}{end}" + (f"\n{c.description}" if c.description else "") for c in categories)


def guard_prompt(turns: Sequence[Turn], categories: Sequence[Category], version: str = "lg3") -> str:
    """The prompt text for `version` "lg2" or "lg3"/"lg3-1b"; for LG3 it is the content of one user turn."""
    if not turns:
        raise SafetyError("dialog: nothing to classify")
    role = turns[-1].role
    conversation = "\n\n".join(f"{t.role}: {t.content}" for t in turns)
    text = (
        f"Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy "
        "with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{format_categories(categories, version)}\n"
        "<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{conversation}\n\n<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
    )
    return f"[INST] {text} [/INST]" if version == "lg2" else text


def encode_guard_prompt(
    tokenizer: Tokenizer, turns: Sequence[Turn], categories: Sequence[Category], version: str = "lg3"
) -> list[int]:
    """Token ids ending where the guard's answer starts. Control-token strings inside the dialog stay text."""
    text = guard_prompt(turns, categories, version)
    if version == "lg2":
        return tokenizer.encode(text, bos=tokenizer.bos_id is not None)
    return tokenizer.encode_chat([{"role": "user", "content": text}])


def guard_answer(verdict: Verdict) -> str:
    """What a guard should answer for `verdict` (the training target)."""
    return "safe" if verdict.safe else "unsafe\n" + ",".join(verdict.categories)


_CODE_LIST = re.compile(r"^S[1-9][0-9]*(?:,S[1-9][0-9]*)*$")


def parse_verdict(text: str, codes: Sequence[str]) -> Verdict:
    """`safe`, or `unsafe` then one line of codes from `codes`; surrounding whitespace is ignored.

    Raises SafetyError for anything else (other words, another case, extra lines, unknown or no codes)."""
    lines = text.strip().split("\n")
    shown = text if len(text) <= 80 else text[:77] + "..."
    if lines == ["safe"]:
        return Verdict(True)
    if lines[0] != "unsafe":
        raise SafetyError(f"guard answer {shown!r}: the first line must be exactly 'safe' or 'unsafe'")
    if len(lines) != 2:
        raise SafetyError(f"guard answer {shown!r}: 'unsafe' must be followed by exactly one line of categories")
    listed = lines[1].replace(" ", "")
    if not _CODE_LIST.match(listed):
        raise SafetyError(f"guard answer {shown!r}: the categories line must be comma-separated codes like S1,S10")
    found = tuple(dict.fromkeys(listed.split(",")))
    if unknown := [c for c in found if c not in codes]:
        raise SafetyError(f"guard answer {shown!r}: unknown category {unknown[0]} (this policy has {', '.join(codes)})")
    return Verdict(False, found)
