"""`herd guard` (classify a dialog), `herd guard data`, `herd guard train` and `herd guard eval`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from herd.errors import SafetyError


def add_guard_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "guard",
        help="Llama Guard 2/3: classify a dialog's last turn (safe / unsafe + categories); train or evaluate a guard",
        description="With --dialog: classify. Subcommands: data, train, eval.",
    )
    p.add_argument("--model", default=None, help="a Llama Guard 2/3 checkpoint (HF, Meta, GGUF); default: herd's own")
    p.add_argument("--dialog", default=None, help="JSON list of messages (or {'messages': [...]}); - reads stdin")
    p.add_argument("--role", choices=("user", "agent"), default=None, help="whose turn to judge (the last one)")
    p.add_argument("--categories", default=None, help="custom categories: JSON list of {name, description?, code?}")
    p.add_argument("--taxonomy", choices=("lg2", "lg3", "lg3-1b"), default=None, help="default: from the model name")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_guard)
    gsub = p.add_subparsers(dest="guard_command")

    q = gsub.add_parser("data", help="write the labelled guard data (train.jsonl, heldout.jsonl; split by source)")
    q.add_argument("--out", required=True)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_guard_data)

    from herd.safety.train import GuardTrainSettings

    d = GuardTrainSettings()
    q = gsub.add_parser("train", help="LoRA-tune the embedded SmolLM2 into a Llama Guard 3 format guard")
    q.add_argument("--out", required=True, help="directory for the data, the run and adapter/")
    q.add_argument("--max-examples", type=int, default=d.max_examples)
    q.add_argument("--epochs", type=float, default=d.epochs)
    q.add_argument("--rank", type=int, default=d.rank)
    q.add_argument("--alpha", type=float, default=d.alpha)
    q.add_argument("--last-layers", type=int, default=d.last_layers)
    q.add_argument("--lr", type=float, default=d.lr)
    q.add_argument("--seq-len", type=int, default=d.seq_len)
    q.add_argument("--batch-tokens", type=int, default=d.batch_tokens)
    q.add_argument("--seed", type=int, default=d.seed)
    q.add_argument("--dtype", choices=("float32", "bfloat16"), default=d.dtype, help="compute precision")
    q.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation after training")
    q.set_defaults(func=cmd_guard_train)

    q = gsub.add_parser("eval", help="a guard vs the keyword baseline on held-out guard data (report.json, PNG)")
    q.add_argument("--model", dest="eval_model", default=None, help="guard checkpoint (default: herd's own)")
    q.add_argument("--adapter", default=None, help="an adapter directory from `herd guard train` (SmolLM2 + LoRA)")
    q.add_argument("--data", default=None, help="guard data jsonl (default: the held-out split, built now)")
    q.add_argument("--limit", type=int, default=0, help="evaluate the first N examples only")
    q.add_argument("--out", default=None, help="write report.json and pr_curve.png here")
    q.set_defaults(func=cmd_guard_eval)


def cmd_guard(a: argparse.Namespace) -> None:
    from herd.safety.guard import Guard
    from herd.safety.prompt import check_role, read_dialog

    if a.dialog is None:
        raise SafetyError("herd guard: pass --dialog FILE (or - for stdin), or a subcommand: data, train, eval")
    turns = read_dialog(a.dialog)
    check_role(turns, a.role)  # before loading a model: a wrong role is the user's mistake, not the model's
    guard = Guard.load(a.model, taxonomy=a.taxonomy, categories_file=a.categories)
    result = guard.classify(turns, a.role)
    if a.json:
        print(json.dumps(result.to_dict(guard.category_names)))
        return
    names = guard.category_names
    if result.safe:
        print(f"safe  ({result.role} turn; P(unsafe) {result.score:.3f})")
    else:
        listed = ", ".join(f"{c} {names.get(c, '?')}" for c in result.categories) or "no category given"
        print(f"unsafe: {listed}  ({result.role} turn; P(unsafe) {result.score:.3f})")
    if result.error:
        print(f"note: {result.error}; treated as unsafe")


def cmd_guard_data(a: argparse.Namespace) -> None:
    from herd.safety.data import write_guard_data

    summary = write_guard_data(a.out, seed=a.seed)
    for split, per_source in summary.items():
        total = sum(sum(c.values()) for c in per_source.values())
        print(f"{Path(a.out) / (split + '.jsonl')}: {total} examples from {len(per_source)} sources")
        for source, counts in per_source.items():
            print(f"  {source:45} " + " ".join(f"{k} {v}" for k, v in counts.items()))


def cmd_guard_train(a: argparse.Namespace) -> None:
    from herd.safety.train import GuardTrainSettings, train_guard

    settings = GuardTrainSettings(max_examples=a.max_examples, epochs=a.epochs, rank=a.rank, alpha=a.alpha,
                                  last_layers=a.last_layers, lr=a.lr, seq_len=a.seq_len, batch_tokens=a.batch_tokens,
                                  seed=a.seed, dtype=a.dtype)  # fmt: skip
    meta = train_guard(a.out, settings)
    adapter = Path(a.out) / "adapter"
    print(f"done: {meta['steps']} steps in {meta['seconds']}s, final loss {meta['final_loss']:.4f}; adapter {adapter}")
    if not a.no_eval:
        _evaluate(adapter=str(adapter), model=None, data=str(Path(a.out) / "data" / "heldout.jsonl"), limit=0,
                  out=str(Path(a.out) / "eval"))  # fmt: skip


def cmd_guard_eval(a: argparse.Namespace) -> None:
    if a.eval_model and a.adapter:
        raise SafetyError("herd guard eval: pass --model or --adapter, not both")
    _evaluate(adapter=a.adapter, model=a.eval_model, data=a.data, limit=a.limit, out=a.out)


def _evaluate(*, adapter: str | None, model: str | None, data: str | None, limit: int, out: str | None) -> None:
    from herd.safety.data import build_guard_examples, read_jsonl, split_by_source
    from herd.safety.guard import EMBEDDED_NAME, Guard
    from herd.safety.guard_eval import evaluate_guard, format_eval
    from herd.safety.train import load_embedded_guard

    examples = read_jsonl(data) if data else split_by_source(build_guard_examples())[1]
    if limit:
        examples = examples[:limit]
    if adapter:
        decoder, tokenizer = load_embedded_guard(adapter)
        guard = Guard(decoder, tokenizer, name=f"{EMBEDDED_NAME}, adapter {adapter}")
    else:
        guard = Guard.load(model)
    result = evaluate_guard(guard, examples, out)
    print(format_eval(result))
    if out:
        print(f"wrote {Path(out) / 'report.json'} and {Path(out) / 'pr_curve.png'}")
