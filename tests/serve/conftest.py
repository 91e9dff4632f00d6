"""Real `herd serve` processes for the test modules: started as users start them, on a free 127.0.0.1 port, waited
for through /health (bounded), and stopped when the module ends."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

KEY = "test-key"
"""The --api-key every test server runs with."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(*flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """(base URL, process) of `herd serve --api-key KEY <flags>`; terminated on exit."""
    port = _free_port()
    cmd = [sys.executable, "-m", "herd", "serve", "--port", str(port), "--api-key", KEY, *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"herd serve exited: {proc.stdout.read() if proc.stdout else ''}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("herd serve did not answer /health within 120 s")
            time.sleep(0.3)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def serve():
    """`serve(*flags)` starts `herd serve --api-key test-key <flags>` and gives (base URL, process)."""
    with contextlib.ExitStack() as stack:
        yield lambda *flags: stack.enter_context(running_server(*flags))
