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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from herd.config import ConfigError, load
from herd.data.loader import MixLoader
from herd.data.pack import PackConfig, input_files, pack, read_records
from herd.errors import HerdError
from herd.fileio import atomic_file
from herd.model import count_params, document_mask, document_positions, flops_per_token, get_preset
from herd.scaling.task import build_items, evaluate
from herd.tokenizer import load_tokenizer
from herd.train.config import TrainJobConfig

MANIFEST = "manifest.json"
FLOPS_FORMULA = (
    "C = F x D with F = herd.model.flops_per_token(args, seq_len)['train'] = 3 x (2 x matmul weights + "
    "4 x n_layers x seq_len x n_heads x head_dim): every matmul weight including the output projection, "
    "attention scores and weighted sum without a causal discount, backward = 2 x forward; N in the laws is the "
    "matmul weight count (embedding lookup excluded)"
)


@dataclass(kw_only=True, slots=True)
class SweepSize:
    dim: int
    n_layers: int
    n_heads: int = 0
    """0 means dim // 16 (head width 16)."""
    n_kv_heads: int = 0
    """0 means half the query heads (at least 1)."""


def _default_sizes() -> list[SweepSize]:
    return [SweepSize(dim=d, n_layers=n) for d, n in ((32, 2), (48, 2), (64, 3), (96, 4), (128, 4))]


@dataclass(kw_only=True, slots=True)
class SweepSection:
    output: str = "runs/scaling/tiny"
    """Run directory: manifest.json, data/, runs/<name>/, and (from `herd scaling fit`) fit.json and plots."""
    input: list[str] = field(default_factory=lambda: ["runs/curate/kept"])
    """jsonl documents (a text field, optional source), as for `herd data pack`."""
    tokenizer: str = "runs/tok/tokenizer.model"
    source_field: str = "domain"
    val_fraction: float = 0.05
    """Share of documents held out for validation loss and the downstream task."""
    budgets: list[float] = field(default_factory=lambda: [6e11, 1.2e12, 2.4e12])
    """Training FLOPs per IsoFLOP curve (herd's FLOPs count, attention included)."""
    holdout_budget: float = 6e12
    """A larger budget trained after the sweep at the fit's predicted optimal shape; 0 = none."""
    sizes: list[SweepSize] = field(default_factory=_default_sizes)
    """Model shapes trained at every budget (the vocabulary comes from the tokenizer)."""
    seq_len: int = 256
    batch_tokens: int = 4096
    lr: float = 3e-3
    warmup_fraction: float = 0.1
    min_lr_ratio: float = 0.1
    eval_batches: int = 16
    """Validation batches (of batch_tokens) for the validation loss."""
    task_items: int = 300
    task_distractors: str = "other"
    """Where the task's wrong answers come from: other (other sources), any, or same (the same source)."""
    seed: int = 0


@dataclass(kw_only=True, slots=True)
class ScalingJobConfig:
    scaling: SweepSection = field(default_factory=SweepSection)


class SweepError(HerdError):
    """A sweep that cannot run: bad settings, missing data, a run directory from another sweep."""


def _say(message: str) -> None:
    print(message, flush=True)  # a sweep's log is often a file: show each run as it ends


def run_sweep(cfg: SweepSection, *, progress: bool = False, log=_say) -> dict[str, Any]:
    """Train every (budget, size) not yet in the manifest, then the held-out run; returns the manifest."""
    _check(cfg)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    train_dir, val_dir, val_docs = prepare_data(cfg, out)
    items = build_items(val_docs, num_items=cfg.task_items, distractors=cfg.task_distractors, seed=cfg.seed)
    manifest = _open_manifest(cfg, out)
    vocab = MixLoader([str(train_dir)]).vocab_size

    plan = [(budget, size, False) for budget in cfg.budgets for size in cfg.sizes]
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("sweep", total=len(plan) + (1 if cfg.holdout_budget else 0))
        for budget, size, holdout in plan:
            name = run_name(budget, size)
            bar.update(task, description=f"sweep {name}")
            if not _done(manifest, name):
                record = train_run(cfg, out, train_dir, val_dir, items, budget, size, vocab, holdout=holdout)
                _store(manifest, record, out)
                log(_line(record))
            bar.advance(task)
        if cfg.holdout_budget:
            size = holdout_size(cfg, manifest, vocab, log=log)
            name = run_name(cfg.holdout_budget, size)
            bar.update(task, description=f"held-out run {name}")
            if not _done(manifest, name):
                record = train_run(cfg, out, train_dir, val_dir, items, cfg.holdout_budget, size, vocab, holdout=True)
                _store(manifest, record, out)
                log(_line(record) + "  (held out)")
            bar.advance(task)
    return manifest


