"""Post-training throughput: herd vs TRL / transformers, and herd vs herd before the one-Trainer move (the reward
model and DPO ran on their own loop until commit 1014838), same model, same data, same settings, one run.

The model is the embedded SmolLM2-135M-Instruct: herd loads the GGUF with `load_pretrained()` (dequantized to
float32); the peers load the HF directory that herd's writer exports from it once at start-up (the same float32
weights, with herd's tokenizer files), through `AutoModelForCausalLM` / `AutoTokenizer`. The data is made at run
time from `herd.posttrain.synth.tasks` (single-turn verifiable tasks whose answer is a few tokens): nothing is
downloaded.

1. SFT: herd's `build_sft` (the pretraining Trainer fed by DialogLoader, which packs whole dialogs into rows with a
   document mask) vs TRL `SFTTrainer` on a prompt-completion conversational dataset (loss on the completion only,
   no packing, no padding-free, padding to the longest row of each batch). samples/s = dialogs consumed per second.
2. DPO: herd's `run_dpo` (step times from its metrics.jsonl) vs TRL `DPOTrainer` with
   `precompute_ref_log_probs=True`, so both cache the reference log-probs before the first step. beta 0.1, plain
   sigmoid loss (herd's NLL term off). Chosen = the task's answer, rejected = a wrong one. Also vs herd at
   `--before` (its own loop, `herd.posttrain.stage.optimize`), unpacked from git into a temporary directory and
   imported from there by its worker process.
3. Reward model: herd's `run_rm` vs herd at `--before`, on the same pairs (Bradley-Terry, no edits). SFT is also
   run at `--before` (the Trainer it ran on changed in the move).
   `herd-foreach` is herd now with `optim.fused=false`: the AdamW implementation herd used before (foreach), so
   herd-foreach vs herd-before is the move alone and herd vs herd-foreach is the fused optimizer alone.
   herd, herd-foreach and herd at `--before` alternate over `--rounds` runs each (the order rotates every round)
   and their timed steps are pooled, so a drift in the machine's speed favours none.
4. Rejection sampling: `herd.posttrain.rejection.sample` (the batched Engine) vs `model.generate` with left padding,
   K samples per prompt, temperature 0.8, the same batch rows, float32 for both (herd's `herd rs` runs the float32
   master weights without autocast). Rows stop at the end-of-turn token in both.

Training runs bf16 autocast over float32 weights for both, AdamW (betas 0.9/0.95), no weight decay, clipping at 1.0,
no activation checkpointing (TRL's default turns it on; it is turned off here to match herd). herd and TRL both use
torch's fused AdamW (herd's optim.fused, transformers' default `adamw_torch_fused`); the setup times one step of
fused and foreach on the model's parameters, to show what that difference is worth. `--dtype float32` trains in
float32 everywhere, for CPUs without native bf16 matmul. Every measurement runs
in its own process (herd, then the peer, for each stage); the first step (or a first generation batch) is a warm-up
and not timed. Step times are wall times between consecutive step ends, so they include drawing the batch.

    .venv/bin/pip install -c constraints.txt trl==1.16.0          # the peer; not part of `make test`
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/posttrain.py
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/posttrain.py --steps 2 --batch-size 4 --prompts 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("sft", "dpo", "rm", "rs")
PEERS = {
    "sft": ("herd-foreach", "herd-before", "trl"),
    "dpo": ("herd-foreach", "herd-before", "trl"),
    "rm": ("herd-foreach", "herd-before"),
    "rs": ("transformers",),
}
ALTERNATING = ("herd", "herd-foreach", "herd-before")
"""Run --rounds times each, in an order that rotates every round; the others run once."""
BEFORE = "1014838"
"""The last commit before the reward model, DPO and PPO moved onto the pretraining Trainer."""


# ---------------------------------------------------------------------------------------------
# Setup (main process): the HF export and the data, shared by every worker


def prepare(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from herd.formats.load import load_pretrained
    from herd.posttrain.data import encode_prompt, sft_example, write_jsonl
    from herd.posttrain.stage import write_model
    from herd.posttrain.synth.tasks import make_tasks, task_dialog

    pretrained = load_pretrained()
    write_model(
        pretrained.model.args, pretrained.model.state_dict(), pretrained.tokenizer, work / "hf", dtype="float32"
    )
    rng = random.Random(a.seed)
    n_sft = 3 * (a.steps + 1) * a.batch_size  # herd may take more dialogs per step than the batch size
    n_dpo = (a.steps + 1) * a.dpo_batch_size
    items = make_tasks(rng, n_sft + n_dpo + a.prompts, split="train")
    sft, dpo, rs = items[:n_sft], items[n_sft : n_sft + n_dpo], items[n_sft + n_dpo :]
    write_jsonl(work / "sft.jsonl", [task_dialog(it) for it in sft])
    write_jsonl(work / "pairs.jsonl", [{"messages": it["messages"], "chosen": it["answer"],
                                        "rejected": wrong_answer(it, items, rng)} for it in dpo])  # fmt: skip
    write_jsonl(work / "prompts.jsonl", [{"messages": it["messages"]} for it in rs])
    prompt_ids = [encode_prompt(pretrained.tokenizer, it["messages"]) for it in rs]
    (work / "prompt_ids.json").write_text(json.dumps(prompt_ids))
    (work / "stop_ids.json").write_text(json.dumps(sorted(pretrained.tokenizer.stop_ids)))
    lengths = [len(sft_example(pretrained.tokenizer, task_dialog(it)["messages"])[0]) + 1 for it in sft]
    adamw = adamw_step_s(pretrained.model)
    return {"adamw_step_s": adamw, "sft_dialogs": n_sft, "dpo_pairs": n_dpo, "rs_prompts": a.prompts,
            "dialog_tokens_mean": round(statistics.mean(lengths), 1),
            "prompt_tokens_mean": round(statistics.mean(len(p) for p in prompt_ids), 1)}  # fmt: skip


def adamw_step_s(model: torch.nn.Module) -> dict[str, float]:
    """One AdamW step over the model's parameters with herd's (foreach, torch's default) and TRL's default
    (fused) implementation: median of 3 after a warm-up step."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for name, kw in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, **kw)
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t0)
        out[name] = round(statistics.median(times[1:]), 3)
    for p in params:
        p.grad = None
    return out


