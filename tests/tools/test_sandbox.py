import os
import socket
import sys
import time
from pathlib import Path

import pytest

from herd.errors import ToolError
from herd.tools import run_python, sandbox


def test_a_clean_run_returns_its_output() -> None:
    result = run_python("print(sum(range(10)))")
    assert result.ok
    assert result.stdout == "45\n"
    assert result.error is None


def test_an_exception_fails_with_its_last_traceback_line() -> None:
    result = run_python("def f():\n    raise ValueError('bad value 7')\nf()")
    assert not result.ok
    assert result.error == "ValueError: bad value 7"
    assert "Traceback" in result.stderr


def test_a_nonzero_exit_without_message_names_the_status() -> None:
    assert run_python("import sys; sys.exit(3)").error == "exit status 3"


@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_a_run_past_the_timeout_is_killed(code: str) -> None:
    start = time.monotonic()
    result = run_python(code, timeout=1.0)
    assert time.monotonic() - start < 2.0
    assert not result.ok
    assert result.error == "timed out after 1 s"


def test_children_left_running_are_killed_with_the_run() -> None:
    # The child inherits the output pipes: without the group kill, reading them would wait for its 30 s.
    code = (
        "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\nprint('hi')"
    )
    start = time.monotonic()
    result = run_python(code, timeout=3.0)
    assert time.monotonic() - start < 2.0
    assert result.ok and result.stdout == "hi\n"


def test_the_memory_limit_stops_a_huge_allocation() -> None:
    result = run_python("x = bytearray(4 * 1024**3)\nprint('allocated')", memory_mb=256)
    assert not result.ok
    assert result.stdout == ""
    assert "MemoryError" in result.error


def test_each_run_gets_a_fresh_empty_working_directory() -> None:
    code = "import os\nprint(os.getcwd())\nprint(os.listdir('.'))\nopen('left_behind.txt', 'w').write('x')"
    first, second = run_python(code), run_python(code)
    assert first.ok and second.ok
    cwd_1, listing_1 = first.stdout.splitlines()
    cwd_2, listing_2 = second.stdout.splitlines()
    assert listing_1 == listing_2 == "[]"
    assert cwd_1 != cwd_2
    assert cwd_1 != os.getcwd()
    assert not os.path.exists(cwd_1)


def test_the_environment_is_nearly_empty_and_stdin_is_closed() -> None:
    os.environ["HERD_SANDBOX_SECRET"] = "1"
    try:
        result = run_python("import os\nprint(sorted(os.environ))\ninput()")
    finally:
        del os.environ["HERD_SANDBOX_SECRET"]
    assert "HERD_SANDBOX_SECRET" not in result.stdout
    assert result.error == "EOFError: EOF when reading a line"


def test_output_is_cut_at_the_bound() -> None:
    result = run_python("print('x' * 100_000)\nraise SystemExit('done')", max_output=1000)
    assert result.stdout == "x" * 1000 + "\n[output truncated]"
    assert result.error == "done"


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="timeout=0"):
        run_python("pass", timeout=0)


def _visible_for_python(path: str) -> bool:
    """Whether the sandbox shows `path` because the Python running herd lives there or below it."""
    return any(p == path or p.startswith(path.rstrip("/") + "/") for p in (sys.prefix, sys.base_prefix))


def test_the_network_is_unreachable() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {server.getsockname()[1]}), timeout=2)
    print("connected")
except OSError as e:
    print(type(e).__name__)
"""
        result = run_python(code)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing ever connected
            server.accept()
    assert result.ok and result.stdout == "ConnectionRefusedError\n"  # its own loopback, with no server on it


def test_files_outside_the_sandbox_cannot_be_read(tmp_path: Path) -> None:
    secret = tmp_path / "home" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("s3cret")
    paths = [str(secret), __file__, "/etc/passwd", "/home", *(str(p) for p in Path.home().iterdir())]
    paths = [p for p in paths if os.path.exists(p) and not _visible_for_python(p)]
    assert str(secret) in paths and __file__ in paths
    result = run_python(f"import os\nprint([p for p in {paths!r} if os.path.exists(p)])")
    assert result.ok and result.stdout == "[]\n"


def test_nothing_outside_its_tmp_is_writable(tmp_path: Path) -> None:
    targets = [str(tmp_path / "out.txt"), "/etc/herd-out.txt", "/usr/herd-out.txt", f"{sys.prefix}/herd-out.txt"]
    targets += ["/herd-out.txt", "/dev/herd-out.txt"]
    code = f"""
import os
written = []
for path in [*{targets!r}, os.environ["TMPDIR"] + "/ok.txt"]:
    try:
        open(path, "w").write("x")
        written.append(os.path.basename(path))
    except OSError:
        pass
print(written)
"""
    result = run_python(code)
    on_host = [t for t in targets if os.path.exists(t)]
    for target in on_host:  # clean up after a broken sandbox
        os.remove(target)
    assert on_host == []
    assert result.ok and result.stdout == "['ok.txt']\n"


def test_a_fork_bomb_is_capped_at_the_process_limit() -> None:
    # Every child sleeps, so this stays harmless to the host even without the cap (64 tasks).
    code = """
import os, time
n = 0
try:
    for _ in range(1000):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except BlockingIOError:
    pass
print(n)
"""
    start = time.monotonic()
    result = run_python(code, timeout=10.0)
    assert time.monotonic() - start < 5.0  # the sleeping children die with the run
    assert result.ok and 0 < int(result.stdout) < 64


def test_a_child_that_calls_setsid_is_killed_with_the_run() -> None:
    # The child leaves the process group and keeps writing to the inherited stdout: had it survived the kill, its
    # lines would show up (and reading the pipe would wait for it).
    code = """
import os, time
if os.fork() == 0:
    os.setsid()
    while True:
        time.sleep(0.2)
        print("alive", flush=True)
print("hi", flush=True)
"""
    start = time.monotonic()
    result = run_python(code, timeout=3.0)
    assert time.monotonic() - start < 2.0
    assert result.ok and result.stdout == "hi\n"


@pytest.mark.parametrize("bwrap", ["/nonexistent/bwrap", "false"])  # missing; present but failing (like no userns)
def test_without_a_working_bwrap_it_refuses_unless_allowed(bwrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.BWRAP_ENV, bwrap)
    monkeypatch.delenv(sandbox.UNSANDBOXED_ENV, raising=False)
    with pytest.raises(ToolError, match=r"apt-get install bubblewrap\) or pass --unsafe-no-sandbox"):
        run_python("print('ran')")
    monkeypatch.setenv(sandbox.UNSANDBOXED_ENV, "1")
    with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
        assert run_python("print('ran')").stdout == "ran\n"
    monkeypatch.delenv(sandbox.UNSANDBOXED_ENV)
    sandbox.allow_unsandboxed(True)
    try:
        with pytest.warns(RuntimeWarning, match="WITHOUT a sandbox"):
            assert run_python("print('ran')").stdout == "ran\n"
    finally:
        sandbox.allow_unsandboxed(False)
