"""Mutation fuzzing of herd's readers (issue 22).

Start from a valid file that herd wrote, corrupt it (truncate, flip bytes, insert, delete or repeat a span, write an
extreme integer over a header field), and hand it to the reader. A reader may accept the file or refuse it with a
one-line `HerdError` that names the file (or its directory). Anything else is a defect: another exception type, a
message over several lines, a read that takes seconds (a hang, a loop over a size taken from a header) or a huge
allocation (which surfaces here as MemoryError or a torch/numpy allocation error).

`tests/fuzz/test_readers.py` runs a bounded count per reader in `make test`; `python tests/fuzz/long.py` runs each
reader for minutes and writes the counts to `tests/fuzz/results.json`.
"""

from __future__ import annotations

import contextlib
import random
import signal
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from herd.errors import HerdError

# Integers that break size and count fields: zero, one, sign boundaries, all ones.
EXTREMES = (0, 1, 0x7F, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 2**63 - 1, 2**64 - 1)
SLOW_S = 10.0  # one read taking longer than this is a defect (the files are kilobytes)
HANG_S = 60.0  # ... and one still running after this is interrupted, so the run goes on and names it


class _Hang(BaseException):
    """Raised into a read that runs past HANG_S (a BaseException, so the reader's own handlers let it through)."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random corruption of `data`. Header-sized prefixes are hit more often: that is where sizes live."""
    b = bytearray(data)
    if not b:
        return rng.randbytes(rng.randrange(1, 64))

    def offset() -> int:
        return rng.randrange(min(len(b), 512)) if rng.random() < 0.6 else rng.randrange(len(b))

    kind = rng.randrange(6)
    if kind == 0:  # truncate
        return bytes(b[: rng.randrange(len(b))])
    if kind == 1:  # flip 1-8 bytes
        for _ in range(rng.randint(1, 8)):
            b[offset()] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
        return bytes(b)
    if kind == 2:  # insert random bytes
        at = offset()
        return bytes(b[:at] + rng.randbytes(rng.randint(1, 16)) + b[at:])
    if kind == 3:  # an extreme integer over 4 or 8 bytes
        width = rng.choice((4, 8))
        value = rng.choice(EXTREMES) & (2 ** (8 * width) - 1)
        at = min(offset(), max(0, len(b) - width))
        b[at : at + width] = struct.pack("<I" if width == 4 else "<Q", value)[: len(b) - at]
        return bytes(b)
    at = offset()
    span = rng.randint(1, max(1, min(64, len(b) - at)))
    if kind == 4:  # delete a span
        return bytes(b[:at] + b[at + span :])
    return bytes(b[: at + span] + b[at : at + span] + b[at + span :])  # repeat a span


@dataclass
class Outcome:
    """What a reader did with the mutated files: accepted, refused cleanly, or failed (with a reproducer)."""

    accepted: int = 0
    refused: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return self.accepted + self.refused + len(self.failures)


def fuzz(
    read: Callable[[], object], target: Path, *, count: int, seconds: float, seed: int, names: tuple[str, ...] = ()
) -> Outcome:
    """Corrupt `target` in place up to `count` times or for `seconds`, calling `read()` after each; restores it.

    A refusal must name `target`, its directory, or one of `names` (readers that take a directory name that)."""
    original = target.read_bytes()
    rng = random.Random(seed)
    out = Outcome()
    allowed = (str(target), str(target.parent), *names)
    deadline = time.monotonic() + seconds
    try:
        while out.runs < count and time.monotonic() < deadline:
            data = mutate(original, rng)
            target.write_bytes(data)
            where = f"{target.name}, seed {seed}, run {out.runs} ({len(data)} bytes)"  # runs replay from the seed
            start = time.monotonic()
            try:
                with _deadline(HANG_S):
                    read()
            except _Hang:
                out.failures.append(f"{where}: still reading after {HANG_S:.0f} s (interrupted)")
            except HerdError as e:
                message = str(e)
                if "\n" in message:
                    out.failures.append(f"{where}: message over several lines: {message[:300]!r}")
                elif not any(name in message for name in allowed):
                    out.failures.append(f"{where}: message names no file: {message[:300]!r}")
                else:
                    out.refused += 1
            except Exception as e:  # the defect this fuzzing is for
                tb = traceback.extract_tb(e.__traceback__)[-1]
                out.failures.append(
                    f"{where}: {type(e).__name__}: {str(e)[:200]} (at {Path(tb.filename).name}:{tb.lineno})"
                )
                if len(out.failures) >= 20:
                    break
            else:
                out.accepted += 1
            if time.monotonic() - start > SLOW_S:
                out.failures.append(f"{where}: took {time.monotonic() - start:.1f} s")
    finally:
        target.write_bytes(original)
    return out