def prepare_data(cfg: SweepSection, out: Path) -> tuple[Path, Path, list[tuple[str, list[int]]]]:
    """Split the input documents by a hash of their text, pack both splits; the held-out documents, tokenized."""
    data = out / "data"
    data.mkdir(exist_ok=True)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    held: list[tuple[str, str]] = []
    for record, _ in read_records(input_files(cfg.input), [], False):
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            continue
        meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        source = str(record.get(cfg.source_field, meta.get(cfg.source_field, "default")))
        val = zlib.crc32(text.encode()) % 10_000 < cfg.val_fraction * 10_000
        splits["val" if val else "train"].append(json.dumps({"text": text, "source": source}))
        if val:
            held.append((source, text))
    if len(held) < 8 or not splits["train"]:
        raise SweepError(f"{', '.join(cfg.input)}: too few documents to hold out {cfg.val_fraction:.0%} (got "
                         f"{len(held)} held out of {len(held) + len(splits['train'])})")  # fmt: skip
    dirs = []
    for split, lines in splits.items():
        with atomic_file(data / f"{split}.jsonl", "w") as f:
            f.write("\n".join(lines) + "\n")
        pack_dir = data / f"{split}-shards"
        pack(PackConfig(input=[str(data / f"{split}.jsonl")], output=str(pack_dir), tokenizer=cfg.tokenizer,
                        shard_tokens=1 << 22))  # fmt: skip
        dirs.append(pack_dir)
    tokenizer = load_tokenizer(None if cfg.tokenizer == "llama3" else cfg.tokenizer)
    return dirs[0], dirs[1], [(source, tokenizer.encode(text)) for source, text in held]


def run_name(budget: float, size: SweepSize) -> str:
    return f"b{budget:.2g}-d{size.dim}-l{size.n_layers}"


