"""Where chat templates run: jinja's immutable sandbox, bounded in time and in the size of what one expression builds.

A chat template is code that comes with a downloaded tokenizer. The sandbox already keeps it from attributes,
mutation and the host; what it does not bound is work. So a render runs under a wall-clock deadline (a trace
function on the template's own frames checks the clock at every line, and loops are lines), and `*` / `**` refuse
results past a size. Repeated concatenation (`s ~ s`) is bounded by the deadline only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from herd.errors import TokenizerError

RENDER_SECONDS = 5.0  # a real template renders in milliseconds
MAX_ITEMS = 10_000_000  # characters or items that one `*` may make
MAX_POWER_BITS = 4096  # bits of an integer that one `**` may make

_TEMPLATE_FILE = "<template>"  # the file name of the code jinja compiles a template from a string into
T = TypeVar("T")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """transformers' chat-template environment (immutable sandbox) with `*` and `**` held to a size."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | bytes | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > MAX_ITEMS:
                    raise SecurityError(f"'*' would make {len(seq) * times:,} items (limit {MAX_ITEMS:,})")
        powers = operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1
        if powers and right * abs(left).bit_length() > MAX_POWER_BITS:
            raise SecurityError(f"'**' would make an integer of about {right * abs(left).bit_length():,} bits")
        return super().call_binop(context, operator, left, right)


def render_bounded(render: Callable[[], T], source: str, seconds: float | None = None) -> T:
    """`render()` with the template's frames stopped once `seconds` (default RENDER_SECONDS) have passed."""
    limit = RENDER_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + limit
    outer = sys.gettrace()  # a debugger's or coverage's tracer keeps seeing every other frame

    def in_template(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise TokenizerError(f"chat template of {source}: still rendering after {limit:g} s; stopped")
        return in_template

    def on_call(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == _TEMPLATE_FILE:
            return in_template
        return outer(frame, event, arg) if outer is not None else None  # type: ignore[arg-type]

    sys.settrace(on_call)
    try:
        return render()
    finally:
        sys.settrace(outer)
