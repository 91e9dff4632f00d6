"""The data mix: how many tokens to draw from each source for a training budget, and how often each repeats.

Llama 3 settled on about 50% general knowledge, 25% mathematics and reasoning, 17% code and 8% multilingual
tokens (paper section 3.1.2). Given the tokens each source holds and target weights, `plan_mix` says how many
tokens a run of `total_tokens` takes from each and how many epochs that is: a source drawn for more than about
4 epochs is a sign the mix asks for more than the data has.
"""

from __future__ import annotations

from typing import Any

from herd.errors import DataError

LLAMA3_MIX = {"general": 0.50, "math": 0.25, "code": 0.17, "multilingual": 0.08}


def parse_weights(text: str) -> dict[str, float]:
    """`general=0.5,math=0.25` (or `llama3`) -> weights normalized to sum to 1."""
    if text.strip() == "llama3":
        return dict(LLAMA3_MIX)
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise DataError(f"mix weight {part!r} must look like source=0.25") from None
        if not sep or weights[name.strip()] < 0:
            raise DataError(f"mix weight {part!r} must look like source=0.25 with a weight >= 0")
    total = sum(weights.values())
    if not weights or total <= 0:
        raise DataError(f"mix {text!r} has no positive weight")
    return {k: v / total for k, v in weights.items()}


def plan_mix(tokens: dict[str, int], weights: dict[str, float], total_tokens: int) -> dict[str, dict[str, Any]]:
    """Per source: its weight, tokens available, tokens to draw for `total_tokens`, and the epochs that makes."""
    if missing := sorted(k for k, w in weights.items() if w > 0 and not tokens.get(k)):
        raise DataError(f"the mix asks for sources with no tokens: {missing}; available: {sorted(tokens)}")
    plan = {}
    for name, weight in weights.items():
        draw = round(weight * total_tokens)
        have = tokens.get(name, 0)
        plan[name] = {
            "weight": round(weight, 4),
            "tokens": have,
            "draw": draw,
            "epochs": round(draw / have, 3) if have else 0.0,
        }
    return plan
