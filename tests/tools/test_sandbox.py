import os
import time

import pytest

from herd.tools import run_python


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
