"""Eval throughput in samples/s through lm-evaluation-harness: `--model herd` against lm-eval's own `hf` model
(transformers), on the same checkpoint, the same tasks and the same batch size, in one process.

The checkpoint is the embedded SmolLM2-135M-Instruct, exported once by `herd convert ... --to hf` (the GGUF's
weights dequantized to float32, with herd's tokenizer files); both models load that directory in float32 on the CPU.
The tasks are herd's own (herd/eval/tasks, built locally, nothing downloaded):
- herd_sequences: multiple choice, the first --mc-limit items (4 one-token choices each: 4 requests per item);
- herd_stdlib_docs: rolling perplexity, the first --docs-limit docstrings (a few hundred tokens each);
- herd_arithmetic: generate_until, 3-shot, greedy, at most 8 new tokens, the first --gen-limit items.
Each task is one `lm_eval.simple_evaluate` call on an already loaded model (load time is reported apart);
samples/s = the task's documents / that call's wall time, the best of --rounds rounds in alternating order (the
first herd generation also builds its decode model). Both models score a one-token multiple-choice question with
one forward (HFLM's logits cache, herd's shared input rows). Reported besides: the largest |log-likelihood
difference| between the two over every request (for the rolling task also the hf model against itself at batch
size 1: a document's total sums a few hundred float32 token log-probabilities, so it moves by ~1e-4 with the
batch shape alone), whether each greedy answer is the same text, and the task metrics of both.

    nice -n 10 .venv/bin/python benchmarks/eval_harness.py
    nice -n 10 .venv/bin/python benchmarks/eval_harness.py --mc-limit 20 --docs-limit 2 --gen-limit 4 \
        --out /tmp/harness.json   # a quick check
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("herd_sequences", "herd_stdlib_docs", "herd_arithmetic")


def load_model(name: str, hf_dir: Path, a: argparse.Namespace) -> tuple[Any, float]:
    settings = {"pretrained": str(hf_dir), "dtype": "float32", "batch_size": a.batch_size, "device": "cpu"}
    t0 = time.perf_counter()
    if name == "herd":
        from herd.eval.lm_eval_model import HerdLM

        lm = HerdLM(**settings)
    else:
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(**settings)
    return lm, round(time.perf_counter() - t0, 2)


def run_task(name: str, lm: Any, task: str, limit: int, task_manager: Any) -> dict[str, Any]:
    import lm_eval

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = lm_eval.simple_evaluate(
        model=lm, tasks=[task], task_manager=task_manager, limit=limit, log_samples=True, bootstrap_iters=0
    )
    wall = time.perf_counter() - t0
    samples = r["samples"][task]
    metrics = {k.split(",")[0]: v for k, v in r["results"][task].items() if "," in k and "stderr" not in k}
    print(f"{name} {task}: {len(samples)} docs in {wall:.1f}s ({len(samples) / wall:.1f}/s) {metrics}",
          file=sys.stderr)  # fmt: skip
    return {
        "docs": len(samples),
        "requests": sum(len(s["arguments"]) for s in samples),
        "wall_s": round(wall, 2),
        "load_average_before": round(load, 2),
        "metrics": metrics,
        "responses": {str(s["doc_id"]): [resp[0] for resp in s["resps"]] for s in samples},
    }


def run_all(hf_dir: Path, a: argparse.Namespace, task_manager: Any) -> dict[str, Any]:
    """Both models loaded, then --rounds rounds, the order alternating (herd, hf / hf, herd): the machine's speed
    drifts, so each task's time is the best of its rounds."""
    limits = {"herd_sequences": a.mc_limit, "herd_stdlib_docs": a.docs_limit, "herd_arithmetic": a.gen_limit}
    models, runs = {}, {}
    for name in ("herd", "hf"):
        models[name], load_s = load_model(name, hf_dir, a)
        runs[name] = {"load_s": load_s, "tasks": {}}
    for n in range(a.rounds):
        for name in ("herd", "hf") if n % 2 == 0 else ("hf", "herd"):
            for task in TASKS:
                rounds = runs[name]["tasks"].setdefault(task, [])
                rounds.append(run_task(name, models[name], task, limits[task], task_manager))
    for run in runs.values():
        for task, rounds in run["tasks"].items():
            best = min(rounds, key=lambda r: r["wall_s"])
            first = rounds[0]  # the greedy texts and log-likelihoods of every round are the same
            run["tasks"][task] = {**first, "wall_s": best["wall_s"], "samples_per_s": round(first["docs"] /
                                  best["wall_s"], 2), "wall_s_rounds": [r["wall_s"] for r in rounds],
                                  "load_average_before": [r["load_average_before"] for r in rounds]}  # fmt: skip
    del models
    gc.collect()
    # The noise floor of a document's total: lm-eval's hf model against itself at batch size 1 (float32 sums of a
    # few hundred token log-probabilities move with the batch's padding and matmul shapes).
    hf1, _ = load_model("hf", hf_dir, argparse.Namespace(**{**vars(a), "batch_size": 1}))
    runs["hf_batch1"] = {"tasks": {"herd_stdlib_docs": run_task("hf_batch1", hf1, "herd_stdlib_docs",
                                                                a.docs_limit, task_manager)}}  # fmt: skip
    return runs


