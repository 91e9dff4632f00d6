"""How `herd run` reaches the commands its stages wrap, and what it prints (the `run` parser itself is in
herd/cli.py, which also chats with or serves the result: those commands live there).

A stage runs a command as a user types it: `invoke(add_eval_parser, ["eval", "harness", ...])` builds that command's
own parser (the one `herd` registers), parses the line and calls the command in this process.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from herd.recipe.spec import Recipe, RecipeError

if TYPE_CHECKING:
    from herd.recipe.runner import Planned


def invoke(add_parser: Callable[[argparse._SubParsersAction], None], argv: Sequence[str]) -> None:
    """Parse `herd ARGV` with the parser `add_parser` registers and run the command; HerdError propagates."""
    parser = argparse.ArgumentParser(prog="herd", exit_on_error=False)
    add_parser(parser.add_subparsers(dest="command", required=True))
    try:
        a, extra = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as e:
        raise RecipeError(f"herd {' '.join(argv[:2])}: {e}") from None
    if getattr(a, "passthrough", False):  # `herd eval harness`: the rest of the line is lm-eval's
        a.passthrough_args, extra = extra, []
    if extra:
        raise RecipeError(f"herd {' '.join(argv[:2])}: unrecognized arguments: {' '.join(extra)}")
    a.overrides = []
    a.func(a)


def format_done(recipe: Recipe, planned: list[Planned]) -> str:
    ran = sum(p.status == "ran" for p in planned)
    reused = sum(p.status == "reuse" for p in planned)
    lines = [f"herd run: {recipe.name} done ({ran} stages ran, {reused} reused) in {recipe.dir}",
             f"  lineage: {recipe.dir / 'lineage.json'}", f"  report:  {recipe.dir / 'report.html'}"]  # fmt: skip
    if model := final_model(recipe):
        lines.append(f"  model:   {model}")
    return "\n".join(lines)


def final_model(recipe: Recipe) -> str | None:
    """The main output of the recipe's last model-making stage, once it has finished."""
    from herd.recipe.stages import KINDS

    for spec in reversed(recipe.stages):
        if KINDS[spec.kind].OUTPUT == "model":
            try:
                out = json.loads((recipe.dir / spec.name / "stage.json").read_text())["outputs"]["main"]
            except (OSError, ValueError, KeyError):
                return None
            return str(recipe.dir / out) if (recipe.dir / out).exists() else out
    return None


def service_argv(planned: list[Planned]) -> list[str] | None:
    """`herd serve ...` for the recipe's serve stage, with the outputs of the stages it reads (None: no stage)."""
    by_name = {p.name: p for p in planned}
    for p in planned:
        if p.stage.SERVICE and p.status == "serve":
            inputs = {n: by_name[src].done for n, src in p.stage.spec.inputs.items()}
            return p.stage.command({n: d for n, d in inputs.items() if d is not None})  # type: ignore[attr-defined]
    return None
