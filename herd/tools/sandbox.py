"""The code interpreter: model-written Python run in a bubblewrap sandbox, under resource limits.

[Note: what the sandbox isolates]
`run_python` starts the code under bubblewrap (`bwrap`, the tool llama-stack's code interpreter uses too) in new pid,
network, IPC, UTS and cgroup namespaces and a new session:
- network: only a loopback of its own; nothing on the host or beyond is reachable;
- files: a fresh root that holds, read-only, /usr (with /bin, /sbin, /lib*), /etc/ld.so.cache, /etc/localtime and the
  Python running herd (sys.prefix and sys.base_prefix: interpreter, stdlib, the venv's packages), plus a fresh /proc
  and /dev. Nothing else of the host is there (no /home, /root, /tmp, /etc, the checkout). The one writable place is
  a private 64 MiB tmpfs on /tmp; a fresh directory in it is the cwd, $HOME and $TMPDIR, and it vanishes with the run;
- processes: at most 64 tasks, threads included (RLIMIT_NPROC), which see and can signal only each other. When the
  code's main process ends, or at `timeout`, the whole pid namespace is killed, children that called setsid
  included, so none holds the output pipes open;
- identity: herd run as root starts bwrap without a user namespace (one would map the code to host uid 0, for which
  Linux never enforces RLIMIT_NPROC), and the code drops to a random unprivileged uid before it runs. Run as a user,
  the code keeps that uid in a new user namespace that cannot make more, where RLIMIT_NPROC counts only the
  namespace's tasks (Linux >= 5.14; older kernels count all the user's processes);
- limits, as before: wall time, CPU time, address space, open files, file size, no core dump, the output kept, a
  nearly empty environment, `python -I`.

Where bwrap is missing or cannot make its namespaces (probed once), `run_python` raises ToolError unless running
without the sandbox was allowed (`allow_unsandboxed()`, the CLI's --unsafe-no-sandbox, or HERD_UNSAFE_NO_SANDBOX=1).
The code then runs as the caller in a temporary directory under the limits above only, which is NOT a security
boundary: it can use the network, read any file the user can, write outside its directory, start any number of
processes, signal the user's other processes, and a child that calls setsid survives the kill (herd then stops
reading its output a second after the run).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from herd.errors import ToolError

MAX_OUTPUT_BYTES = 16_384
UNSANDBOXED_ENV = "HERD_UNSAFE_NO_SANDBOX"
"""Set to 1 to allow running code without the sandbox where it is unavailable, like `allow_unsandboxed()`."""
BWRAP_ENV = "HERD_BWRAP"
"""The bwrap binary to use (a name or a path); default `bwrap` on PATH."""
_TAIL_BYTES = 4096  # enough for the last lines of a traceback when stderr was cut
_MAX_OPEN_FILES = 64
_MAX_FILE_BYTES = 16 * 2**20
_MAX_PROCESSES = 64
_TMP_BYTES = 64 * 2**20
_DRAIN_SECONDS = 1.0
_TRUNCATED = "\n[output truncated]"
# What the sandbox shows of the host, read-only, besides the Python running herd. Missing ones are skipped.
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/localtime")
# The first program in the sandbox (`python -I -S -c`, argv: uid, process limit): as root, become the unprivileged uid;
# cap the processes; then exec `python -I -`, which reads the code from the same stdin.
_ENTER = """\
import os, resource, sys
uid, nproc = int(sys.argv[1]), int(sys.argv[2])
if os.getuid() == 0:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
os.execv(sys.executable, [sys.executable, "-I", "-"])
"""

_unsandboxed_allowed = False


@dataclass(frozen=True, slots=True)
class SandboxResult:
    ok: bool
    """The code ran to the end and exited with status 0."""
    stdout: str
    stderr: str
    error: str | None
    """Why it failed: the exception's last line, the timeout, a limit or a signal; None when ok."""


def allow_unsandboxed(allow: bool = True) -> None:
    """Lets `run_python` run code without the sandbox, under resource limits only, where bubblewrap is missing or
    cannot make its namespaces (the CLI's --unsafe-no-sandbox). Where the sandbox works it is always used."""
    global _unsandboxed_allowed
    _unsandboxed_allowed = allow


