"""`herd eval harness`: lm-evaluation-harness's own command line, with herd's model and tasks added.

    herd eval harness --tasks herd_sequences,herd_arithmetic --model_args pretrained=M,dtype=float32 \
        --batch_size 16 --herd-out runs/eval/M

Everything but `--herd-out` goes to lm-eval (`lm-eval run` flags; `ls tasks` and `validate` work too). herd adds
three things: `--model herd` is the default model (lm-eval 0.4.13 finds models only in its own fixed table, so
herd registers its model in-process before handing the line over), herd's task folder joins --include_path
(herd_sequences, herd_stdlib_docs, herd_arithmetic, or `--tasks herd` for all three), and with `--herd-out DIR`
lm-eval's per-sample log (--log_samples, turned on) becomes one herd result file per task, `DIR/<task>.json`,
which the report card and the contamination check read. `python -m herd.eval.lm_eval` is the same command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from herd.errors import EvalError
from herd.eval.results import BenchmarkResult, ItemResult, write_result

SUBCOMMANDS = ("run", "ls", "validate")
SCORE_METRICS = ("acc", "exact_match", "acc_norm")
"""Per-sample metrics that become an item's score, in order of preference (then any other one in [0, 1])."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(passthrough=True)  # herd's main hands every unknown argument to us in a.passthrough_args
    p.add_argument(
        "--herd-out",
        default=None,
        metavar="DIR",
        help="also write one herd result file per task here (<task>.json: metrics, per-item scores and text)",
    )
    p.epilog = (
        "All other arguments are lm-eval's (python -m herd.eval.lm_eval run --help lists them): --tasks, "
        "--model_args pretrained=M,dtype=bfloat16,max_length=N,quant=int8, --batch_size, --limit, --num_fewshot, "
        "--output_path, --log_samples, --include_path, --apply_chat_template... --model defaults to herd; "
        "herd's tasks: herd_sequences, herd_stdlib_docs, herd_arithmetic (tag: herd); their data is built in "
        "$HERD_EVAL_TASKS_DIR (default ~/.cache/herd/eval_tasks)."
    )


def command(a: argparse.Namespace) -> None:
    run_lm_eval(list(getattr(a, "passthrough_args", [])), herd_out=a.herd_out)


def run_lm_eval(argv: list[str], *, herd_out: str | None = None) -> list[Path]:
    """lm-eval's CLI on `argv` with herd's model and tasks; the herd result files written (with herd_out)."""
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.utils import setup_logging

    import herd.eval.lm_eval_model  # noqa: F401  (registers --model herd)

    setup_logging()
    cli = HarnessCLI()
    saved, sys.argv = sys.argv, ["herd eval harness", *argv]
    try:
        ns = cli.parse_args()  # inserts `run` when the line starts with a flag, as lm-eval's own entry point
    finally:
        sys.argv = saved
    command = getattr(ns, "command", None)
    if command in SUBCOMMANDS:
        ns.include_path = include_paths(ns.include_path)
    if command == "run":
        if ns.model is None and not _config_names_model(ns.config):
            ns.model = "herd"
        if herd_out:
            ns.log_samples = True  # the per-item scores come from lm-eval's sample log
            ns.output_path = ns.output_path or str(Path(herd_out) / "lm_eval")
    elif herd_out:
        raise EvalError("--herd-out goes with an evaluation run (lm-eval's `run`, the default)")
    started = time.time()
    try:
        cli.execute(ns)
    except (ValueError, FileNotFoundError, KeyError) as e:  # lm-eval's word for bad tasks, arguments, paths
        raise EvalError(f"lm-eval: {e}") from e
    if not herd_out:
        return []
    results, samples = read_lm_eval_output(Path(ns.output_path), since=started)
    return [write_result(Path(herd_out) / f"{_file_name(r.benchmark)}.json", r) for r in to_results(results, samples)]


