"""The code interpreter: Python run in a resource-limited subprocess.

This is NOT a security boundary and not a container. What it limits: wall time (the whole process group is killed
after `timeout`), CPU time, address space, open files, the size of files written, core dumps, the output kept, the
environment (nearly empty, `python -I` ignores PYTHON* variables and the user's site directory) and the working
directory (a fresh temporary one, removed afterwards). What it does NOT isolate: the network, reading any file the
user can read, writing files outside the working directory, the number of processes, signals to the user's other
processes, and children that leave the process group (setsid) and so survive the kill. Run untrusted code inside a
real sandbox (container, VM, gVisor) as well.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import cast

MAX_OUTPUT_BYTES = 16_384
_TAIL_BYTES = 4096  # enough for the last lines of a traceback when stderr was cut
_MAX_OPEN_FILES = 64
_MAX_FILE_BYTES = 16 * 2**20
_TRUNCATED = "\n[output truncated]"


@dataclass(frozen=True, slots=True)
class SandboxResult:
    ok: bool
    """The code ran to the end and exited with status 0."""
    stdout: str
    stderr: str
    error: str | None
    """Why it failed: the exception's last line, the timeout, a limit or a signal; None when ok."""


def run_python(
    code: str, *, timeout: float = 5.0, memory_mb: int = 512, max_output: int = MAX_OUTPUT_BYTES
) -> SandboxResult:
    """Runs `code` with `python -I` in a new temporary directory; stdin is empty, each stream is cut at `max_output`
    bytes. See the module docstring for what this does not isolate."""
    if timeout <= 0 or memory_mb <= 0 or max_output <= 0:
        raise ValueError(f"timeout={timeout}, memory_mb={memory_mb}, max_output={max_output}: all must be positive")
    with tempfile.TemporaryDirectory(prefix="herd-sandbox-", ignore_cleanup_errors=True) as cwd:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=_environment(cwd),
            start_new_session=True,  # its own process group, so the kill reaches every child it starts
            preexec_fn=lambda: _limit_resources(timeout, memory_mb),
        )
        # All three streams are pipes with the default buffering: never None (as typeshed allows), and stdout and
        # stderr are BufferedReaders (typeshed says IO[bytes], which has no read1).
        assert proc.stdin is not None
        stdout, stderr = cast(io.BufferedReader, proc.stdout), cast(io.BufferedReader, proc.stderr)
        out, err = _Capture(stdout, max_output), _Capture(stderr, max_output)
        out.start()
        err.start()
        try:
            # `python -` reads the whole script before running it, so this write cannot wait on the code.
            proc.stdin.write(code.encode("utf-8", errors="replace"))
            proc.stdin.close()
        except BrokenPipeError:  # it died before reading, e.g. the memory limit is below Python's start-up size
            pass
        try:
            proc.wait(timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        # Also after a normal exit: a child left running would hold the pipes open and outlive the call.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        out.join()
        err.join()
    return SandboxResult(
        ok=proc.returncode == 0 and not timed_out,
        stdout=out.text(),
        stderr=err.text(),
        error=_error(proc.returncode, timed_out, timeout, err.tail),
    )


def _environment(cwd: str) -> dict[str, str]:
    return {
        "PATH": os.defpath,
        "HOME": cwd,
        "TMPDIR": cwd,
        "LC_ALL": "C.UTF-8",
        # BLAS / OpenMP runtimes reserve memory per core, which can exceed RLIMIT_AS before any work is done.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _limit_resources(timeout: float, memory_mb: int) -> None:
    """Runs in the child between fork and exec."""
    cpu_seconds = math.ceil(timeout) + 1  # the wall-clock kill normally comes first; this stops a stuck kill too
    for which, value in (
        (resource.RLIMIT_AS, memory_mb * 2**20),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_NOFILE, _MAX_OPEN_FILES),
        (resource.RLIMIT_FSIZE, _MAX_FILE_BYTES),
        (resource.RLIMIT_CORE, 0),
    ):
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)  # an unprivileged process may lower a hard limit, never raise it
        resource.setrlimit(which, (value, value))


class _Capture(threading.Thread):
    """Drains one pipe: keeps the first `limit` bytes and the last few KB, drops the rest so output cannot fill
    memory."""

    def __init__(self, stream: io.BufferedReader, limit: int) -> None:
        super().__init__(daemon=True)
        self.stream, self.limit = stream, limit
        self.head, self.tail, self.total = bytearray(), b"", 0

    def run(self) -> None:
        while chunk := self.stream.read1(1 << 16):
            self.total += len(chunk)
            if len(self.head) < self.limit:
                self.head += chunk[: self.limit - len(self.head)]
            self.tail = (self.tail + chunk)[-_TAIL_BYTES:]
        self.stream.close()

    def text(self) -> str:
        text = self.head.decode("utf-8", errors="replace")
        return text + _TRUNCATED if self.total > self.limit else text


_SIGNAL_REASONS = {
    signal.SIGXCPU: "CPU time limit reached",
    signal.SIGXFSZ: f"file size limit ({_MAX_FILE_BYTES // 2**20} MiB) reached",
}


def _error(returncode: int, timed_out: bool, timeout: float, stderr_tail: bytes) -> str | None:
    if timed_out:
        return f"timed out after {timeout:g} s"
    if returncode < 0:
        sig = signal.Signals(-returncode)
        return _SIGNAL_REASONS.get(sig, f"killed by {sig.name}")
    if returncode > 0:
        lines = [line for line in stderr_tail.decode("utf-8", errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else f"exit status {returncode}"
    return None