def ll(response: Any) -> float:
    """A loglikelihood response is (log-likelihood, is_greedy), a rolling one the log-likelihood alone."""
    return float(response[0] if isinstance(response, list | tuple) else response)


def compare(herd: dict[str, Any], hf: dict[str, Any]) -> dict[str, Any]:
    """Largest |log-likelihood difference| per task; for generation, the share of identical greedy texts."""
    out: dict[str, Any] = {}
    for task in TASKS:
        a, b = herd["tasks"][task]["responses"], hf["tasks"][task]["responses"]
        pairs = [(x, y) for doc in a for x, y in zip(a[doc], b[doc], strict=True)]
        if task == "herd_arithmetic":
            same = sum(x == y for x, y in pairs)
            out[task] = {"greedy_text_identical": f"{same}/{len(pairs)}"}
        else:
            out[task] = {"max_abs_loglik_diff": max(abs(ll(x) - ll(y)) for x, y in pairs), "requests": len(pairs)}
            # A document's total sums a few hundred token log-probabilities, which HFLM adds up in float32.
            out[task]["max_rel_loglik_diff"] = max(abs(ll(x) - ll(y)) / max(abs(ll(y)), 1e-9) for x, y in pairs)
            if task == "herd_sequences":
                out[task]["is_greedy_identical"] = f"{sum(x[1] == y[1] for x, y in pairs)}/{len(pairs)}"
    return out


def meta(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    versions = {p: importlib.metadata.version(p) for p in ("torch", "transformers", "lm_eval")}
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": versions,
        "herd_commit": git("rev-parse", "HEAD"),
        "herd_dirty": bool(git("status", "--porcelain", "--", "herd")),
        "model": "SmolLM2-135M-Instruct (embedded GGUF, exported to HF float32 by `herd convert`)",
        "dtype": "float32",
        "device": "cpu",
        "batch_size": a.batch_size,
        "rounds": a.rounds,
        "limits": {"herd_sequences": a.mc_limit, "herd_stdlib_docs": a.docs_limit, "herd_arithmetic": a.gen_limit},
        "note": "a shared 2-core machine with other jobs running: throughput is indicative, the ratio more than "
        "the absolute numbers (load averages recorded before each task)",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mc-limit", type=int, default=100, help="herd_sequences items (4 loglikelihood requests each)")
    p.add_argument("--docs-limit", type=int, default=6, help="herd_stdlib_docs documents (loglikelihood_rolling)")
    p.add_argument("--gen-limit", type=int, default=24, help="herd_arithmetic items (generate_until)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="each model runs each task this many times (best kept)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/eval/harness.json")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from herd.cli import main as herd_main
    from herd.eval.harness import task_manager

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="herd-bench-harness-") as tmp:
        hf_dir = Path(tmp) / "smollm2-hf"
        if herd_main(["convert", "smollm2-135m-instruct", str(hf_dir), "--to", "hf"]) != 0:
            raise SystemExit("herd convert failed")
        tm = task_manager()
        runs = run_all(hf_dir, a, tm)
    summary = {}
    for task in TASKS:
        herd_rate, hf_rate = (runs[m]["tasks"][task]["samples_per_s"] for m in ("herd", "hf"))
        summary[task] = {"herd_samples_per_s": herd_rate, "hf_samples_per_s": hf_rate,
                         "speedup": round(herd_rate / hf_rate, 2)}  # fmt: skip
    agreement = compare(runs["herd"], runs["hf"])
    floor = [
        abs(ll(x) - ll(y))
        for doc, resps in runs["hf"]["tasks"]["herd_stdlib_docs"]["responses"].items()
        for x, y in zip(resps, runs["hf_batch1"]["tasks"]["herd_stdlib_docs"]["responses"][doc], strict=True)
    ]
    agreement["herd_stdlib_docs"]["hf_batch16_vs_hf_batch1_max_abs_diff"] = max(floor)
    for run in runs.values():
        for task in run["tasks"].values():
            task.pop("responses")
    result = {"meta": meta(a), "summary": summary, "agreement": agreement, "runs": runs}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
