"""Training throughput: herd's loop vs a minimal hand-written PyTorch loop, same model, same batches, one run.

The data is the embedded corpus (built at run time from installed packages), a 2048-token BPE trained on it with
`herd tokenizer train`'s trainer, and shards written by `herd data pack`'s packer. Both loops train the same
herd `Transformer` (the `debug` preset by default) with AdamW and gradient clipping on the same packed,
document-masked batches. herd's loop is `Trainer.train_step`: it draws its batch from the mix loader inside the
timed step and also checks the loss, logs metrics.jsonl and counts MFU. The minimal loop gets its batches drawn
beforehand, so data loading is not in its time at all. A third row, "minimal causal", drops the document mask
(plain causal attention through SDPA's fused path) to show what the mask costs.

Variants: eager and compiled (herd compiles each block; the minimal loop compiles the whole model), float32 and
bfloat16 autocast. tokens/s is the median over the timed steps after warm-up (compiled variants warm up longer);
MFU = model FLOPs (herd's formula, attention included) / step time / this machine's measured matmul peak for the
dtype, the same figure `herd train` logs.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/train.py
    .venv/bin/python benchmarks/train.py --preset tiny --steps 10 --no-compile
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from herd.config import PackSection, load
from herd.data.corpus import build_corpus
from herd.data.loader import IGNORE_INDEX, MixLoader
from herd.data.pack import pack
from herd.model import build_model, count_params, document_mask, document_positions, flops_per_token, get_preset
from herd.tokenizer.train import read_corpus, save_ranks, train_bpe
from herd.train.metrics import measure_peak_flops
from herd.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def build_shards(work: Path) -> Path:
    build_corpus(work / "raw")
    save_ranks(train_bpe(read_corpus([work / "raw"]), 2048), work / "tok" / "tokenizer.model")
    pack(PackSection(input=[str(work / "raw")], tokenizer=str(work / "tok" / "tokenizer.model")), work / "shards")
    return work / "shards"


def herd_loop(a: argparse.Namespace, shards: Path, run_dir: Path, dtype: str, compiled: bool) -> list[float]:
    cfg = load("train", None, [
        f"job.dump_folder='{run_dir}'", f"data.shards=['{shards}']", f"model.preset='{a.preset}'",
        f"training.steps={a.warmup + a.steps + 1}", f"training.seq_len={a.seq_len}",
        f"training.batch_tokens={a.batch_tokens}", f"model.dtype='{dtype}'",
        f"training.compile={str(compiled).lower()}",
        "lr_schedule.warmup_steps=1", "checkpoint.interval=0", "metrics.tensorboard=false", "metrics.log_interval=0",
        "metrics.peak_tflops=1.0",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        trainer.train_step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    trainer.metrics.close()
    return times


def minimal_loop(a, shards: Path, dtype: str, compiled: bool, masked: bool) -> list[float]:
    """What one writes by hand: forward, summed cross-entropy, backward, clip, AdamW step."""
    loader = MixLoader([str(shards)], seed=0, chunk_tokens=a.seq_len + 1)
    rows = a.batch_tokens // a.seq_len
    batches = [loader.next_batch(rows, a.seq_len) for _ in range(a.warmup + a.steps)]
    torch.manual_seed(0)
    model = build_model(get_preset(a.preset).replace(vocab_size=loader.vocab_size, max_seq_len=a.seq_len))
    # fused, as herd's optim.fused default: the comparison is of the loops, not of AdamW implementations.
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_model = torch.compile(model) if compiled else model
    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            if masked:
                logits = step_model(b.tokens, positions_BT=document_positions(b.doc_ids), mask=document_mask(b.doc_ids))
            else:
                logits = step_model(b.tokens)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), b.targets.flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="debug")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiled variants: +3)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    a = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    work = Path(tempfile.mkdtemp(prefix="herd-bench-train-"))
    shards = build_shards(work)
    vocab = MixLoader([str(shards)]).vocab_size
    args = get_preset(a.preset).replace(vocab_size=vocab, max_seq_len=a.seq_len)
    flops_per_step = flops_per_token(args, a.seq_len)["train"] * a.batch_tokens
    peaks = {d: measure_peak_flops(getattr(torch, d), torch.device("cpu")) for d in ("float32", "bfloat16")}
    results = []
    for dtype in ("float32", "bfloat16"):
        for compiled in (False,) if a.no_compile else (False, True):
            warm = a.warmup + (3 if compiled else 0)
            run = argparse.Namespace(**{**vars(a), "warmup": warm})
            variants = {
                "herd": lambda r=run, c=compiled, d=dtype: herd_loop(r, shards, work / f"run-{d}-{c}", d, c),
                "minimal": lambda r=run, c=compiled, d=dtype: minimal_loop(r, shards, d, c, masked=True),
                "minimal causal": lambda r=run, c=compiled, d=dtype: minimal_loop(r, shards, d, c, masked=False),
            }
            for name, fn in variants.items():
                times = fn()
                step = statistics.median(times)
                row = {
                    "loop": name, "dtype": dtype, "compiled": compiled, "step_s": round(step, 4),
                    "tokens_per_s": round(a.batch_tokens / step), "mfu": round(flops_per_step / step / peaks[dtype], 4),
                    "times": [round(t, 4) for t in times],
                }  # fmt: skip
                results.append(row)
                print(f"{dtype:9} {'compiled' if compiled else 'eager':9} {name:15} {row['tokens_per_s']:>8,} tok/s"
                      f"  MFU {row['mfu']:.1%}", flush=True)  # fmt: skip
    meta = {
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "machine": platform.machine(),
        "threads": torch.get_num_threads(), "preset": a.preset, "params": count_params(args)["total"],
        "seq_len": a.seq_len, "batch_tokens": a.batch_tokens, "peak_flops": peaks,
        "model_flops_per_step": flops_per_step, "vocab_size": vocab,
    }  # fmt: skip
    Path(a.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print("\n| dtype | mode | loop | tokens/s | MFU | herd / minimal |\n|---|---|---|---|---|---|")
    for r in results:
        ref = next(x for x in results if x["loop"] == "minimal" and x["dtype"] == r["dtype"]
                   and x["compiled"] == r["compiled"])  # fmt: skip
        ratio = f"**{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x**" if r["loop"] == "herd" else ""
        mode = "compiled" if r["compiled"] else "eager"
        print(f"| {r['dtype']} | {mode} | {r['loop']} | {r['tokens_per_s']:,} | {r['mfu']:.1%} | {ratio} |")


if __name__ == "__main__":
    main()
