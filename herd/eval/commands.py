"""`herd eval`: humaneval, harness, pairwise, contamination and report, one subcommand per module.

Each module keeps its flags next to its code (`add_arguments`, `command`) and imports torch, lm-eval or matplotlib
only inside its functions: building herd's parser imports this file on every command.
"""

from __future__ import annotations

import argparse

from herd.eval import contamination, harness, humaneval, pairwise, report


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate models: HumanEval, lm-eval tasks, pairwise preferences, contamination, a report card",
        description="Each subcommand writes <benchmark>.json result files into --out; `herd eval report` "
        "lays several models' results side by side (eval.json + index.html).",
    )
    esub = p.add_subparsers(dest="eval_command", required=True)
    for name, module, help_text in (
        ("humaneval", humaneval, "HumanEval (or an MBPP-style jsonl): n samples per problem, run in the sandbox, "
         "unbiased pass@k with confidence intervals"),
        ("harness", harness, "lm-evaluation-harness with herd's model (`--model herd`); arguments pass through"),
        ("pairwise", pairwise, "model A vs model B over the 12 use cases, judged in both orders"),
        ("contamination", contamination, "8-gram overlap of eval items with training shards; clean vs "
         "contaminated scores"),
        ("report", report, "one report card (eval.json, index.html) over several models' result directories"),
    ):  # fmt: skip
        q = esub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(q)
        q.set_defaults(func=module.command)