def run_python(
    code: str, *, timeout: float = 5.0, memory_mb: int = 512, max_output: int = MAX_OUTPUT_BYTES
) -> SandboxResult:
    """Runs `code` with `python -I` in the sandbox, in a new empty directory; stdin is empty, each stream is cut at
    `max_output` bytes. Raises ToolError where the sandbox is unavailable and running without it was not allowed."""
    if timeout <= 0 or memory_mb <= 0 or max_output <= 0:
        raise ValueError(f"timeout={timeout}, memory_mb={memory_mb}, max_output={max_output}: all must be positive")
    name = os.environ.get(BWRAP_ENV) or "bwrap"
    bwrap = shutil.which(name)
    problem = _probe(bwrap) if bwrap else f"no bwrap binary ({name} not found)"
    if problem is None:
        assert bwrap is not None
        cwd = f"/tmp/herd-sandbox-{secrets.token_hex(8)}"
        return _run(_sandboxed(bwrap, cwd), code, "/", cwd, timeout, memory_mb, max_output, sandboxed=True)
    if not (_unsandboxed_allowed or os.environ.get(UNSANDBOXED_ENV) == "1"):
        raise ToolError(
            f"refusing to run model-written code without a sandbox: {problem}; install bubblewrap "
            f"(apt-get install bubblewrap) or pass --unsafe-no-sandbox ({UNSANDBOXED_ENV}=1) to run it unisolated"
        )
    warnings.warn(f"running model-written code WITHOUT a sandbox ({problem})", RuntimeWarning, stacklevel=2)
    with tempfile.TemporaryDirectory(prefix="herd-sandbox-", ignore_cleanup_errors=True) as cwd:
        return _run([sys.executable, "-I", "-"], code, cwd, cwd, timeout, memory_mb, max_output, sandboxed=False)


@functools.cache
def _probe(bwrap: str) -> str | None:
    """Why `bwrap` cannot sandbox code here (e.g. user namespaces are disabled), or None when a run works."""
    try:
        probe = subprocess.run(
            _sandboxed(bwrap, "/tmp/probe"), stdin=subprocess.DEVNULL, capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{bwrap} failed: {e}"
    lines = probe.stderr.decode("utf-8", errors="replace").strip().splitlines()
    return f"{bwrap} failed: {lines[-1] if lines else probe.returncode}" if probe.returncode else None


def _sandboxed(bwrap: str, cwd: str) -> list[str]:
    """The command running `python -I -` in the sandbox (see the [Note: what the sandbox isolates])."""
    args = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    args += ["--die-with-parent", "--new-session"]  # with the pid namespace, killing bwrap kills every task in it
    if os.geteuid() == 0:  # no user namespace (see the Note); keep only the two caps _ENTER needs to drop to `uid`
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user", "--disable-userns"]
    for path in _SYSTEM_PATHS:
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(_TMP_BYTES), "--tmpfs", "/tmp"]
    args += ["--perms", "0777", "--dir", cwd, "--chdir", cwd]
    # After the /tmp tmpfs, so a Python living under /tmp stays visible.
    for prefix in sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}):
        if not Path(prefix).is_relative_to("/usr"):
            # bwrap 0.8 makes a bind's missing parents 0700, closed to the unprivileged uid; --dir makes them 0755.
            for parent in reversed(Path(prefix).parents[:-1]):
                args += ["--dir", str(parent)]
            args += ["--ro-bind", prefix, prefix]
    # / and /dev are bwrap's own tmpfs, unbounded, and writable by the uid of a user namespace: close them.
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    uid = 2**30 + secrets.randbelow(2**30)  # its own uid (as root): RLIMIT_NPROC counts the tasks of a uid
    return [*args, sys.executable, "-I", "-S", "-c", _ENTER, str(uid), str(_MAX_PROCESSES)]


def _run(
    argv: list[str],
    code: str,
    cwd: str,
    home: str,
    timeout: float,
    memory_mb: int,
    max_output: int,
    *,
    sandboxed: bool,
) -> SandboxResult:
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=_environment(home),
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
    # In the sandbox every pipe closes with the pid namespace. Outside it a child that called setsid may hold them
    # for as long as it lives: stop waiting and keep what came.
    out.join(_DRAIN_SECONDS)
    err.join(_DRAIN_SECONDS)
    returncode = proc.returncode
    if sandboxed and returncode > 128:
        returncode = 128 - returncode  # bwrap exits 128 + N when the code was killed by signal N
    return SandboxResult(
        ok=returncode == 0 and not timed_out,
        stdout=out.text(),
        stderr=err.text(),
        error=_error(returncode, timed_out, timeout, err.tail),
    )


def _environment(home: str) -> dict[str, str]:
    return {
        "PATH": os.defpath,
        "HOME": home,
        "TMPDIR": home,
        "LC_ALL": "C.UTF-8",
        # BLAS / OpenMP runtimes reserve memory per core, which can exceed RLIMIT_AS before any work is done.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _limit_resources(timeout: float, memory_mb: int) -> None:
    """Runs in the child between fork and exec (bwrap's limits pass on to the code)."""
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