def model_shape(size: SweepSize, vocab: int, seq_len: int):
    heads = size.n_heads or max(1, size.dim // 16)
    kv = size.n_kv_heads or max(1, heads // 2)
    return get_preset("tiny").replace(dim=size.dim, n_layers=size.n_layers, n_heads=heads, n_kv_heads=kv,
                                      vocab_size=vocab, max_seq_len=seq_len, multiple_of=16)  # fmt: skip


def train_run(
    cfg: SweepSection, out: Path, train_dir: Path, val_dir: Path, items, budget: float, size: SweepSize, vocab: int,
    *, holdout: bool,
) -> dict[str, Any]:  # fmt: skip
    from herd.train.trainer import Trainer

    args = model_shape(size, vocab, cfg.seq_len)
    per_token = flops_per_token(args, cfg.seq_len)["train"]
    steps = max(2, round(budget / per_token / cfg.batch_tokens))
    name = run_name(budget, size)
    record: dict[str, Any] = {
        "name": name, "budget": budget, "holdout": holdout, "dim": args.dim, "n_layers": args.n_layers,
        "n_heads": args.n_heads, "n_kv_heads": args.n_kv_heads, "params": count_params(args)["total"],
        "n": int(flops_per_token(args, 0)["matmul_params"]), "flops_per_token": per_token,
        "tokens": steps * cfg.batch_tokens, "flops": per_token * steps * cfg.batch_tokens, "steps": steps,
    }  # fmt: skip
    job = load(TrainJobConfig, None, [
        f"job.dump_folder={json.dumps(str(out / 'runs' / name))}", f"job.seed={cfg.seed}",
        f"data.shards=[{json.dumps(str(train_dir))}]", "model.preset='tiny'", f"model.dim={args.dim}",
        f"model.n_layers={args.n_layers}", f"model.n_heads={args.n_heads}", f"model.n_kv_heads={args.n_kv_heads}",
        f"model.multiple_of={args.multiple_of}", f"training.steps={steps}", f"training.seq_len={cfg.seq_len}",
        f"training.batch_tokens={cfg.batch_tokens}", f"optim.lr={cfg.lr}",
        f"lr_schedule.warmup_steps={min(steps - 1, max(1, round(cfg.warmup_fraction * steps)))}",
        f"lr_schedule.min_lr_ratio={cfg.min_lr_ratio}", "checkpoint.interval=0", "checkpoint.keep_last=1",
        "metrics.tensorboard=false", "metrics.log_interval=0", "metrics.peak_tflops=1.0", "metrics.progress=false",
    ])  # fmt: skip
    start = time.perf_counter()
    try:
        trainer = Trainer(job)
        trainer.train()
        record["val_loss"] = validation_loss(trainer.model, val_dir, cfg)
        record.update(evaluate(trainer.model, items))
        record["status"] = "done"
    except (HerdError, RuntimeError) as e:  # a run that fails is recorded, not fatal to the sweep
        record.update(status="failed", error=str(e).splitlines()[0][:300], val_loss=math.nan)
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


@torch.no_grad()
def validation_loss(model, val_dir: Path, cfg: SweepSection) -> float:
    """Mean NLL per target token over the same `eval_batches` held-out batches for every run."""
    from herd.train.trainer import summed_cross_entropy

    loader = MixLoader([str(val_dir)], seed=1234, chunk_tokens=cfg.seq_len + 1)
    model.eval()
    total, count = 0.0, 0
    for _ in range(cfg.eval_batches):
        b = loader.next_batch(cfg.batch_tokens // cfg.seq_len, cfg.seq_len)
        logits = model(b.tokens, positions_BT=document_positions(b.doc_ids), mask=document_mask(b.doc_ids))
        total += float(summed_cross_entropy(logits, b.targets))
        count += b.num_targets
    model.train()
    return total / count


def holdout_size(cfg: SweepSection, manifest: dict[str, Any], vocab: int, *, log=_say) -> SweepSize:
    """The sweep shape whose N is nearest (in log) to the fitted optimum at the held-out budget."""
    from herd.scaling.fit import fit_sweep, predict

    fit = fit_sweep(manifest)
    for warning in fit.get("warnings", []):
        log(f"warning: {warning}")
    target = predict(fit, cfg.holdout_budget)["n"]
    sizes = {run_name(cfg.holdout_budget, s): s for s in cfg.sizes}
    best = min(sizes.values(),
               key=lambda s: abs(math.log(flops_per_token(model_shape(s, vocab, cfg.seq_len), 0)["matmul_params"])
                                 - math.log(target)))  # fmt: skip
    log(f"held-out budget {cfg.holdout_budget:.2g}: the fit puts the optimum at N = {target:,.0f}; training "
        f"dim {best.dim}, {best.n_layers} layers")  # fmt: skip
    return best


def _check(cfg: SweepSection) -> None:
    if len(cfg.sizes) < 3:
        raise ConfigError(f"scaling.sizes has {len(cfg.sizes)} shapes; an IsoFLOP parabola needs at least 3")
    if len(cfg.budgets) < 2:
        raise ConfigError(f"scaling.budgets has {len(cfg.budgets)} budgets; a power law needs at least 2")
    if any(b <= 0 for b in cfg.budgets) or cfg.holdout_budget < 0:
        raise ConfigError(f"scaling.budgets must be positive FLOP counts, got {cfg.budgets}")
    if not 0 < cfg.val_fraction < 0.5:
        raise ConfigError(f"scaling.val_fraction={cfg.val_fraction} must be in (0, 0.5)")
    if cfg.batch_tokens % cfg.seq_len:
        raise ConfigError(f"scaling.batch_tokens={cfg.batch_tokens} is not a multiple of seq_len={cfg.seq_len}")


def _open_manifest(cfg: SweepSection, out: Path) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("output", "budgets", "sizes", "holdout_budget")}
    path = out / MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest.get("settings") != json.loads(json.dumps(settings)):
            raise SweepError(f"{out}: holds a sweep with other settings (data, tokenizer or training); choose a new "
                             "scaling.output, or only add budgets and sizes")  # fmt: skip
        return manifest
    return {"version": 1, "flops_formula": FLOPS_FORMULA, "seq_len": cfg.seq_len, "settings": settings,
            "task": {"name": "continuation-4way", "items": cfg.task_items, "chance": 0.25}, "runs": []}  # fmt: skip


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
