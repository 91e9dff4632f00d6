"""Schemathesis hooks for `test_clients.py` (its CLI loads this file through SCHEMATHESIS_HOOKS): cap what a fuzzed
generation may cost. Unbounded, schemathesis asks for up to the whole context per request (minutes per run)."""

import schemathesis

MAX_TOKENS = 8


@schemathesis.hook
def map_case(_: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    # A value pydantic reads as a bigger count ("300", 3e2) or none (the default: the rest of the context) becomes
    # the cap; other invalid values stay, so negative cases still reach the validation. The schema caps n at 16.
    if isinstance(case.body, dict) and case.operation.path.endswith("completions"):
        for key in ("max_tokens", "max_completion_tokens"):
            try:
                too_many = float(case.body.get(key)) > MAX_TOKENS
            except (TypeError, ValueError):
                too_many = case.body.get(key) is None
            if too_many:
                case.body[key] = MAX_TOKENS
    return case
