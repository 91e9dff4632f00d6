"""`herd synth` and the checkers of its items: `run_synth` writes the data files, `verifiable_reward` scores one
response to a prompt's item (for rejection sampling and PPO), `evaluate` measures a model on held-out items.

Writes into `job.dump_folder`: sft.jsonl (training dialogs), prompts.jsonl (train-split prompts with their checkable
`item`, for rejection sampling and PPO), pairs.jsonl (fact preference pairs: refusal > wrong answer, answer >
refusal; for the reward model and DPO), eval.jsonl (held-out items: tool, fact and task) and summary.json.
`evaluate` measures a model on eval items: tool-call validity, refusals on unanswerable vs answerable questions,
verifiable-task accuracy.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from herd.config import JobConfig, SynthSection
from herd.errors import DataError
from herd.inference import Engine, SamplingParams
from herd.model import Transformer
from herd.posttrain.data import encode_prompt, write_jsonl
from herd.posttrain.stage import write_json
from herd.posttrain.synth.facts import (
    fact_eval,
    fact_items,
    make_fact_data,
    make_fact_pairs,
    open_book_variant,
    probe,
    score_fact,
)
from herd.posttrain.synth.tasks import check_task, make_tasks, task_dialog
from herd.posttrain.synth.tools import make_tool_dialogs, make_tool_eval, score_tool_call
from herd.tokenizer import HFTokenizer, Llama3Tokenizer, Tokenizer
from herd.tools import make_tools


def chat_format(tokenizer: Tokenizer) -> str:
    """ "llama3" for Meta's tokenizer (ChatFormat, built-in tools), "json" for a jinja chat template."""
    if isinstance(tokenizer, Llama3Tokenizer):
        return "llama3"
    if isinstance(tokenizer, HFTokenizer) and tokenizer.chat_template is not None:
        return "json"
    raise DataError(f"{type(tokenizer).__name__} has no chat format (no chat template)")


def verifiable_reward(item: dict[str, Any], response: str) -> float:
    """1.0 when the checker of the item accepts the response: a valid call of the right tool, the task's exact
    answer, a correct answer to an answerable question or a refusal of an unanswerable one."""
    kind = item.get("kind")
    if kind == "task":
        return float(check_task(item, response))
    if kind == "tool":
        s = score_tool_call(item, response, _tools(item["fmt"]))
        return float(s["valid"] and s["right_tool"])
    if kind == "fact":
        s = score_fact(item, response)
        return float(s["correct"] and not s["refused"]) if item["answerable"] else float(s["refused"])
    raise DataError(f"item of unknown kind {kind!r}: expected task, tool or fact")


_TOOLS: dict[str, Any] = {}


def _tools(fmt: str) -> dict[str, Any]:
    if fmt not in _TOOLS:
        _TOOLS[fmt] = make_tools(fmt=fmt)
    return _TOOLS[fmt]


