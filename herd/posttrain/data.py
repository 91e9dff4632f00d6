"""Post-training data: jsonl dialogs and preference pairs, checked line by line, and encoded with loss masks.

    SFT line:         {"messages": [{"role": "system" | "user" | "assistant" | "ipython" | "tool", "content": "...",
                                     "tool_calls": [...]}, ...]}
    preference line:  {"messages": [...the prompt...], "chosen": "...", "rejected": "...", "edited": "..."?}
    prompt line:      {"messages": [...ending with a user or ipython turn...], "item": {...}?} (rejection sampling,
                      PPO; "item" carries what a verifiable checker needs)

A bad line (not JSON, not an object, an unknown role, an empty response, a pair whose responses are identical) is
reported as `file:line: reason`; `on_error="skip"` counts and skips it, `"stop"` raises at the first one.

Loss masks come from the renderer that formats the dialog: Meta's Llama 3 format through herd's ChatFormat, or the
model's own jinja chat template through `HFTokenizer.encode_dialog` (tool calls are then JSON in the assistant
text). Targets are the next tokens where the mask is on, IGNORE_INDEX elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.errors import DataError
from herd.fileio import atomic_file
from herd.posttrain.losses import IGNORE_INDEX
from herd.tokenizer import HFTokenizer, Llama3Tokenizer, Tokenizer

ROLES = ("system", "user", "assistant", "ipython", "tool")


@dataclass(slots=True)
class ReadResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """`file:line: reason` for every line left out."""


def read_jsonl(path: str | Path, *, kind: str, on_error: str = "skip") -> ReadResult:
    """Records of an SFT (`kind="sft"`), preference (`"preference"`) or prompt (`"prompt"`) jsonl file, each
    checked."""
    if kind not in ("sft", "preference", "prompt"):
        raise ValueError(f"kind={kind!r}: expected sft, preference or prompt")
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error={on_error!r}: expected skip or stop")
    path = Path(path)
    result = ReadResult()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problem = _check(record, kind)
        except json.JSONDecodeError as e:
            problem = f"invalid JSON ({e.msg} at column {e.colno})"
        if problem is None:
            result.records.append(record)
            continue
        where = f"{path}:{lineno}: {problem}"
        if on_error == "stop":
            raise DataError(where)
        result.problems.append(where)
    return result


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def read_prompts(files: list[str], *, on_error: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Prompt records of jsonl files and the `file:line: reason` of every skipped line; none usable is an error."""
    records, problems = [], []
    for file in files:
        result = read_jsonl(file, kind="prompt", on_error=on_error)
        records += result.records
        problems += result.problems
    if not records:
        raise DataError(f"no usable prompts in {', '.join(files)}" + (f" ({problems[0]})" if problems else ""))
    return records, problems


def _check(record: Any, kind: str) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "no 'messages' list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"message {i} is not an object"
        if m.get("role") not in ROLES:
            return f"message {i}: unknown role {m.get('role')!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(m.get("content", ""), str):
            return f"message {i}: content must be a string"
        if m["role"] == "assistant" and not str(m.get("content", "")).strip() and not m.get("tool_calls"):
            return f"message {i}: empty assistant response"
    if kind == "sft":
        return None if any(m["role"] == "assistant" for m in messages) else "no assistant turn to learn from"
    if kind == "prompt":
        return "the prompt ends with an assistant turn" if messages[-1]["role"] == "assistant" else None
    for key in ("chosen", "rejected"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            return f"empty or missing {key!r} response"
    if record["chosen"].strip() == record["rejected"].strip():
        return "chosen and rejected responses are identical"
    if "edited" in record and (not isinstance(record["edited"], str) or not record["edited"].strip()):
        return "'edited' must be a non-empty response"
    return None


def encode_dialog(tokenizer: Tokenizer, messages: list[dict[str, Any]]) -> tuple[list[int], list[bool]]:
    """Tokens of a finished dialog and the mask of the assistant-written ones, from the dialog's own renderer."""
    if isinstance(tokenizer, Llama3Tokenizer):
        from herd.tokenizer.chat_format import ChatFormat, Message

        return ChatFormat(tokenizer).encode_dialog([Message.from_dict(m, index=i) for i, m in enumerate(messages)])
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.encode_dialog(template_messages(tokenizer, messages))
    raise TypeError(f"no chat renderer for {type(tokenizer).__name__}")


def encode_prompt(tokenizer: Tokenizer, messages: list[dict[str, Any]]) -> list[int]:
    """Tokens of a dialog so far followed by the assistant's header, ready for generation."""
    if isinstance(tokenizer, HFTokenizer):
        messages = template_messages(tokenizer, messages)
    return tokenizer.encode_chat(messages, add_generation_prompt=True)


def template_messages(tokenizer: HFTokenizer, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """herd's neutral tool messages in the form a jinja template without tool support renders: each call as a
    JSON object {"name", "arguments"} in the assistant text, results in the "tool" role. Templates that handle
    `tool_calls` themselves get the messages unchanged."""
    if tokenizer.chat_template is not None and "tool_calls" in tokenizer.chat_template:
        return messages
    out = []
    for m in messages:
        m = dict(m)
        if calls := m.pop("tool_calls", None):
            fns = [c.get("function", c) for c in calls]  # OpenAI's form nests the call under "function"
            texts = [json.dumps({"name": f["name"], "arguments": f.get("arguments", {})}) for f in fns]
            m["content"] = "\n".join(filter(None, [m.get("content", ""), *texts]))
        if m["role"] == "ipython":
            m["role"] = "tool"
        out.append(m)
    return out


def sft_example(tokenizer: Tokenizer, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(inputs, targets): targets[i] is the token after inputs[i] where that token is an assistant's, else
    IGNORE_INDEX."""
    tokens, mask = encode_dialog(tokenizer, messages)
    targets = [t if m else IGNORE_INDEX for t, m in zip(tokens[1:], mask[1:], strict=True)]
    return tokens[:-1], targets


def preference_example(tokenizer: Tokenizer, record: dict[str, Any], response: str) -> tuple[list[int], list[int]]:
    """(inputs, targets) of the prompt followed by one response as the assistant's turn."""
    return sft_example(tokenizer, [*record["messages"], {"role": "assistant", "content": response}])


def format_problems(problems: list[str]) -> list[str]:
    """Console lines for skipped jsonl lines: the first five, then how many more."""
    lines = [f"  skipped {problem}" for problem in problems[:5]]
    if len(problems) > 5:
        lines.append(f"  ... {len(problems) - 5} more skipped lines")
    return lines
