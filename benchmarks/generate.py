"""Inference at the hardware's limit: herd vs llama.cpp vs transformers on the embedded SmolLM2-135M.

At each precision all engines run the same GGUF file. The files are made at run time, with
llama.cpp's own quantizer (llama-cpp-python's `llama_model_quantize`), from the embedded Q4_1 GGUF:
first all-F32 (requantized), then from that file BF16, Q8_0, and Q4_0 with token_embd/output at
Q8_0. They are cached under ~/.cache/herd/bench/ (--cache-dir); nothing is downloaded.

    precision  file                              herd load_decoder(dtype, quant)   transformers
    f32        all F32                            float32, none                     float32
    bf16       BF16 matrices (norms stay F32)     bfloat16, none                    bfloat16 (*)
    q8_0       Q8_0 matrices                      float32, int8                     -
    q4_0       Q4_0 layers, Q8_0 vocabulary       float32, int4                     -

(*) only on a CPU with native bf16 matmul (AVX512-BF16 or AMX): elsewhere torch's fallback kernel is
hundreds of times slower than float32, and the results say why transformers was skipped.

Every engine runs in its own subprocess (peak RSS is its own) with --threads threads and
OMP_WAIT_POLICY left at OpenMP's default (--omp-wait-policy); the engines alternate, in a rotating
order, for --rounds rounds.

    .venv/bin/python benchmarks/generate.py                       # all four precisions, 3 rounds
    .venv/bin/python benchmarks/generate.py --precisions q4_0 --rounds 1 --new-tokens 8

Timing, identical for every engine, on the same prompt ids (herd's tokenizer from the same file):
- decode tokens/s = (N - 1) / (time to generate N tokens - time to generate 1 token), greedy,
  forced to N = --new-tokens tokens, on a ~90-token chat prompt, batch 1 (herd also at batch 8
  and 32: total tokens/s across the batch);
- prefill tokens/s = 512 / time of one forward over a 512-token prompt that fills the KV cache and
  computes the last position's logits only (median of 3, after a warm-up);
- peak RSS = ru_maxrss of the worker after the batch-1 measurements (herd's batch runs come after);
- perplexity (round 1 only: it is deterministic) on 2,048 tokens of the standard library's
  docstrings, 4 chunks of 512 scored without a cache (positions 1..511 of each chunk).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import inspect
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

PROMPT = (
    "You are reviewing a short story draft. Summarize its plot, name its strongest and weakest scenes, "
    "and suggest two concrete edits. The draft follows a lighthouse keeper who finds a message in a bottle "
    "that seems to predict the weather of the next day, and the village that comes to depend on it."
)
PREFILL_TOKENS = 512
PPL_TOKENS, PPL_CHUNK = 2048, 512
# Texts built at run time from the running Python's standard library (deterministic for one Python version;
# the ids' sha256 goes into the results).
PREFILL_MODULES = ("argparse", "subprocess", "json", "logging", "collections")
PPL_MODULES = ("textwrap", "statistics", "heapq", "bisect", "fractions", "difflib", "shlex", "string", "functools")
ENGINES = ("herd", "llama.cpp", "transformers")
BATCH_SIZES = (8, 32)
# precision -> (llama.cpp ftype name, vocabulary matrices' ggml type or None, herd dtype, herd quant, transformers?)
PRECISIONS = {
    "f32": ("LLAMA_FTYPE_ALL_F32", None, "float32", "none", True),
    "bf16": ("LLAMA_FTYPE_MOSTLY_BF16", None, "bfloat16", "none", True),
    "q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", None, "float32", "int8", False),
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", "GGML_TYPE_Q8_0", "float32", "int4", False),
}
TARGETS_TEXT = {
    "decode_vs_llamacpp": "herd decode >= 1.0x llama.cpp",
    "prefill_vs_llamacpp": "herd prefill-512 >= 1.0x llama.cpp",
    "batch8_vs_batch1": "herd batch-8 decode >= 3x batch-1",
    "rss_int4_vs_f32": "herd peak RSS at q4_0 <= 40% of f32",
    "ppl_int8_vs_f32": "herd perplexity at q8_0 within 1% of f32",
    "ppl_int4_vs_f32": "herd perplexity at q4_0 within 5% of f32",
}


# ---------------------------------------------------------------------------------------------
# inputs and model files (parent process)


def _docstrings(modules: tuple[str, ...], members: bool) -> str:
    """Module docstrings, and with `members` those of their public functions and classes, in sorted order."""
    import importlib

    parts = []
    for name in modules:
        mod = importlib.import_module(name)
        parts.append(inspect.getdoc(mod) or "")
        if members:
            for attr in sorted(a for a in vars(mod) if not a.startswith("_")):
                obj = getattr(mod, attr)
                if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) == name:
                    parts.append(inspect.getdoc(obj) or "")
    return "\n\n".join(p for p in parts if p)


def build_inputs(tokenizer_path: Path) -> dict:
    from herd.tokenizer import HFTokenizer

    tok = HFTokenizer.from_gguf(tokenizer_path)
    chat = tok.encode_chat([{"role": "user", "content": PROMPT}])
    prefill = tok.encode(_docstrings(PREFILL_MODULES, members=False))
    ppl = tok.encode(_docstrings(PPL_MODULES, members=True))
    if len(prefill) < PREFILL_TOKENS or len(ppl) < PPL_TOKENS:
        sys.exit(f"standard-library text too short: {len(prefill)} / {len(ppl)} tokens")
    inputs = {"chat": chat, "prefill": prefill[:PREFILL_TOKENS], "ppl": ppl[:PPL_TOKENS]}
    digest = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]
    return inputs | {"sha256": digest, "python": sys.version.split()[0]}


def ensure_file(precision: str, source: Path, cache: Path, env: dict) -> Path:
    """The GGUF for `precision`, made by llama.cpp's quantizer in a subprocess (its log is noisy) if missing."""
    path = cache / f"{source.stem}.{precision}.gguf"
    if path.is_file():
        return path
    src = source if precision == "f32" else ensure_file("f32", source, cache, env)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    cmd = [sys.executable, __file__, "--worker", "quantize", "--precisions", precision]
    cmd += ["--src", str(src), "--out", str(tmp)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode or not tmp.is_file():
        sys.exit(f"quantizing to {precision} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    tmp.rename(path)
    print(f"made {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return path


def tensor_types(path: Path) -> dict:
    from herd.ggufio import open_gguf

    reader = open_gguf(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    return {
        "bytes": path.stat().st_size,
        "tensor_types": dict(Counter(types.values()).most_common()),
        "token_embd": types.get("token_embd.weight"),
        "output": types.get("output.weight", "tied to token_embd"),
    }


def _quantize(precision: str, src: str, out: str, threads: int) -> None:
    import ctypes

    import llama_cpp

    ftype, vocab_type, *_ = PRECISIONS[precision]
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, ftype)
    p.allow_requantize = True  # the embedded file is Q4_1: requantize it to F32
    p.pure = True  # no per-tensor mixture: the vocabulary matrices are set below
    p.nthread = threads
    if vocab_type is not None:
        p.token_embedding_type = p.output_tensor_type = getattr(llama_cpp, vocab_type)
    if llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(p)) != 0:
        sys.exit(f"llama_model_quantize({src} -> {out}, {ftype}) failed")


# ---------------------------------------------------------------------------------------------
# workers: one engine, one precision, one process


def _decode_rate(generate, n: int, batch: int = 1) -> float:
    one = statistics.median(generate(1, batch) for _ in range(3))
    full = generate(n, batch)
    return batch * (n - 1) / (full - one)


def _common(prefill, generate, inputs: dict, n: int) -> dict:
    generate(4, 1)  # warm-up: allocator, kernels, lazy imports
    prefill()
    prefill_s = statistics.median(prefill() for _ in range(3))
    return {
        "prefill_tokens_per_s": len(inputs["prefill"]) / prefill_s,
        "decode_tokens_per_s": _decode_rate(generate, n),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _perplexity(nll_of_chunk, ids: list[int]) -> float:
    """exp(mean NLL) over positions 1..C-1 of each chunk of PPL_CHUNK ids, each chunk run alone (no cache)."""
    chunks = [ids[i : i + PPL_CHUNK] for i in range(0, len(ids), PPL_CHUNK)]
    total = sum(nll_of_chunk(c) for c in chunks)
    return math.exp(total / sum(len(c) - 1 for c in chunks))


def run_herd(path: Path, precision: str, inputs: dict, n: int, threads: int, ppl: bool) -> dict:
    import torch

    from herd.inference import Engine, SamplingParams
    from herd.inference.load import load_decoder

    torch.set_num_threads(threads)
    _, _, dtype_name, quant, _ = PRECISIONS[precision]
    t0 = time.perf_counter()
    loaded = load_decoder(str(path), dtype=getattr(torch, dtype_name), quant=quant)
    load_s = time.perf_counter() - t0
    model, tok = loaded.model, loaded.tokenizer
    long = torch.tensor([inputs["prefill"]])
    last_only = torch.zeros(long.shape, dtype=torch.bool)
    last_only[:, -1] = True

    def prefill() -> float:
        with torch.inference_mode():
            model.setup_caches(1, long.shape[1])
            t = time.perf_counter()
            model(long, cache_pos=0, output_mask=last_only).argmax(-1)
            dt = time.perf_counter() - t
            model.clear_caches()
        return dt

    def generate(k: int, batch: int) -> float:
        engine = Engine(model, tok, max_batch_size=batch)
        params = SamplingParams(max_new_tokens=k, stop_token_ids=[])
        t = time.perf_counter()
        out = engine.generate([inputs["chat"]] * batch, params)
        dt = time.perf_counter() - t
        assert all(len(c.tokens) == k for c in out), [len(c.tokens) for c in out]
        return dt

    result = {"load_s": load_s, "weights_mb": model.nbytes / 2**20} | _common(prefill, generate, inputs, n)
    for b in BATCH_SIZES:
        result[f"batch{b}_tokens_per_s"] = _decode_rate(generate, n, b)
    result["peak_rss_after_batch_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if ppl:

        def nll(chunk: list[int]) -> float:
            ids = torch.tensor([chunk])
            logits = model(ids)[0, :-1]
            return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()

        result["perplexity"] = _perplexity(nll, inputs["ppl"])
    return result


def run_llamacpp(path: Path, precision: str, inputs: dict, n: int, threads: int, ppl: bool) -> dict:
    import llama_cpp
    import numpy as np

    n_ctx = max(len(inputs["prefill"]), len(inputs["chat"]) + n, PPL_CHUNK) + 1
    n_ctx = -(-n_ctx // 256) * 256

    def load(logits_all: bool) -> llama_cpp.Llama:
        return llama_cpp.Llama(
            str(path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=512,
            logits_all=logits_all, verbose=False,
        )  # fmt: skip

    t0 = time.perf_counter()
    llm = load(False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()

    def argmax_last() -> int:  # the logits of the last evaluated token (reading them waits for the compute)
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    def prefill() -> float:
        llm.reset()
        t = time.perf_counter()
        llm.eval(inputs["prefill"])
        argmax_last()
        return time.perf_counter() - t

    def generate(k: int, batch: int) -> float:
        assert batch == 1
        llm.reset()
        t = time.perf_counter()
        llm.eval(inputs["chat"])
        out = [argmax_last()]
        while len(out) < k:
            llm.eval([out[-1]])
            out.append(argmax_last())
        return time.perf_counter() - t

    result = {"load_s": load_s, "weights_mb": llama_cpp.llama_model_size(llm.model) / 2**20}
    result |= _common(prefill, generate, inputs, n)
    result["system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    if ppl:
        del llm
        full = load(True)  # logits at every position: a second context, after peak RSS was read

        def nll(chunk: list[int]) -> float:
            full.reset()
            full.eval(chunk)
            logits = full.scores[: len(chunk) - 1].astype(np.float64)
            top = logits.max(axis=1)
            lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
            return float((lse - logits[np.arange(len(chunk) - 1), chunk[1:]]).sum())

        result["perplexity"] = _perplexity(nll, inputs["ppl"])
    return result


def run_transformers(path: Path, precision: str, inputs: dict, n: int, threads: int, ppl: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    dtype = getattr(torch, PRECISIONS[precision][2])
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()
    load_s = time.perf_counter() - t0
    chat, long = torch.tensor([inputs["chat"]]), torch.tensor([inputs["prefill"]])

    def prefill() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            model(long, use_cache=True, logits_to_keep=1).logits.argmax(-1)
            return time.perf_counter() - t

    def generate(k: int, batch: int) -> float:
        assert batch == 1
        with torch.inference_mode():
            t = time.perf_counter()
            out = model.generate(chat, max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=2)
            dt = time.perf_counter() - t
        assert out.shape[1] - chat.shape[1] == k
        return dt

    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: counted once
    return {"load_s": load_s, "weights_mb": weights / 2**20} | _common(prefill, generate, inputs, n)


WORKERS = {"herd": run_herd, "llama.cpp": run_llamacpp, "transformers": run_transformers}


# ---------------------------------------------------------------------------------------------
# summary


def _meta() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    flags_line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[-1].split())
    wanted = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str:
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, check=False)
        return proc.stdout.strip()

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": model,
        "cores": os.cpu_count(),
        "machine": os.uname().machine,
        "cpu_flags": {f: f in flags for f in wanted},
        "python": sys.version.split()[0],
        "versions": {p: version(p) for p in ("torch", "transformers", "llama_cpp_python", "gguf")},
        "herd_commit": git("rev-parse", "HEAD"),
        "herd_dirty": bool(git("status", "--porcelain", "--", "herd")),
        "native_bf16_matmul": _native_bf16(),
    }


def _native_bf16() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _median(runs: list[dict]) -> dict:
    keys = {k for r in runs for k, v in r.items() if isinstance(v, (int, float))}
    return {k: statistics.median(r[k] for r in runs if k in r) for k in sorted(keys)}


def _ratios(med: dict[str, dict], herd_f32: dict | None) -> dict:
    out: dict = {}
    herd = med.get("herd")
    if herd is None:
        return out
    for peer in ("llama.cpp", "transformers"):
        if peer in med:
            keys = ("decode_tokens_per_s", "prefill_tokens_per_s", "peak_rss_mb", "load_s", "perplexity")
            out[f"herd/{peer}"] = {k: herd[k] / med[peer][k] for k in keys if k in herd and k in med[peer]}
    for b in BATCH_SIZES:
        out[f"batch{b}/batch1"] = herd[f"batch{b}_tokens_per_s"] / herd["decode_tokens_per_s"]
    if herd_f32 is not None:
        out["vs_herd_f32"] = {k: herd[k] / herd_f32[k] for k in ("perplexity", "peak_rss_mb") if k in herd}
    return out


def _targets(ratios: dict) -> list[dict]:
    rows = []

    def add(key: str, precision: str, value: float | None, ok) -> None:
        if value is not None:
            rows.append({"target": TARGETS_TEXT[key], "precision": precision, "value": value, "met": bool(ok(value))})

    for prec, r in ratios.items():
        add("decode_vs_llamacpp", prec, r.get("herd/llama.cpp", {}).get("decode_tokens_per_s"), lambda v: v >= 1.0)
        add("prefill_vs_llamacpp", prec, r.get("herd/llama.cpp", {}).get("prefill_tokens_per_s"), lambda v: v >= 1.0)
        add("batch8_vs_batch1", prec, r.get("batch8/batch1"), lambda v: v >= 3.0)
    vs = {p: r.get("vs_herd_f32", {}) for p, r in ratios.items()}
    add("rss_int4_vs_f32", "q4_0", vs.get("q4_0", {}).get("peak_rss_mb"), lambda v: v <= 0.40)
    add("ppl_int8_vs_f32", "q8_0", vs.get("q8_0", {}).get("perplexity"), lambda v: v <= 1.01)
    add("ppl_int4_vs_f32", "q4_0", vs.get("q4_0", {}).get("perplexity"), lambda v: v <= 1.05)
    return rows


def _table(medians: dict, ratios: dict, targets: list[dict]) -> str:
    def f(d: dict, k: str, fmt: str, suffix: str = "") -> str:
        return format(d[k], fmt) + suffix if k in d else ""

    lines = [
        "| precision | engine | load s | prefill-512 tok/s | decode tok/s | batch-8 tok/s | batch-32 tok/s "
        "| peak RSS MB | weights MB | perplexity |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for prec, med in medians.items():
        for eng, m in med.items():
            cells = [f(m, "load_s", ".1f"), f(m, "prefill_tokens_per_s", ".0f"), f(m, "decode_tokens_per_s", ".1f")]
            for b in BATCH_SIZES:  # herd only: total tokens/s, and its ratio to batch 1
                ratio = ratios[prec].get(f"batch{b}/batch1")
                cells.append(f(m, f"batch{b}_tokens_per_s", ".1f", f" ({ratio:.1f}x b1)" if ratio else ""))
            cells += [f(m, "peak_rss_mb", ".0f"), f(m, "weights_mb", ".0f"), f(m, "perplexity", ".3f")]
            lines.append(f"| {prec} | {eng} | " + " | ".join(cells) + " |")
        keys = ("load_s", "prefill_tokens_per_s", "decode_tokens_per_s", "", "", "peak_rss_mb", "", "perplexity")
        for peer in ("llama.cpp", "transformers"):
            if r := ratios[prec].get(f"herd/{peer}"):
                cells = [f(r, k, ".3f" if k == "perplexity" else ".2f", "x") for k in keys]
                row = " | ".join(f"**{c}**" if c else "" for c in cells)
                lines.append(f"| {prec} | **herd / {peer}** | {row} |")
    lines += ["", "| target | precision | value | met |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['precision']} | {t['value']:.3f} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated, of " + ", ".join(PRECISIONS))
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, of " + ", ".join(ENGINES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64, help="N in the decode timing (>= 2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--omp-wait-policy",
        default="default",
        help="OMP_WAIT_POLICY for every worker, or 'default' to leave it unset (OpenMP spins briefly, then sleeps); "
        "PASSIVE slows llama.cpp's OpenMP build ~5x, whose threads meet at a barrier after every op",
    )
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "herd" / "bench"), help="the GGUF files")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate.json"))
    p.add_argument("--worker", choices=[*ENGINES, "quantize"], help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--ppl", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker == "quantize":
        _quantize(a.precisions, a.src, a.out, a.threads)
        return
    if a.worker:
        inputs = json.loads(Path(a.inputs).read_text())
        result = WORKERS[a.worker](Path(a.model), a.precisions, inputs, a.new_tokens, a.threads, a.ppl)
        print(json.dumps(result))
        return

    precisions = [x for x in a.precisions.split(",") if x]
    engines = [x for x in a.engines.split(",") if x]
    if bad := [x for x in precisions if x not in PRECISIONS] + [x for x in engines if x not in ENGINES]:
        p.error(f"unknown precision or engine: {', '.join(bad)}")
    if a.new_tokens < 2:
        p.error("--new-tokens must be at least 2")
    try:
        importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        sys.exit(
            "llama-cpp-python is not installed; it makes the GGUF files and is the llama.cpp engine: "
            "pip install -e '.[bench-llamacpp]' (a ~10-minute source build)"
        )
    from herd.formats.load import resolve_model_path

    env = dict(os.environ, OMP_WAIT_POLICY=a.omp_wait_policy, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    if a.omp_wait_policy == "default":
        del env["OMP_WAIT_POLICY"]
    source = resolve_model_path(None)
    files = {prec: ensure_file(prec, source, Path(a.cache_dir), env) for prec in precisions}
    inputs = build_inputs(files[precisions[0]])
    inputs_file = Path(tempfile.mkstemp(suffix=".json", prefix="herd-bench-")[1])
    inputs_file.write_text(json.dumps(inputs))

    skipped: dict[str, dict[str, str]] = {}
    if "transformers" in engines:
        for prec in precisions:
            if not PRECISIONS[prec][4]:
                skipped[prec] = {"transformers": "its GGUF loader dequantizes: no quantized weights to compare"}
        if "bf16" in precisions and not _native_bf16():
            # transformers would run bf16 matmuls on torch's fallback kernel, hundreds of times slower than float32.
            skipped["bf16"] = {"transformers": "no native bf16 matmul on this CPU (oneDNN needs AVX512-BF16 or AMX)"}
            print(f"bf16: skipping transformers: {skipped['bf16']['transformers']}", file=sys.stderr)
    runs: dict[str, dict[str, list[dict]]] = {}
    try:
        for prec in precisions:
            names = [e for e in engines if e not in skipped.get(prec, {})]
            if not names:
                continue
            runs[prec] = {e: [] for e in names}
            for r in range(a.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    cmd = [sys.executable, __file__, "--worker", name, "--precisions", prec]
                    cmd += ["--model", str(files[prec]), "--inputs", str(inputs_file)]
                    cmd += ["--new-tokens", str(a.new_tokens), "--threads", str(a.threads)]
                    cmd += ["--ppl"] if r == 0 and name != "transformers" else []
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                    if proc.returncode:
                        sys.exit(f"{name} worker ({prec}) failed:\n{proc.stderr[-3000:]}")
                    runs[prec][name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                    shown = {k: round(v, 2) for k, v in runs[prec][name][-1].items() if isinstance(v, float)}
                    print(f"{prec} round {r + 1} {name}: {shown}", file=sys.stderr)
    finally:
        inputs_file.unlink()

    medians = {prec: {e: _median(rs) for e, rs in by_engine.items()} for prec, by_engine in runs.items()}
    herd_f32 = medians.get("f32", {}).get("herd")
    ratios = {prec: _ratios(med, herd_f32) for prec, med in medians.items()}
    targets = _targets(ratios)
    meta = _meta()
    llama_runs = [r for by_engine in runs.values() for r in by_engine.get("llama.cpp", [])]
    meta["llama_cpp_system_info"] = llama_runs[0]["system_info"] if llama_runs else None
    result = {
        "meta": meta,
        "settings": {
            "model": f"{source.name} (embedded), requantized by llama.cpp",
            "threads": a.threads,
            "omp_wait_policy": a.omp_wait_policy,
            "new_tokens": a.new_tokens,
            "rounds": a.rounds,
            "batch_sizes": [1, *BATCH_SIZES],
            "chat_prompt_tokens": len(inputs["chat"]),
            "prefill_tokens": len(inputs["prefill"]),
            "perplexity_tokens": len(inputs["ppl"]),
            "perplexity_chunk": PPL_CHUNK,
            "inputs_sha256": inputs["sha256"],
            "herd_load_decoder": {k: {"dtype": v[2], "quant": v[3]} for k, v in PRECISIONS.items() if k in runs},
            "llama_cpp": {"n_threads": a.threads, "n_threads_batch": a.threads, "n_batch": 512},
        },
        "files": {prec: {"name": path.name} | tensor_types(path) for prec, path in files.items()},
        "median": medians,
        "ratios": ratios,
        "targets": targets,
        "skipped": skipped,
        "runs": runs,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(medians, ratios, targets))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
