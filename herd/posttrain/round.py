"""`herd round`: one Llama 3-style post-training round, end to end, with held-out metrics before and after.

    synth (tool dialogs, tasks, probed facts, fact pairs) -> eval(start) -> SFT -> reward model (from the SFT
    model, on synth's preference pairs) -> rejection sampling from the SFT model (K samples per prompt, ranked by
    their checkers and the reward model; best kept, best-vs-worst pairs) -> DPO from the SFT model on those pairs
    and synth's -> eval(SFT), eval(DPO) [-> model averaging of SFT and DPO -> eval(average), with round.average]

Llama 3's order: the reward model is trained before rejection sampling, which ranks with it. Each stage reads its
hyperparameters from its own config file (`round.*_config`); the round composes them in Python, setting only
where each reads and writes (run directories under job.dump_folder, init_from, data files). Finished stages are
skipped when the round is run again (their summary.json / model directory is there), and a stage killed midway
resumes from its last checkpoint, so an interrupted round resumes where it was.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from herd.config import JobConfig, check, load, save
from herd.posttrain.stage import write_json
from herd.posttrain.synth import evaluate, run_synth
from herd.train.metrics import native_bf16

EVAL_METRICS = (
    ("tool_call_valid", "tool-call validity"),
    ("tool_call_right_tool", "valid call of the right tool"),
    ("fact_unanswerable_refused", "refusals, unanswerable questions (up is good)"),
    ("fact_answerable_refused", "refusals, answerable questions (down is good)"),
    ("fact_answerable_correct", "correct answers, answerable questions"),
    ("fact_knew_refused", "refusals, closed-book questions the start knew (down is good)"),
    ("fact_knew_correct", "correct answers, closed-book questions the start knew"),
    ("task_accuracy", "verifiable-task accuracy"),
)


STAGES = ("sft", "rm", "rs", "dpo")


def stage_configs(cfg: JobConfig) -> dict[str, JobConfig]:
    """Each stage's config from its file (round.sft_config ...); read up front, so a typo fails in the first second."""
    r = cfg.round
    paths = {"sft": r.sft_config, "rm": r.rm_config, "rs": r.rs_config, "dpo": r.dpo_config}
    return {name: load(name, paths[name]) for name in STAGES}


def wire(command: str, stage: JobConfig, *, run_dir: Path, init_from: str, files: list[str], **rs: Any) -> JobConfig:
    """`stage` reading `files`, starting from `init_from` and writing into `run_dir` (and rs's reward model),
    checked as `herd <command>` checks its config."""
    out = replace(stage, job=replace(stage.job, dump_folder=str(run_dir)),
                  model=replace(stage.model, init_from=init_from), data=replace(stage.data, files=files))  # fmt: skip
    out = replace(out, rs=replace(out.rs, **rs)) if rs else out
    check(out, command)
    return out


