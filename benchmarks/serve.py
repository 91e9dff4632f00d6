"""Serving under load: `herd serve` vs llama-cpp-python's server (`llama_cpp.server`) on the same GGUF file.

Both servers run on this machine, one after the other, each in its own process with --threads threads, on the same
file (the embedded SmolLM2-135M requantized by llama.cpp's own quantizer, as benchmarks/generate.py makes it). For
1, 4 and 16 concurrent clients (herd.serve.loadgen: each client streams one chat completion after another, 64 new
tokens, temperature 0.7, for --seconds), we record output tokens/s over all clients, p50/p99 time to first token and
p50/p99 inter-token latency, the status codes, and each server's peak RSS.

    pip install -c constraints.txt -e '.[bench-llamacpp]'     # llama-cpp-python[server], a ~10-minute build
    .venv/bin/python benchmarks/serve.py                         # q8_0, 1/4/16 clients, 30 s each
    .venv/bin/python benchmarks/serve.py --precision f32 --seconds 10

Results: benchmarks/results/serve_<precision>.json. herd runs --max-batch 16 (continuous batching). llama_cpp.server
runs one request at a time, with n_ctx the same 2048 tokens as herd's --max-seq-len and --interrupt_requests False:
by default a new request interrupts the running one, which under concurrent load ends every stream early.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from herd.formats.load import resolve_model_path
from herd.serve.loadgen import run_load

HERE = Path(__file__).resolve().parent
HERD_QUANT = {"f32": ("float32", "none"), "bf16": ("bfloat16", "none"), "q8_0": ("float32", "int8"),
              "q4_0": ("float32", "int4")}  # fmt: skip
CONTEXT = 2048


def _generate_module():
    """benchmarks/generate.py, for the GGUF files and the machine description it makes."""
    spec = importlib.util.spec_from_file_location("bench_generate", HERE / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _start(engine: str, path: Path, precision: str, threads: int, port: int, env: dict) -> subprocess.Popen:
    if engine == "herd":
        dtype, quant = HERD_QUANT[precision]
        cmd = [sys.executable, "-m", "herd", "serve", "--model", str(path), "--port", str(port), "--dtype", dtype,
               "--quant", quant, "--max-batch", "16", "--max-queue", "64", "--max-seq-len", str(CONTEXT)]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1",
               "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
               "--n_ctx", str(CONTEXT), "--interrupt_requests", "False"]  # fmt: skip
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-bench-{engine}.log", "w")  # noqa: SIM115
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}; see its log in $TMPDIR/serve-bench-*.log")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"server at {url} did not start within {timeout:.0f} s")


def run_engine(engine: str, path: Path, precision: str, args: argparse.Namespace) -> dict:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = _start(engine, path, precision, args.threads, port, env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc)
        model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        asyncio.run(run_load(url, clients=1, seconds=2, max_tokens=8, model=model))  # warm-up
        levels = {}
        for clients in args.clients:
            result = asyncio.run(run_load(url, clients=clients, seconds=args.seconds, max_tokens=64, model=model))
            levels[str(clients)] = result.summary()
            s = levels[str(clients)]
            print(f"{engine:9s} {clients:3d} clients: {s['output_tokens_per_s']:7.1f} tok/s, "
                  f"TTFT p50 {s['ttft_p50_s']}, statuses {s['statuses']}", file=sys.stderr)  # fmt: skip
        return {"levels": levels, "peak_rss_mb": _peak_rss_mb(proc.pid)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", default="q8_0", choices=sorted(HERD_QUANT))
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "herd" / "bench"))
    p.add_argument("--out", default=None, help="results JSON (default benchmarks/results/serve_<precision>.json)")
    args = p.parse_args()
    gen = _generate_module()
    path = gen.ensure_file(args.precision, resolve_model_path(None), Path(args.cache_dir), dict(os.environ))
    runs = {engine: run_engine(engine, path, args.precision, args) for engine in ("herd", "llama.cpp")}
    ratios = {
        c: runs["herd"]["levels"][c]["output_tokens_per_s"] / runs["llama.cpp"]["levels"][c]["output_tokens_per_s"]
        for c in runs["herd"]["levels"]
        if runs["llama.cpp"]["levels"][c]["output_tokens_per_s"]
    }
    settings = {
        "precision": args.precision,
        "file": path.name,
        "clients": args.clients,
        "seconds": args.seconds,
        "threads": args.threads,
        "max_tokens": 64,
        "context": CONTEXT,
        "herd": {"max_batch": 16, "dtype_quant": HERD_QUANT[args.precision]},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    target = {
        "what": "herd output tokens/s >= 1.0x llama_cpp.server at 16 clients",
        "value": ratios.get("16"),
        "met": ratios.get("16", 0) >= 1.0,
    }
    results = {
        "meta": gen._meta(),
        "settings": settings,
        "runs": runs,
        "throughput_herd_vs_llamacpp": ratios,
        "target": target,
    }
    out = Path(args.out or HERE / "results" / f"serve_{args.precision}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(ratios), f"-> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
