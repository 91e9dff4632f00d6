"""`herd scaling sweep`: IsoFLOP curves on your own data and hardware, resumable, in one manifest.

For each compute budget C and each model shape of the sweep, train with herd's trainer for D = C / F tokens,
where F is herd's training FLOPs per token at the sweep's sequence length (matmul weights plus attention,
`herd.model.flops_per_token`; the paper's 6N leaves attention out). Each run records its validation loss on a
held-out split and its score on the downstream task (herd/scaling/task.py). Then, as a test of the fit, one
held-out run at a larger budget trains the shape that the fit of the other runs predicts is compute-optimal
there; `herd scaling fit` compares its predicted and measured loss and accuracy.

The data is split once: every input document goes to the held-out split when a hash of its text says so
(`val_fraction`), and both splits are packed with `herd data pack`'s packer into RUN_DIR/data. Every finished
run is written to RUN_DIR/manifest.json at once, so an interrupted sweep picks up where it stopped.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from herd.config import JobConfig, SweepSize, defaults
from herd.data.loader import MixLoader
from herd.data.pack import input_files, pack, read_records
from herd.errors import HerdError
from herd.fileio import atomic_file
from herd.model import count_params, document_mask, document_positions, flops_per_token, get_preset
from herd.scaling.task import build_items, evaluate
from herd.tokenizer import load_tokenizer

MANIFEST = "manifest.json"
FLOPS_FORMULA = (
    "C = F x D with F = herd.model.flops_per_token(args, seq_len)['train'] = 3 x (2 x matmul weights + "
    "4 x n_layers x seq_len x n_heads x head_dim): every matmul weight including the output projection, "
    "attention scores and weighted sum without a causal discount, backward = 2 x forward; N in the laws is the "
    "matmul weight count (embedding lookup excluded)"
)


class SweepError(HerdError):
    """A sweep that cannot run: bad settings, missing data, a run directory from another sweep."""


def _say(message: str) -> None:
    print(message, flush=True)  # a sweep's log is often a file: show each run as it ends


def run_sweep(cfg: JobConfig, *, progress: bool = False, log=_say) -> dict[str, Any]:
    """Train every (budget, size) not yet in the manifest, then the held-out run; returns the manifest."""
    s = cfg.scaling
    out = Path(cfg.job.dump_folder)
    out.mkdir(parents=True, exist_ok=True)
    train_dir, val_dir, val_docs = prepare_data(cfg, out)
    try:
        items = build_items(val_docs, num_items=s.task_items, distractors=s.task_distractors, seed=cfg.job.seed)
    except ValueError as e:  # held-out documents too short, or too few sources for the distractors asked for
        raise SweepError(
            f"{', '.join(cfg.pack.input)}: cannot build the held-out task: {e} (scaling.task_distractors="
            f"{s.task_distractors!r} draws them by pack.source_field={cfg.pack.source_field!r}; 'any' ignores it)"
        ) from None
    manifest = _open_manifest(cfg, out)
    vocab = MixLoader([str(train_dir)]).vocab_size

    plan = [(budget, size, False) for budget in s.budgets for size in s.sizes]
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("sweep", total=len(plan) + (1 if s.holdout_budget else 0))
        for budget, size, holdout in plan:
            name = run_name(budget, size)
            bar.update(task, description=f"sweep {name}")
            if not _done(manifest, name):
                record = train_run(cfg, out, train_dir, val_dir, items, budget, size, vocab, holdout=holdout)
                _store(manifest, record, out)
                log(_line(record))
            bar.advance(task)
        if s.holdout_budget:
            size = holdout_size(cfg, manifest, vocab, log=log)
            name = run_name(s.holdout_budget, size)
            bar.update(task, description=f"held-out run {name}")
            if not _done(manifest, name):
                record = train_run(cfg, out, train_dir, val_dir, items, s.holdout_budget, size, vocab, holdout=True)
                _store(manifest, record, out)
                log(_line(record) + "  (held out)")
            bar.advance(task)
    return manifest


def format_sweep_start(cfg: JobConfig) -> str:
    """What `herd scaling sweep` prints before the runs: how many, and where they go."""
    s = cfg.scaling
    runs = len(s.budgets) * len(s.sizes) + (1 if s.holdout_budget else 0)
    holdout = " + 1 held-out run" if s.holdout_budget else ""
    return (
        f"herd scaling sweep: {len(s.budgets)} budgets x {len(s.sizes)} shapes{holdout} ({runs} runs) "
        f"-> {cfg.job.dump_folder}"
    )


def format_sweep_done(cfg: JobConfig, manifest: dict[str, Any], seconds: float) -> str:
    """What `herd scaling sweep` prints after `run_sweep` returned `manifest`: the runs, the failed ones, what next."""
    failed = [r["name"] for r in manifest["runs"] if r.get("status") != "done"]
    failures = f"; failed: {', '.join(failed)}" if failed else ""
    return (
        f"done in {seconds:.0f}s: {len(manifest['runs'])} runs in {cfg.job.dump_folder}/manifest.json{failures}\n"
        f"next: herd scaling fit {cfg.job.dump_folder}"
    )


def prepare_data(cfg: JobConfig, out: Path) -> tuple[Path, Path, list[tuple[str, list[int]]]]:
    """Split the input documents by a hash of their text, pack both splits; the held-out documents, tokenized."""
    data = out / "data"
    data.mkdir(exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    held: list[tuple[str, str]] = []
    p, fraction = cfg.pack, cfg.scaling.val_fraction
    for record, _ in read_records(input_files(p.input), [], False):
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            continue
        meta = m if isinstance(m := record.get("metadata"), dict) else {}
        source = str(record.get(p.source_field, meta.get(p.source_field, "default")))
        val = zlib.crc32(text.encode()) % 10_000 < fraction * 10_000
        splits["val" if val else "train"].append(json.dumps({"text": text, "source": source}))
        if val:
            held.append((source, text))
    if len(held) < 8 or not splits["train"]:
        raise SweepError(f"{', '.join(p.input)}: too few documents to hold out {fraction:.0%} (got "
                         f"{len(held)} held out of {len(held) + len(splits['train'])})")  # fmt: skip
    dirs = []
    for split, lines in splits.items():
        with atomic_file(data / f"{split}.jsonl", "w") as f:
            f.write("\n".join(lines) + "\n")
        pack_dir = data / f"{split}-shards"
        # The split files name each document's source in "source", whatever field the input used.
        pack(replace(defaults("pack").pack, input=[str(data / f"{split}.jsonl")], tokenizer=p.tokenizer,
                     shard_tokens=1 << 22), pack_dir)  # fmt: skip
        dirs.append(pack_dir)
    tokenizer = load_tokenizer(None if p.tokenizer == "llama3" else p.tokenizer)
    return dirs[0], dirs[1], [(source, tokenizer.encode(text)) for source, text in held]


def run_name(budget: float, size: SweepSize) -> str:
    return f"b{budget:.2g}-d{size.dim}-l{size.n_layers}"


def model_shape(size: SweepSize, vocab: int, seq_len: int, *, preset: str = "tiny"):
    heads = size.n_heads or max(1, size.dim // 16)
    kv = size.n_kv_heads or max(1, heads // 2)
    return get_preset(preset).replace(dim=size.dim, n_layers=size.n_layers, n_heads=heads, n_kv_heads=kv,
                                      vocab_size=vocab, max_seq_len=seq_len, multiple_of=16)  # fmt: skip


def train_run(
    cfg: JobConfig, out: Path, train_dir: Path, val_dir: Path, items, budget: float, size: SweepSize, vocab: int,
    *, holdout: bool,
) -> dict[str, Any]:  # fmt: skip
    from herd.train.trainer import Trainer

    t = cfg.training
    args = model_shape(size, vocab, t.seq_len, preset=cfg.model.preset)
    per_token = flops_per_token(args, t.seq_len)["train"]
    steps = max(2, round(budget / per_token / t.batch_tokens))
    name = run_name(budget, size)
    record: dict[str, Any] = {
        "name": name, "budget": budget, "holdout": holdout, "dim": args.dim, "n_layers": args.n_layers,
        "n_heads": args.n_heads, "n_kv_heads": args.n_kv_heads, "params": count_params(args)["total"],
        "n": int(flops_per_token(args, 0)["matmul_params"]), "flops_per_token": per_token,
        "tokens": steps * t.batch_tokens, "flops": per_token * steps * t.batch_tokens, "steps": steps,
    }  # fmt: skip
    base = defaults("train")
    job = replace(
        base,
        job=replace(base.job, dump_folder=str(out / "runs" / name), seed=cfg.job.seed),
        data=replace(base.data, shards=[str(train_dir)]),
        model=replace(base.model, preset=cfg.model.preset, dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                      n_kv_heads=args.n_kv_heads, multiple_of=args.multiple_of),
        training=replace(base.training, steps=steps, seq_len=t.seq_len, batch_tokens=t.batch_tokens, device=t.device),
        optim=cfg.optim,
        lr_schedule=replace(cfg.lr_schedule,
                            warmup_steps=min(steps - 1, max(1, round(cfg.scaling.warmup_fraction * steps)))),
        checkpoint=replace(base.checkpoint, interval=0, keep_last=1),
        metrics=replace(base.metrics, tensorboard=False, log_interval=0, peak_tflops=1.0, progress=False),
    )  # fmt: skip
    start = time.perf_counter()
    try:
        trainer = Trainer(job)
        trainer.train()
        record["val_loss"] = validation_loss(trainer.model, val_dir, cfg)
        record.update(evaluate(trainer.transformer, items))  # trainer.model itself: pretraining wraps nothing
        record["status"] = "done"
    except (HerdError, RuntimeError) as e:  # a run that fails is recorded, not fatal to the sweep
        record.update(status="failed", error=str(e).splitlines()[0][:300], val_loss=math.nan)
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


@torch.no_grad()
def validation_loss(model, val_dir: Path, cfg: JobConfig) -> float:
    """Mean NLL per target token over the same `eval_batches` held-out batches for every run."""
    from herd.train.objective import summed_cross_entropy

    seq_len, batch_tokens = cfg.training.seq_len, cfg.training.batch_tokens
    loader = MixLoader([str(val_dir)], seed=1234, chunk_tokens=seq_len + 1)
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for _ in range(cfg.scaling.eval_batches):
        b = loader.next_batch(batch_tokens // seq_len, seq_len)
        doc_ids = b.doc_ids.to(device)
        logits = model(b.tokens.to(device), positions_BT=document_positions(doc_ids), mask=document_mask(doc_ids))
        total += float(summed_cross_entropy(logits, b.targets.to(device)))
        count += b.num_targets
    model.train()
    return total / count


def holdout_size(cfg: JobConfig, manifest: dict[str, Any], vocab: int, *, log=_say) -> SweepSize:
    """The sweep shape whose N is nearest (in log) to the fitted optimum at the held-out budget."""
    from herd.scaling.fit import fit_sweep, predict

    s = cfg.scaling
    fit = fit_sweep(manifest)
    for warning in fit.get("warnings", []):
        log(f"warning: {warning}")
    target = predict(fit, s.holdout_budget)["n"]

    def distance(size: SweepSize) -> float:
        args = model_shape(size, vocab, cfg.training.seq_len, preset=cfg.model.preset)
        return abs(math.log(flops_per_token(args, 0)["matmul_params"]) - math.log(target))

    best = min(s.sizes, key=distance)
    log(f"held-out budget {s.holdout_budget:.2g}: the fit puts the optimum at N = {target:,.0f}; training "
        f"dim {best.dim}, {best.n_layers} layers")  # fmt: skip
    return best


def _open_manifest(cfg: JobConfig, out: Path) -> dict[str, Any]:
    """The manifest of the sweep in `out`; a new sweep's when there is none. Everything that changes a run but
    the budgets and sizes must match: a sweep may grow, not change."""
    s = cfg.scaling
    settings = {
        "pack": {k: getattr(cfg.pack, k) for k in ("input", "tokenizer", "source_field")}, "seed": cfg.job.seed,
        "preset": cfg.model.preset, "optim": asdict(cfg.optim),
        "lr_schedule": {"decay": cfg.lr_schedule.decay, "min_lr_ratio": cfg.lr_schedule.min_lr_ratio},
        "training": {"seq_len": cfg.training.seq_len, "batch_tokens": cfg.training.batch_tokens},
        "scaling": {k: v for k, v in asdict(s).items() if k not in ("budgets", "sizes", "holdout_budget")},
    }  # fmt: skip
    path = out / MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest.get("settings") != json.loads(json.dumps(settings)):
            raise SweepError(f"{out}: holds a sweep with other settings (data, tokenizer or training), or one made "
                             "before herd's one config tree; choose a new job.dump_folder, or only add budgets and "
                             "sizes")  # fmt: skip
        return manifest
    return {"version": 1, "flops_formula": FLOPS_FORMULA, "seq_len": cfg.training.seq_len, "settings": settings,
            "task": {"name": "continuation-4way", "items": s.task_items, "chance": 0.25}, "runs": []}  # fmt: skip


def _done(manifest: dict[str, Any], name: str) -> bool:
    return any(r["name"] == name and r.get("status") == "done" for r in manifest["runs"])


def _store(manifest: dict[str, Any], record: dict[str, Any], out: Path) -> None:
    manifest["runs"] = [r for r in manifest["runs"] if r["name"] != record["name"]] + [record]
    with atomic_file(out / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)


def _line(r: dict[str, Any]) -> str:
    if r.get("status") != "done":
        return f"{r['name']:<22} failed: {r.get('error')}"
    return (f"{r['name']:<22} N {r['n']:>10,}  D {r['tokens']:>11,}  val loss {r['val_loss']:.4f}  "
            f"task acc {r['task_acc']:.3f}  nll {r['task_nll']:.3f}  ({r['seconds']}s)")  # fmt: skip
