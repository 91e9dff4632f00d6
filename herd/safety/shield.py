"""Input and output shields: a guard in front of and behind a chat model, as Llama 3 deployments run Llama Guard.

The input shield judges the user's turn before the model sees it and answers a blocked request with a fixed
refusal that names the categories. The output shield judges the model's reply and replaces a blocked one. Both
log what they blocked (logger "herd.safety", with the codes and the guard's score). A guard answer that cannot be
parsed blocks too: a shield fails closed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from herd.safety.guard import Guard, GuardResult

log = logging.getLogger("herd.safety")


@dataclass(frozen=True, slots=True)
class ShieldResult:
    blocked: bool
    categories: tuple[str, ...]
    message: str
    """The text to show instead, when blocked ("" otherwise)."""
    guard: GuardResult


class Shield:
    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def describe(self, categories: Sequence[str]) -> str:
        names = self.guard.category_names
        return ", ".join(f"{c} {names.get(c, '')}".strip() for c in categories) or "an unparsable guard answer"

    def check_input(self, messages: Sequence[dict[str, Any]]) -> ShieldResult:
        """Judge the dialog's last user (or tool) turn."""
        result = self.guard.classify(messages)
        text = f"I can't help with that request: it falls under {self.describe(result.categories)} in my safety policy."
        return self._result("input", result, text)

    def check_output(self, messages: Sequence[dict[str, Any]], reply: str) -> ShieldResult:
        """Judge `reply` as the Agent's answer to `messages`."""
        result = self.guard.classify([*messages, {"role": "assistant", "content": reply}], "agent")
        text = f"[The response was withheld by the output shield: {self.describe(result.categories)}.]"
        return self._result("output", result, text)

    def _result(self, side: str, result: GuardResult, text: str) -> ShieldResult:
        if result.safe:
            return ShieldResult(False, (), "", result)
        log.warning(
            "%s shield blocked: %s (score %.3f)%s",
            side,
            ",".join(result.categories) or "-",
            result.score,
            f"; {result.error}" if result.error else "",
        )
        return ShieldResult(True, result.categories, text, result)