def wrong_answer(item: dict[str, Any], items: list[dict[str, Any]], rng: random.Random) -> str:
    """Off by a little for numbers; another item's answer of the same task otherwise."""
    answer = item["answer"]
    if answer.lstrip("-").isdigit():
        return str(int(answer) + rng.choice([-3, -2, -1, 1, 2, 3]))
    others = [it["answer"] for it in items if it["task"] == item["task"] and it["answer"] != answer]
    return rng.choice(others) if others else answer[::-1]


# ---------------------------------------------------------------------------------------------
# Workers: one measurement each, in a fresh process


SFT_SETTINGS = [
    "training.seq_len={max_length}", "training.batch_tokens={batch_tokens}", "optim.lr={lr}", "optim.weight_decay=0.0",
    "optim.grad_clip=1.0", "lr_schedule.warmup_steps=1", "lr_schedule.decay='linear'", "lr_schedule.min_lr_ratio=0.0",
    "checkpoint.interval=0", "metrics.tensorboard=false", "metrics.progress=false", "metrics.log_interval=0",
    "metrics.peak_tflops=1.0",
]  # fmt: skip


def sft_settings(a: argparse.Namespace) -> list[str]:
    return [x.format(max_length=a.max_length, batch_tokens=a.herd_rows * a.max_length, lr=a.lr) for x in SFT_SETTINGS]


def sft_herd(a: argparse.Namespace, work: Path, *, fused: bool = True) -> dict[str, Any]:
    """herd's SFT on the Trainer; `fused=False` is the AdamW herd used before optim.fused (foreach)."""
    from herd.config import load
    from herd.posttrain.sft import build_sft

    name = "herd" if fused else "herd-foreach"
    cfg = load("sft", None, [
        f"job.dump_folder='{work / f'{name}-sft-{a.round}'}'", f"data.files=['{work / 'sft.jsonl'}']",
        f"training.steps={a.steps + 1}", f"model.dtype='{a.dtype}'", f"optim.fused={str(fused).lower()}",
        *sft_settings(a),
    ])  # fmt: skip
    trainer, loader = build_sft(cfg)
    return timed_sft_steps(a, trainer, loader)