def run_round(cfg: JobConfig, stages: dict[str, JobConfig] | None = None) -> dict[str, Any]:
    """`stages` replaces the stage configs read from round.*_config (composition from Python)."""
    from herd.formats import load_pretrained
    from herd.posttrain.dpo import run_dpo
    from herd.posttrain.rejection import run_rs
    from herd.posttrain.reward import run_rm
    from herd.posttrain.sft import run_sft
    from herd.train.average import average_to

    r, init_from = cfg.round, cfg.model.init_from
    root = Path(cfg.job.dump_folder)
    root.mkdir(parents=True, exist_ok=True)
    stages = stages or stage_configs(cfg)
    save(cfg, "round", root / "config.toml")
    times: dict[str, float] = {}
    t_round = time.perf_counter()

    def timed(name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"[round] {name}: {times[name]:.0f}s", flush=True)
        return out

    def for_sampling(model: str):
        # Probing and evaluation decode on bf16 weights where the CPU has native bf16 (about twice the speed of
        # float32); elsewhere torch's bf16 fallback is the slower one.
        return load_pretrained(model, dtype=torch.bfloat16 if native_bf16(torch.device("cpu")) else torch.float32)

    start = None  # loaded only for what a resumed round still has to do
    synth_dir = root / "synth"
    if not (synth_dir / "summary.json").is_file():
        start = for_sampling(init_from)
        synth_cfg = replace(cfg, job=replace(cfg.job, dump_folder=str(synth_dir)))
        timed("synth", run_synth, synth_cfg, model=start.model, tokenizer=start.tokenizer)
    items = [json.loads(line) for line in (synth_dir / "eval.jsonl").read_text().splitlines()]
    results: dict[str, dict[str, Any]] = {}

    def eval_model(name: str, model: str, loaded=None) -> None:
        path = root / f"eval_{name}.json"
        if not path.is_file():
            loaded = loaded or for_sampling(model)
            metrics = timed(f"eval {name}", evaluate, loaded.model, loaded.tokenizer, items,
                            max_new_tokens=r.eval_max_new_tokens, batch_size=cfg.synth.batch_size)  # fmt: skip
            write_json(path, metrics)
        results[name] = json.loads(path.read_text())

    eval_model("start", init_from, start)
    del start

    def stage(name: str, run, stage_cfg: JobConfig) -> Path:
        out_dir = Path(stage_cfg.job.dump_folder)
        if not (out_dir / "summary.json").is_file():
            timed(name, run, stage_cfg)
        return out_dir

    sft = stage("sft", run_sft, wire("sft", stages["sft"], run_dir=root / "sft", init_from=init_from,
                                     files=[str(synth_dir / "sft.jsonl")]))  # fmt: skip
    # The reward model learns from synth's fact pairs (refusal > wrong answer where the model does not know,
    # answer > refusal where it does), then ranks rejection samples together with each prompt's checker.
    rm = stage("rm", run_rm, wire("rm", stages["rm"], run_dir=root / "rm", init_from=str(sft / "model"),
                                  files=[str(synth_dir / "pairs.jsonl")]))  # fmt: skip
    rs = stage("rs", run_rs, wire("rs", stages["rs"], run_dir=root / "rs", init_from=str(sft / "model"),
                                  files=[str(synth_dir / "prompts.jsonl")],
                                  reward_model=str(rm / "model")))  # fmt: skip
    # Rejection-sampled pairs plus the fact pairs synth wrote in both directions, without which DPO learns only to
    # refuse more.
    dpo = stage("dpo", run_dpo, wire("dpo", stages["dpo"], run_dir=root / "dpo", init_from=str(sft / "model"),
                                     files=[str(rs / "rs_pairs.jsonl"), str(synth_dir / "pairs.jsonl")]))  # fmt: skip
    for name, path in (("sft", sft / "model"), ("dpo", dpo / "model")):
        eval_model(name, str(path))
    if r.average:
        averaged = root / "average"
        if not averaged.is_dir():
            timed("average", average_to, [sft / "model", dpo / "model"], averaged, to="hf")
        eval_model("average", str(averaged))

    summary = {"metrics": {name: {k: v for k, v in m.items() if k != "responses"} for name, m in results.items()},
               "seconds": times, "total_s": round(time.perf_counter() - t_round, 1),
               "rm": _summary(rm), "dpo": _summary(dpo), "rs": _summary(rs), "synth": _summary(synth_dir)}  # fmt: skip
    write_json(root / "round.json", summary)
    return summary


def _summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def format_done(summary: dict[str, Any]) -> str:
    """How long each stage took, the reward model's and rejection sampling's figures, and the metrics table."""
    s = summary
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in s["seconds"].items())
    lines = [f"round done in {s['total_s']:.0f}s (stages: {stages})"]
    if s["rm"]:
        lines.append(f"reward model: held-out pairwise accuracy {s['rm']['held_out_accuracy_before']:.3f} -> "
                     f"{s['rm']['held_out_accuracy_after']:.3f} on {s['rm']['held_out_pairs']} pairs")  # fmt: skip
    if "rm_checker_agreement" in s["rs"]:
        lines.append(f"rejection sampling: the reward model orders {s['rs']['rm_checker_agreement']:.3f} of "
                     f"{s['rs']['rm_checker_pairs']} sample pairs as the checkers do")  # fmt: skip
    return "\n".join([*lines, format_round(s)])


def format_round(summary: dict[str, Any]) -> str:
    """The before/after table of the held-out metrics."""
    names = list(summary["metrics"])
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label in EVAL_METRICS:
        row = [summary["metrics"][n].get(key) for n in names]
        if all(v is None for v in row):
            continue
        count = next(summary["metrics"][n]["counts"].get(key) for n in names)
        cells = ["-" if v is None else f"{v:.3f}" for v in row]
        lines.append(f"| {label} (n={count}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)
