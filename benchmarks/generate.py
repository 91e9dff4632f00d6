"""Prefill and decode speed and peak memory: herd vs transformers on the embedded SmolLM2-135M GGUF.

Both load the same GGUF file, dequantized to the same dtype, and run greedy decoding of the same
prompt on the same threads. Each framework runs in its own subprocess (so peak RSS is its own),
and the two alternate for --rounds rounds so that machine noise hits both alike.

    .venv/bin/python benchmarks/generate.py --dtype float32 --rounds 3
    .venv/bin/python benchmarks/generate.py --dtype bfloat16

Timing method, identical for both: prefill = one forward over the prompt that fills the KV cache
(median of 3); decode tokens/s = (N - 1) / (time to generate N tokens - time to generate 1 token),
with generation forced to N tokens (no stop token).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = (
    "You are reviewing a short story draft. Summarize its plot, name its strongest and weakest scenes, "
    "and suggest two concrete edits. The draft follows a lighthouse keeper who finds a message in a bottle "
    "that seems to predict the weather of the next day, and the village that comes to depend on it."
)


def _run_herd(dtype_name: str, new_tokens: int, threads: int) -> dict:
    import torch

    from herd.formats import load_pretrained
    from herd.formats.load import parse_dtype
    from herd.inference import Engine, SamplingParams

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    loaded = load_pretrained(dtype=parse_dtype(dtype_name))
    load_s = time.perf_counter() - t0
    tok, model = loaded.tokenizer, loaded.model
    prompt = tok.encode_chat([{"role": "user", "content": PROMPT}])
    engine = Engine(model, tok)

    def prefill() -> float:
        with torch.inference_mode():
            model.setup_caches(1, len(prompt) + 1)
            t = time.perf_counter()
            model(torch.tensor([prompt]), cache_pos=0)
            dt = time.perf_counter() - t
            model.clear_caches()
        return dt

    def generate(n: int) -> float:
        params = SamplingParams(max_new_tokens=n, stop_token_ids=[])
        t = time.perf_counter()
        out = engine.generate([prompt], params)[0]
        assert len(out.tokens) == n
        return time.perf_counter() - t

    return _measure(prefill, generate, len(prompt), new_tokens, load_s)


def _run_transformers(dtype_name: str, new_tokens: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from herd.formats import resolve_model_path
    from herd.formats.load import parse_dtype
    from herd.tokenizer import HFTokenizer

    torch.set_num_threads(threads)
    path = resolve_model_path(None)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=parse_dtype(dtype_name))
    model.eval()
    load_s = time.perf_counter() - t0
    # The same prompt ids for both: herd's tokenizer (a few MB) reads them from the same file.
    prompt = HFTokenizer.from_gguf(path).encode_chat([{"role": "user", "content": PROMPT}])
    ids = torch.tensor([prompt])

    def prefill() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            model(ids, use_cache=True)
            return time.perf_counter() - t

    def generate(n: int) -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=2)
            assert out.shape[1] - ids.shape[1] == n
            return time.perf_counter() - t

    return _measure(prefill, generate, len(prompt), new_tokens, load_s)


def _measure(prefill, generate, prompt_len: int, n: int, load_s: float) -> dict:
    generate(4)  # warm-up: allocator, kernels, lazy imports
    prefill_s = statistics.median(prefill() for _ in range(3))
    one = statistics.median(generate(1) for _ in range(3))
    full = generate(n)
    return {
        "load_s": load_s,
        "prompt_tokens": prompt_len,
        "prefill_tokens_per_s": prompt_len / prefill_s,
        "decode_tokens_per_s": (n - 1) / (full - one),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/generate_<dtype>.json)")
    p.add_argument("--worker", choices=["herd", "transformers"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        run = _run_herd if a.worker == "herd" else _run_transformers
        print(json.dumps(run(a.dtype, a.new_tokens, a.threads)))
        return

    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    runs: dict[str, list[dict]] = {"herd": [], "transformers": []}
    for r in range(a.rounds):
        for name in runs:
            cmd = [sys.executable, __file__, "--worker", name, "--dtype", a.dtype]
            cmd += ["--new-tokens", str(a.new_tokens), "--threads", str(a.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode:
                sys.exit(f"{name} worker failed:\n{proc.stderr[-3000:]}")
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {name}: {runs[name][-1]}", file=sys.stderr)

    summary = {
        name: {k: statistics.median(x[k] for x in results) for k in results[0]} for name, results in runs.items()
    }
    ratios = {
        k: summary["herd"][k] / summary["transformers"][k]
        for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_mb", "load_s")
    }
    result = {
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF, dequantized",
        "dtype": a.dtype,
        "threads": a.threads,
        "new_tokens": a.new_tokens,
        "rounds": a.rounds,
        "median": summary,
        "herd_over_transformers": ratios,
        "runs": runs,
        "machine": f"{os.cpu_count()} cores, {os.uname().machine}",
    }
    out = Path(a.out or Path(__file__).parent / "results" / f"generate_{a.dtype}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| dtype | framework | load s | prefill tok/s | decode tok/s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {a.dtype} | {name} | {s['load_s']:.1f} | {s['prefill_tokens_per_s']:.0f} | "
            f"{s['decode_tokens_per_s']:.1f} | {s['peak_rss_mb']:.0f} |"
        )
    print(
        f"| {a.dtype} | herd / transformers | {ratios['load_s']:.2f}x | {ratios['prefill_tokens_per_s']:.2f}x | "
        f"{ratios['decode_tokens_per_s']:.2f}x | {ratios['peak_rss_mb']:.2f}x |"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