def sft_herd_before(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The same at commit --before, through its API of the time (its train config held [posttrain])."""
    from herd.train.config import TrainJobConfig  # type: ignore[import-not-found]  # the old tree's module

    from herd.config import load
    from herd.posttrain.sft import build_sft

    cfg = load(TrainJobConfig, None, [
        f"job.dump_folder='{work / f'herd-before-sft-{a.round}'}'", f"posttrain.sft_data=['{work / 'sft.jsonl'}']",
        f"training.steps={a.steps + 1}", f"training.dtype='{a.dtype}'", *sft_settings(a),
    ])  # fmt: skip
    trainer, loader = build_sft(cfg)
    return timed_sft_steps(a, trainer, loader)


def timed_sft_steps(a: argparse.Namespace, trainer, loader) -> dict[str, Any]:

    def consumed() -> int:
        return loader.epoch * len(loader.examples) + loader.pos

    times, samples = [], []
    for i in range(a.steps + 1):
        before, t0 = consumed(), time.perf_counter()
        trainer.train_step()
        if i:  # step 1 is the warm-up
            times.append(time.perf_counter() - t0)
            samples.append(consumed() - before)
    trainer.metrics.close()
    total = sum(times)
    return {"step_s": times, "samples_per_step": samples, "samples_per_s": sum(samples) / total,
            "tokens_per_step": a.herd_rows * a.max_length, "rows_per_step": a.herd_rows,
            "deterministic_algorithms": trainer.cfg.job.deterministic,
            "optim": adamw_kind(getattr(trainer.cfg.optim, "fused", False))}  # fmt: skip


def adamw_kind(fused: bool) -> str:
    return f"torch.optim.AdamW ({'fused' if fused else 'foreach'})"


def sft_trl(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    records = [json.loads(line) for line in (work / "sft.jsonl").read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])
    model, tok = load_hf(work)
    args = SFTConfig(
        output_dir=str(work / "trl-sft"), max_steps=a.steps + 1, per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=1, learning_rate=a.lr, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, adam_beta2=0.95, max_grad_norm=1.0, bf16=a.dtype == "bfloat16", use_cpu=True,
        gradient_checkpointing=False, packing=False, padding_free=False, completion_only_loss=True,
        max_length=a.max_length, report_to="none", save_strategy="no", logging_steps=10_000, disable_tqdm=True,
        dataloader_num_workers=0, seed=a.seed,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    shapes = record_batch_shapes(trainer)
    ends = step_ends(trainer)
    trainer.train()
    times = [t1 - t0 for t0, t1 in itertools.pairwise(ends)]
    tokens = [s[0] * s[1] for s in shapes[1 : a.steps + 1]]
    return {"step_s": times, "samples_per_step": [a.batch_size] * len(times),
            "samples_per_s": a.batch_size * len(times) / sum(times),
            "tokens_per_step": round(statistics.mean(tokens)) if tokens else None,
            "gradient_checkpointing": args.gradient_checkpointing, "optim": optim_name(args)}  # fmt: skip


def pairs_herd(stage: str, a: argparse.Namespace, work: Path, *, fused: bool = True) -> dict[str, Any]:
    """herd's `run_dpo` / `run_rm` on the one Trainer; pairs/s from the step times in its metrics.jsonl.
    `fused=False` is the move alone: the AdamW the old loop used (foreach), before optim.fused."""
    from herd.config import load
    from herd.posttrain.dpo import run_dpo
    from herd.posttrain.reward import run_rm

    run_dir = work / f"{'herd' if fused else 'herd-foreach'}-{stage}-{a.round}"
    cfg = load(stage, None, [
        f"job.dump_folder='{run_dir}'", f"job.seed={a.seed}", f"model.dtype='{a.dtype}'",
        f"data.files=['{work / 'pairs.jsonl'}']", "data.eval_fraction=0.0", f"training.seq_len={a.max_length}",
        f"optim.lr={a.lr}", "optim.weight_decay=0.0", f"optim.fused={str(fused).lower()}", "training.epochs=1",
        f"training.batch_size={a.dpo_batch_size}", f"training.micro_batch_size={a.dpo_batch_size}",
        "optim.grad_clip=1.0", "checkpoint.interval=0",
        "metrics.tensorboard=false", "metrics.progress=false", "metrics.log_interval=0", "metrics.peak_tflops=1.0",
        *(["dpo.beta=0.1", "dpo.nll_coef=0.0"] if stage == "dpo" else ["rm.margin_edited=false"]),
    ])  # fmt: skip
    summary = (run_dpo if stage == "dpo" else run_rm)(cfg)
    return _pair_times(run_dir, a, summary["steps"], fused=fused)


def pairs_herd_before(stage: str, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The same at commit --before, through its API of the time (herd is imported from that tree)."""
    from herd.posttrain import config as c  # type: ignore[attr-defined]  # the old tree's module
    from herd.posttrain.dpo import run_dpo
    from herd.posttrain.reward import run_rm

    run_dir = work / f"herd-before-{stage}-{a.round}"
    common = {"job": c.JobSection(dump_folder=str(run_dir), seed=a.seed), "model": c.ModelSection(dtype=a.dtype),
              "data": c.DataSection(train=[str(work / "pairs.jsonl")], eval_fraction=0.0, max_seq_len=a.max_length),
              "optim": c.OptimSection(lr=a.lr, weight_decay=0.0, epochs=1.0, batch_size=a.dpo_batch_size,
                                      micro_batch_size=a.dpo_batch_size, grad_clip=1.0)}  # fmt: skip
    if stage == "dpo":
        summary = run_dpo(c.DPOJobConfig(**common, dpo=c.DPOSection(beta=0.1, nll_coef=0.0)))
    else:
        summary = run_rm(c.RewardJobConfig(**common, rm=c.RewardSection(margin_edited=False)))
    return _pair_times(run_dir, a, summary["steps"], fused=False)


def _pair_times(run_dir: Path, a: argparse.Namespace, steps: int, *, fused: bool) -> dict[str, Any]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_s"] for r in records if r["step"] > 1]  # step 1 is the warm-up
    return {"step_s": times, "pairs_per_s": a.dpo_batch_size * len(times) / sum(times), "steps": steps,
            "optim": adamw_kind(fused)}  # fmt: skip


def dpo_trl(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    records = [json.loads(line) for line in (work / "pairs.jsonl").read_text().splitlines()]

    def reply(text: str) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": text}]

    ds = Dataset.from_list([{"prompt": r["messages"], "chosen": reply(r["chosen"]), "rejected": reply(r["rejected"])}
                            for r in records])  # fmt: skip
    model, tok = load_hf(work)
    args = DPOConfig(
        output_dir=str(work / "trl-dpo"), max_steps=a.steps + 1, per_device_train_batch_size=a.dpo_batch_size,
        gradient_accumulation_steps=1, learning_rate=a.lr, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, adam_beta2=0.95, max_grad_norm=1.0, bf16=a.dtype == "bfloat16", use_cpu=True,
        gradient_checkpointing=False, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True,
        precompute_ref_batch_size=a.dpo_batch_size, max_length=a.max_length, report_to="none", save_strategy="no",
        logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0, seed=a.seed,
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    setup_s = time.perf_counter() - t0
    ends = step_ends(trainer)
    trainer.train()
    times = [t1 - t0 for t0, t1 in itertools.pairwise(ends)]
    return {"step_s": times, "pairs_per_s": a.dpo_batch_size * len(times) / sum(times),
            "init_with_reference_pass_s": round(setup_s, 2), "optim": optim_name(args)}  # fmt: skip


def rs_herd(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from herd.formats.load import load_pretrained
    from herd.posttrain.rejection import sample

    pretrained = load_pretrained(dtype=torch.float32)
    model, tok = pretrained.model.eval(), pretrained.tokenizer
    prompts = [json.loads(line)["messages"] for line in (work / "prompts.jsonl").read_text().splitlines()]
    kw = {"k": a.samples, "temperature": 0.8, "top_p": 1.0, "max_new_tokens": a.max_new_tokens,
          "batch_size": a.gen_batch_size}  # fmt: skip
    sample(model, tok, prompts[: max(1, a.gen_batch_size // a.samples)], seed=a.seed + 1, **kw)  # warm-up batch
    _, tokens, seconds = sample(model, tok, prompts, seed=a.seed, **kw)
    n = len(prompts) * a.samples
    return {"seconds": seconds, "samples": n, "tokens": tokens, "samples_per_s": n / seconds,
            "tokens_per_s": tokens / seconds, "dtype": "float32"}  # fmt: skip


def rs_transformers(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    model, _ = load_hf(work)
    model.eval()
    prompt_ids = json.loads((work / "prompt_ids.json").read_text())
    stop_ids = json.loads((work / "stop_ids.json").read_text())
    rows = [p for p in prompt_ids for _ in range(a.samples)]  # rows of one prompt share a batch, as in herd
    pad = stop_ids[-1]

    def generate(batch: list[list[int]]) -> int:
        P = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (P - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.8, top_p=1.0,
                                 top_k=0, max_new_tokens=a.max_new_tokens, eos_token_id=stop_ids,
                                 pad_token_id=pad)  # fmt: skip
        count = 0
        for row in out[:, P:].tolist():  # up to and including the first stop token, as herd counts
            stop = next((i for i, t in enumerate(row) if t in stop_ids), None)
            count += len(row) if stop is None else stop + 1
        return count

    torch.manual_seed(a.seed + 1)
    generate(rows[: a.gen_batch_size])  # warm-up batch
    torch.manual_seed(a.seed)
    tokens, t0 = 0, time.perf_counter()
    for start in range(0, len(rows), a.gen_batch_size):
        tokens += generate(rows[start : start + a.gen_batch_size])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "samples": len(rows), "tokens": tokens, "samples_per_s": len(rows) / seconds,
            "tokens_per_s": tokens / seconds, "dtype": str(model.dtype).removeprefix("torch.")}  # fmt: skip


def load_hf(work: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "hf")
    model = AutoModelForCausalLM.from_pretrained(work / "hf", dtype=torch.float32)
    return model, tok


def optim_name(args) -> str:
    return str(getattr(args.optim, "value", args.optim))


def step_ends(trainer) -> list[float]:
    """Wall-clock time at the end of every optimizer step of a transformers Trainer."""
    from transformers import TrainerCallback

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    trainer.add_callback(Clock())
    return ends


def record_batch_shapes(trainer) -> list[tuple[int, ...]]:
    """Shapes of the input_ids the collator builds (padding included)."""
    shapes: list[tuple[int, ...]] = []
    collate = trainer.data_collator

    def wrapped(examples):
        batch = collate(examples)
        shapes.append(tuple(batch["input_ids"].shape))
        return batch

    trainer.data_collator = wrapped
    return shapes


WORKERS = {
    ("sft", "herd"): sft_herd, ("sft", "herd-before"): sft_herd_before, ("sft", "trl"): sft_trl,
    ("dpo", "trl"): dpo_trl, ("rs", "herd"): rs_herd,
    ("rs", "transformers"): rs_transformers,
    ("sft", "herd-foreach"): partial(sft_herd, fused=False),
    **{(stage, "herd"): partial(pairs_herd, stage) for stage in ("dpo", "rm")},
    **{(stage, "herd-foreach"): partial(pairs_herd, stage, fused=False) for stage in ("dpo", "rm")},
    **{(stage, "herd-before"): partial(pairs_herd_before, stage) for stage in ("dpo", "rm")},
}  # fmt: skip


def worker(a: argparse.Namespace) -> None:
    torch.set_num_threads(a.threads)
    stage, framework = a.worker.split(":")
    work = Path(a.work)
    result: dict[str, Any] = {"stage": stage, "framework": framework, "threads": torch.get_num_threads()}
    try:
        result.update(WORKERS[stage, framework](a, work))
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc().splitlines()[-12:]
    (work / f"result-{stage}-{framework}-{a.round}.json").write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Main: set up, run each worker in its own process, collect and print


def run_worker(stage: str, framework: str, rnd: int, argv: list[str], env: dict[str, str], before: Path,
               work: Path) -> dict[str, Any]:  # fmt: skip
    """One measurement in its own process; its result, or the error it died with."""
    t0, load_before = time.perf_counter(), os.getloadavg()[0]
    log = work / f"log-{stage}-{framework}-{rnd}.txt"
    # The old tree goes first on the path, so its worker imports that herd instead of this one.
    run_env = {**env, "PYTHONPATH": str(before)} if framework == "herd-before" else env
    with open(log, "w") as f:
        subprocess.run([sys.executable, __file__, *argv, "--worker", f"{stage}:{framework}", "--round", str(rnd)],
                       env=run_env, stdout=f, stderr=subprocess.STDOUT, check=False)  # fmt: skip
    path = work / f"result-{stage}-{framework}-{rnd}.json"
    if path.is_file():
        r = json.loads(path.read_text())
    else:  # the process died before it could write a result
        tail = log.read_text(errors="replace").splitlines()[-12:]
        r = {"framework": framework, "threads": None, "error": tail[-1] if tail else "no output", "traceback": tail}
    r["process_s"] = round(time.perf_counter() - t0, 1)
    r["load_avg_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return r


def merge_rounds(runs: list[dict[str, Any]], a: argparse.Namespace) -> dict[str, Any]:
    """One result from several rounds of the same measurement: all their timed steps together."""
    if len(runs) == 1 or any("error" in r for r in runs):
        return next((r for r in runs if "error" in r), runs[0])
    times = [t for r in runs for t in r["step_s"]]
    if "samples_per_step" in runs[0]:  # SFT: dialogs per step vary with the packing
        samples = [n for r in runs for n in r["samples_per_step"]]
        return {**runs[0], "step_s": times, "samples_per_step": samples, "samples_per_s": sum(samples) / sum(times),
                "samples_per_s_rounds": [round(r["samples_per_s"], 3) for r in runs]}  # fmt: skip
    return {**runs[0], "step_s": times, "pairs_per_s": a.dpo_batch_size * len(times) / sum(times),
            "pairs_per_s_rounds": [round(r["pairs_per_s"], 3) for r in runs]}  # fmt: skip


def unpack(revision: str, dest: Path) -> Path:
    """herd's source at `revision`, from git into `dest` (nothing is installed: it is imported from there)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "herd"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "trl", "accelerate", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def herd_commit() -> str:
    """HEAD, marked when herd/ has changes git has not committed (the measured code is then not that commit)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "herd"], capture_output=True, text=True).stdout.strip()
    return f"{head} with uncommitted changes to herd/" if dirty else head


def cpu_model() -> str:
    """The CPU's model name and whether it has native bf16 matmul (bf16 timings mean little without it)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = {"avx512_bf16", "amx_bf16"} & set(info.split())
    return f"{name} ({', '.join(sorted(flags)) or 'no native bf16'})"


def summarize(stage: str, r: dict[str, Any]) -> dict[str, Any]:
    row = {"stage": stage, "framework": r["framework"], "threads": r["threads"]}
    if "error" in r:
        return {**row, "error": r["error"], "traceback": r["traceback"]}
    if stage == "sft":
        row.update(samples_per_s=round(r["samples_per_s"], 3), step_s_median=round(statistics.median(r["step_s"]), 3),
                   samples_per_step=r["samples_per_step"], tokens_per_step=r["tokens_per_step"])  # fmt: skip
    elif stage in ("dpo", "rm"):
        row.update(pairs_per_s=round(r["pairs_per_s"], 3), step_s_median=round(statistics.median(r["step_s"]), 3))
    else:
        row.update(samples_per_s=round(r["samples_per_s"], 3), tokens_per_s=round(r["tokens_per_s"], 1),
                   seconds=round(r["seconds"], 2), samples=r["samples"], tokens=r["tokens"],
                   tokens_per_sample=round(r["tokens"] / r["samples"], 1), dtype=r["dtype"])  # fmt: skip
    extra = {k: v for k, v in r.items() if k not in row and k not in ("stage", "samples_per_s", "pairs_per_s")}
    extra["step_s"] = [round(t, 3) for t in r.get("step_s", [])] or None
    return {**row, **{k: v for k, v in extra.items() if v is not None}}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| stage | framework | throughput | median step s | tokens/s | herd / this |", "|---|---|---|---|---|---|"]
    for stage in STAGES:
        rows = {r["framework"]: r for r in results if r["stage"] == stage}
        herd = rows.get("herd")
        for name in ("herd", *PEERS[stage]):
            r = rows.get(name)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {stage} | {name} | failed: `{r['error'][:160]}` | | | |")
                continue
            key, unit = ("pairs_per_s", "pairs/s") if stage in ("dpo", "rm") else ("samples_per_s", "samples/s")
            ratio = ""
            if name != "herd" and herd is not None and "error" not in herd:
                ratio = f"**{herd[key] / r[key]:.2f}x**"
                if stage == "rs":
                    ratio += f" ({herd['tokens_per_s'] / r['tokens_per_s']:.2f}x tok/s)"
            step = r.get("step_s_median", "")
            toks = f"{r['tokens_per_s']:.1f}" if stage == "rs" else ""
            lines.append(f"| {stage} | {name} | {r[key]:.2f} {unit} | {step} | {toks} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps for SFT and DPO (after 1 warm-up)")
    p.add_argument("--batch-size", type=int, default=16, help="SFT dialogs per step (TRL's per-device batch)")
    p.add_argument("--herd-rows", type=int, default=0,
                   help="herd's SFT rows of --max-length tokens per step; 0 sizes them to hold about --batch-size "
                        "dialogs")  # fmt: skip
    p.add_argument("--dpo-batch-size", type=int, default=8, help="DPO and reward-model pairs per step")
    p.add_argument("--before", default=BEFORE, help="git revision of herd to compare DPO and the reward model with")
    p.add_argument("--max-length", type=int, default=256, help="max sequence length (herd's SFT row length)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--prompts", type=int, default=32, help="rejection sampling: prompts")
    p.add_argument("--samples", type=int, default=4, help="rejection sampling: samples per prompt (K)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--gen-batch-size", type=int, default=16)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                   help="training precision for every framework: bf16 autocast over float32 weights, or float32 "
                        "(for CPUs without native bf16 matmul, where bf16 runs hundreds of times slower)")  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "posttrain.json"))
    p.add_argument("--note", default="", help="stored in the results' meta (e.g. what else ran on the machine)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds of herd, herd-foreach and herd-before (sft, dpo, rm)")  # fmt: skip
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="herd-bench-posttrain-"))
    t_start = time.perf_counter()
    try:
        data = prepare(a, work)
        if not a.herd_rows:  # whole dialogs per row x rows ~ the batch size
            per_row = max(1, int(a.max_length // data["dialog_tokens_mean"]))
            a.herd_rows = max(1, round(a.batch_size / per_row))
        print(f"data: {data}; herd SFT rows per step: {a.herd_rows} x {a.max_length}", flush=True)
        results = []
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
        argv = [*sys.argv[1:], "--herd-rows", str(a.herd_rows), "--work", str(work)]
        before = unpack(a.before, work / "herd-before-src")
        for stage in a.stages.split(","):
            # herd's variants alternate over --rounds rounds (the order rotates each round), so that a drift in
            # the machine's speed does not favour one; the peers run once.
            order = [f for f in ALTERNATING if f == "herd" or f in PEERS[stage]]
            runs: dict[str, list[dict[str, Any]]] = {}
            for rnd in range(a.rounds if len(order) > 1 else 1):
                for framework in order[rnd % len(order) :] + order[: rnd % len(order)]:
                    runs.setdefault(framework, []).append(run_worker(stage, framework, rnd, argv, env, before, work))
            for framework in PEERS[stage]:
                if framework not in ALTERNATING:
                    runs[framework] = [run_worker(stage, framework, 0, argv, env, before, work)]
            for framework, rs in runs.items():
                row = summarize(stage, merge_rounds(rs, a))
                row["process_s"] = [r["process_s"] for r in rs]
                # 1-minute load averages around each worker: well above --threads means another job shared the CPU
                row["load_avg_before_after"] = [r["load_avg_before_after"] for r in rs]
                results.append(row)
                print(f"{stage:4} {framework:13} {row.get('error') or {k: row.get(k) for k in THROUGHPUT}}"
                      f"  ({row['process_s']} s)", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
        "threads": a.threads, "versions": versions(), "model": "smollm2-135m-instruct (embedded GGUF Q4_1, float32)",
        "settings": {k: getattr(a, k) for k in ("steps", "batch_size", "herd_rows", "dpo_batch_size", "max_length",
                                                 "lr", "prompts", "samples", "max_new_tokens", "gen_batch_size",
                                                 "seed", "rounds")},
        "cpu": cpu_model(), "herd_commit": herd_commit(),
        "train_precision": ("bf16 autocast over float32 weights (both)" if a.dtype == "bfloat16"
                            else "float32 (both)"),
        "dpo": "beta 0.1, sigmoid loss, no NLL term",
        "before": a.before,
        "data": data, "total_s": round(time.perf_counter() - t_start, 1), "note": a.note,
    }  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print("\n" + table(results))


THROUGHPUT = ("samples_per_s", "pairs_per_s", "tokens_per_s", "step_s_median")

if __name__ == "__main__":
    main()