def run_synth(cfg: JobConfig, *, model: Transformer | None = None, tokenizer: Tokenizer | None = None,
              say: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Write the data files into job.dump_folder; `model`/`tokenizer` (else loaded from model.init_from) are probed
    for the fact data."""
    s, seed = cfg.synth, cfg.job.seed
    if model is None or tokenizer is None:
        from herd.formats.load import load_pretrained

        pretrained = load_pretrained(cfg.model.init_from)
        model, tokenizer = pretrained.model, pretrained.tokenizer
    fmt = chat_format(tokenizer)
    out = Path(cfg.job.dump_folder)
    t0 = time.perf_counter()
    rng = random.Random(seed)
    sft = make_tool_dialogs(rng, s.tool_dialogs, fmt=fmt, no_tool_share=s.no_tool_share, max_tools=s.max_tools)
    tasks = make_tasks(random.Random(seed + 1), s.tasks + s.rs_prompts // 2, split="train")
    sft += [task_dialog(t) for t in tasks[: s.tasks]]
    prompts = [{"messages": t["messages"], "item": t} for t in tasks[s.tasks :]]
    # Tool prompts for sampling: train-split requests (their dialogs' first two turns), checked like eval items.
    extra = make_tool_dialogs(random.Random(seed + 2), s.rs_prompts - len(prompts), fmt=fmt, no_tool_share=0.0,
                              max_tools=s.max_tools)  # fmt: skip
    for d in extra:
        call = d["messages"][2]["tool_calls"][0]
        item = {"kind": "tool", "fmt": fmt, "messages": d["messages"][:2], "tool": call["name"],
                "arguments": call["arguments"]}  # fmt: skip
        prompts.append({"messages": item["messages"], "item": item})
    say(f"[synth] {s.tool_dialogs} tool dialogs (calls executed) and {s.tasks} task dialogs "
        f"in {time.perf_counter() - t0:.1f}s")  # fmt: skip

    engine = Engine(model, tokenizer, max_batch_size=s.batch_size)
    t1 = time.perf_counter()
    questions = _fact_questions(s, "train", s.facts, seed + 3)
    probed = probe(engine, questions, samples=s.fact_samples, max_new_tokens=s.max_new_tokens, seed=seed)
    facts = make_fact_data(probed, random.Random(seed + 4))
    sft += facts
    pairs = make_fact_pairs(probed, facts, random.Random(seed + 9))
    # Probed questions are prompts too: answer the answerable, refuse the rest (mixed ones have no right action).
    for q in probed:
        if q["label"] != "mixed" or q["open_book"]:
            item = {k: v for k, v in q.items() if k not in ("samples", "greedy")}
            item["answerable"] = q["label"] == "known" or q["open_book"]
            prompts.append({"messages": q["messages"], "item": item})
    labels = {k: sum(p["label"] == k for p in probed) for k in ("known", "unknown", "mixed")}
    say(f"[synth] probed {len(probed)} fact questions x {s.fact_samples} samples in "
        f"{time.perf_counter() - t1:.0f}s: {labels['known']} known, {labels['unknown']} unknown, "
        f"{labels['mixed']} mixed -> {len(facts)} dialogs")  # fmt: skip

    t2 = time.perf_counter()
    held = make_tool_eval(random.Random(seed + 5), s.eval_tools, fmt=fmt, max_tools=s.max_tools)
    held += make_tasks(random.Random(seed + 6), s.eval_tasks, split="eval")
    eval_questions = _fact_questions(s, "eval", s.eval_facts, seed + 7)
    held += fact_eval(probe(engine, eval_questions, samples=s.fact_samples, max_new_tokens=s.max_new_tokens,
                            seed=seed + 1))  # fmt: skip
    say(f"[synth] {len(held)} held-out items (facts labelled by probing) in {time.perf_counter() - t2:.0f}s")

    random.Random(seed + 8).shuffle(sft)
    write_jsonl(out / "sft.jsonl", sft)
    write_jsonl(out / "prompts.jsonl", prompts)
    write_jsonl(out / "pairs.jsonl", pairs)
    write_jsonl(out / "eval.jsonl", held)
    summary = {"format": fmt, "sft_dialogs": len(sft), "tool_dialogs": s.tool_dialogs, "task_dialogs": s.tasks,
               "fact_dialogs": len(facts), "fact_pairs": len(pairs), "fact_labels": labels, "prompts": len(prompts),
               "eval_items": len(held), "seconds": round(time.perf_counter() - t0, 1), "output": str(out)}  # fmt: skip
    from herd.config import save

    save(cfg, "synth", out / "config.toml")
    write_json(out / "summary.json", summary)
    return summary


def _fact_questions(s: SynthSection, split: str, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` closed-book questions, and for a `fact_open_book` share of the real ones the same question with its
    snippet (answerable from the prompt)."""
    rng = random.Random(seed)
    closed = fact_items(rng, n, split=split, fictitious=s.fact_fictitious, families=s.fact_families)
    return closed + [open_book_variant(q) for q in closed if not q["fictitious"] and rng.random() < s.fact_open_book]


def evaluate(
    model: Transformer, tokenizer: Tokenizer, items: list[dict[str, Any]], *, max_new_tokens: int = 48,
    batch_size: int = 16,
) -> dict[str, Any]:  # fmt: skip
    """Greedy answers to held-out items, scored by their checkers; rates per kind (and per task family)."""
    engine = Engine(model, tokenizer, max_batch_size=batch_size)
    # Similar prompt lengths batch together: left padding to the longest row is wasted work.
    order = sorted(range(len(items)), key=lambda i: len(items[i]["messages"][0]["content"]))
    prompts = [encode_prompt(tokenizer, items[i]["messages"]) for i in order]
    completions = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens))
    responses = [""] * len(items)
    for i, c in zip(order, completions, strict=True):
        responses[i] = c.text
    counts: dict[str, list[float]] = {}

    def add(name: str, value: bool) -> None:
        counts.setdefault(name, []).append(float(value))

    for item, text in zip(items, responses, strict=True):
        if item["kind"] == "tool":
            s = score_tool_call(item, text, _tools(item["fmt"]))
            add("tool_call_valid", s["valid"])
            add("tool_call_right_tool", s["valid"] and s["right_tool"])
        elif item["kind"] == "task":
            ok = check_task(item, text)
            add("task_accuracy", ok)
            add(f"task_accuracy_{item['family']}", ok)
        elif item["kind"] == "fact":
            s = score_fact(item, text)
            if item["answerable"]:
                add("fact_answerable_correct", s["correct"] and not s["refused"])
                add("fact_answerable_refused", s["refused"])
                if not item["open_book"]:  # closed-book and known to the starting model: the "knew before" set
                    add("fact_knew_correct", s["correct"] and not s["refused"])
                    add("fact_knew_refused", s["refused"])
            else:
                add("fact_unanswerable_refused", s["refused"])
    metrics: dict[str, Any] = {k: round(sum(v) / len(v), 4) for k, v in sorted(counts.items())}
    metrics["counts"] = {k: len(v) for k, v in sorted(counts.items())}
    metrics["responses"] = responses
    return metrics


def format_summary(s: dict[str, Any]) -> str:
    return (f"done in {s['seconds']}s ({s['format']} chat format): {s['sft_dialogs']} SFT dialogs "
            f"({s['tool_dialogs']} tool, {s['task_dialogs']} task, {s['fact_dialogs']} fact), {s['prompts']} "
            f"prompts, {s['fact_pairs']} fact pairs, {s['eval_items']} held-out items -> "
            f"{s['output']}/{{sft,prompts,pairs,eval}}.jsonl")  # fmt: skip