def include_paths(user: str | list[str] | None) -> list[str]:
    """herd's task folder, then the user's (later folders win when two define one task name)."""
    from herd.eval.tasks import TASKS_DIR

    extra = [] if not user else [user] if isinstance(user, str) else list(user)
    return [str(TASKS_DIR), *(p for p in extra if Path(p).resolve() != TASKS_DIR.resolve())]


def task_manager(include_path: str | list[str] | None = None, **kwargs: Any) -> Any:
    """An lm-eval TaskManager that knows herd's tasks, for `lm_eval.simple_evaluate(task_manager=...)`."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_paths(include_path), **kwargs)


def _config_names_model(config: str | None) -> bool:
    if not config:
        return False
    from lm_eval.config.evaluate_config import EvaluatorConfig

    return bool(EvaluatorConfig.load_yaml_config(config).get("model"))


# ---------------------------------------------------------------------------------------------
# lm-eval's output -> herd result files


def read_lm_eval_output(output_path: Path, *, since: float = 0.0) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """The newest results file under --output_path written after `since`, and each task's sample log beside it.

    lm-eval names them results_<date>.json and samples_<task>_<date>.jsonl in a folder per model (or
    <name>_<date>.json beside an --output_path ending in .json)."""
    root = output_path.parent if output_path.suffix == ".json" else output_path
    found = []
    for p in root.rglob("*.json") if root.is_dir() else []:
        if p.stat().st_mtime >= since - 1:
            try:
                raw = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(raw, dict) and "results" in raw and "configs" in raw:
                found.append((p.stat().st_mtime, p, raw))
    if not found:
        raise EvalError(f"{output_path}: lm-eval wrote no results file, so there is nothing for --herd-out")
    _, path, results = max(found, key=lambda f: (f[0], str(f[1])))
    samples = {}
    for task in results["configs"]:
        logs = [p for p in path.parent.glob(f"samples_{task}_*.jsonl") if p.stat().st_mtime >= since - 1]
        if not logs:
            raise EvalError(f"{path.parent}: no sample log for task {task} (lm-eval runs it with --log_samples)")
        samples[task] = _read_samples(max(logs, key=lambda p: (p.stat().st_mtime, p.name)))
    return results, samples


def _read_samples(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{n}: not JSON: {e.msg}") from None
    return rows


def to_results(results: dict[str, Any], samples: dict[str, list[dict]] | None = None) -> list[BenchmarkResult]:
    """One BenchmarkResult per task of an lm-eval run: `results` as simple_evaluate returns it or lm-eval writes
    it; `samples` per task (default: results["samples"], there with log_samples=True)."""
    samples = samples if samples is not None else results.get("samples") or {}
    config = results.get("config") or {}
    model_args = config.get("model_args") or {}
    if isinstance(model_args, str):
        from lm_eval.utils import simple_parse_args_string

        model_args = simple_parse_args_string(model_args)
    model = str(config.get("herd_model") or model_args.get("pretrained") or config.get("model") or "unknown")
    out = []
    for task, task_config in results["configs"].items():
        metrics, filters = _metrics(results["results"].get(task, {}))
        items, score_metric, item_filter = _items(task_config, samples.get(task, []))
        meta = {
            "lm_eval_model": config.get("model"),
            "model_args": model_args,
            "output_type": task_config.get("output_type"),
            "num_fewshot": (results.get("n-shot") or {}).get(task),
            "n_samples": (results.get("n-samples") or {}).get(task),
            "task_version": (results.get("versions") or {}).get(task),
            "limit": config.get("limit"),
            "filters": filters,
            "item_score": score_metric,
            "item_filter": item_filter,
        }
        out.append(BenchmarkResult(task, model, "harness", metrics, items, meta))
    return out


def _metrics(task_results: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """{"acc,none": .5, "acc_stderr,none": .1, "alias": ...} -> {"acc": .5, "acc_stderr": .1}; a filter's name
    stays in the key ("exact_match,strict-match") only where the task has several filters."""
    keyed = {k: v for k, v in task_results.items() if "," in k}
    filters = sorted({k.split(",", 1)[1] for k in keyed})
    metrics = {}
    for key, value in keyed.items():
        name, _, filt = key.partition(",")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue  # "N/A" stderrs
        metrics[name if len(filters) == 1 or filt == "none" else key] = float(value)
    return metrics, filters


def _items(task_config: dict[str, Any], samples: list[dict]) -> tuple[list[ItemResult], str | None, str | None]:
    if not samples:
        return [], None, None
    item_filter = samples[0].get("filter")
    score_metric = _score_metric(samples[0])
    items: dict[str, ItemResult] = {}
    for s in samples:
        if s.get("filter") != item_filter:
            continue
        doc_id = str(s.get("doc_id"))
        score = _score(s, score_metric) if score_metric else None
        if score is None:
            return [], None, item_filter  # no per-item score for this task: the metrics alone go in
        items.setdefault(doc_id, ItemResult(doc_id, _item_text(task_config, s), score))
    return list(items.values()), score_metric, item_filter


def _score_metric(sample: dict[str, Any]) -> str | None:
    names = [*SCORE_METRICS, *(sample.get("metrics") or [])]
    for name in names:
        if _score(sample, name) is not None:
            return name
    return "bits_per_byte" if _score(sample, "bits_per_byte") is not None else None


def _score(sample: dict[str, Any], name: str) -> float | None:
    value = sample.get(name)
    if isinstance(value, bool | int | float) and math.isfinite(value) and 0 <= value <= 1:
        return float(value)
    if name == "bits_per_byte" and isinstance(value, list | tuple) and len(value) == 2 and value[1]:
        # A rolling task logs (log-likelihood, bytes) per document; exp(ll / bytes) is its geometric-mean
        # probability per byte, 2 ** -bits_per_byte: in [0, 1] and higher is better, like an accuracy.
        return math.exp(float(value[0]) / float(value[1]))
    return None


def _arguments(sample: dict[str, Any]) -> list[list[Any]]:
    """Each request's arguments: a list in memory, {"gen_args_0": {"arg_0": ..}} in lm-eval's sample files."""
    args = sample.get("arguments") or []
    if isinstance(args, dict):
        return [[a[k] for k in sorted(a, key=lambda k: int(k.split("_")[1]))] for _, a in sorted(
            args.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1]))]  # fmt: skip
    return [list(a) for a in args]


def _item_text(task_config: dict[str, Any], sample: dict[str, Any]) -> str:
    """The doc's own prompt (without few-shot examples where the prompt template can be rendered) + its answer."""
    args = _arguments(sample)
    target = sample.get("target")
    prompt = _doc_prompt(task_config, sample.get("doc"), str(args[0][0]) if args and args[0] else "")
    output_type = task_config.get("output_type")
    if output_type == "loglikelihood_rolling":
        return str(target)
    if output_type in ("multiple_choice", "loglikelihood") and args:
        index = _int(target) if output_type == "multiple_choice" else 0
        if index is not None and 0 <= index < len(args) and len(args[index]) > 1:
            return prompt + str(args[index][1])  # the continuation carries its delimiter
    return prompt + str(task_config.get("target_delimiter", " ")) + str(target)


def _doc_prompt(task_config: dict[str, Any], doc: Any, request_prompt: str) -> str:
    template = task_config.get("doc_to_text")
    if isinstance(template, str) and isinstance(doc, dict):
        if template in doc:
            return str(doc[template])
        if "{{" in template or "{%" in template:
            from lm_eval.utils import apply_template

            try:
                return str(apply_template(template, doc))
            except Exception:  # a template lm-eval rendered once; if it will not render here, fall back
                pass
    return request_prompt  # a function's source, or no doc: the request's prompt (few-shot examples included)


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _file_name(benchmark: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in benchmark)
