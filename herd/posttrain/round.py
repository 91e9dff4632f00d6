"""`herd round`: one Llama 3-style post-training round, end to end, with held-out metrics before and after.

    synth (tool dialogs, tasks, probed facts, fact pairs) -> eval(start) -> SFT -> rejection sampling from the
    SFT model (K samples per prompt, scored by their checkers; best kept, best-vs-worst pairs) -> reward model on
    those pairs and the fact pairs -> DPO from the SFT model on the same -> eval(SFT), eval(DPO)
    [-> model averaging of SFT and DPO -> eval(average), with round.average]

Each stage reads its hyperparameters from its own config file (`round.*_config`); the round only wires the
artifacts between them (data files, init_from, run directories under `round.dump_folder`). Finished stages are
skipped when the round is run again (their summary.json / model directory is there), so an interrupted round
resumes at the stage it was in.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from herd.config import load
from herd.posttrain.stage import write_json
from herd.posttrain.synth import SynthSection, evaluate, run_synth

EVAL_METRICS = (
    ("tool_call_valid", "tool-call validity"),
    ("tool_call_right_tool", "valid call of the right tool"),
    ("fact_unanswerable_refused", "refusals, unanswerable questions (up is good)"),
    ("fact_answerable_refused", "refusals, answerable questions (down is good)"),
    ("fact_answerable_correct", "correct answers, answerable questions"),
    ("task_accuracy", "verifiable-task accuracy"),
)


@dataclass(kw_only=True, slots=True)
class RoundSection:
    dump_folder: str = "runs/round"
    init_from: str = ""
    """The model the round starts from: empty for the embedded smollm2-135m-instruct, an HF/Meta dir or a .gguf."""
    seed: int = 0
    sft_config: str = "configs/posttrain/sft.toml"
    rs_config: str = "configs/posttrain/rs.toml"
    rm_config: str = "configs/posttrain/rm.toml"
    dpo_config: str = "configs/posttrain/dpo.toml"
    eval_max_new_tokens: int = 48
    average: bool = False
    """Also average the SFT and DPO models (`herd ckpt average`) and evaluate the average. Off by default: on the
    shipped round the average takes back part of what DPO's answer-over-refusal pairs fixed (README)."""


@dataclass(kw_only=True, slots=True)
class RoundJobConfig:
    round: RoundSection = field(default_factory=RoundSection)
    synth: SynthSection = field(default_factory=SynthSection)


def run_round(cfg: RoundJobConfig) -> dict[str, Any]:
    from herd.formats.load import load_pretrained
    from herd.posttrain.config import DPOJobConfig, RejectionJobConfig, RewardJobConfig
    from herd.posttrain.dpo import run_dpo
    from herd.posttrain.rejection import run_rs
    from herd.posttrain.reward import run_rm
    from herd.posttrain.sft import run_sft
    from herd.train.average import average_to
    from herd.train.config import TrainJobConfig

    r = cfg.round
    root = Path(r.dump_folder)
    root.mkdir(parents=True, exist_ok=True)
    # Stage configs are read up front, so a typo fails the round in its first second.
    stage_cfgs = {
        "sft": load(TrainJobConfig, r.sft_config), "rs": load(RejectionJobConfig, r.rs_config),
        "rm": load(RewardJobConfig, r.rm_config), "dpo": load(DPOJobConfig, r.dpo_config),
    }  # fmt: skip
    times: dict[str, float] = {}
    t_round = time.perf_counter()

    def timed(name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"[round] {name}: {times[name]:.0f}s", flush=True)
        return out

    def for_sampling(model: str):
        # Probing and evaluation decode on bf16 weights: about twice the speed of float32 on CPU.
        return load_pretrained(model or None, dtype=torch.bfloat16)

    start = None  # loaded only for what a resumed round still has to do
    synth_dir = root / "synth"
    if not (synth_dir / "summary.json").is_file():
        start = for_sampling(r.init_from)
        s = cfg.synth
        s.output, s.model, s.seed = str(synth_dir), r.init_from, r.seed
        timed("synth", run_synth, s, model=start.model, tokenizer=start.tokenizer)
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

    eval_model("start", r.init_from, start)
    del start

    def stage(name: str, cfg_obj, run, updates: dict[str, Any]) -> Path:
        out_dir = root / name
        if not (out_dir / "model").is_dir() and not (out_dir / "summary.json").is_file():
            for key, value in updates.items():
                section, attr = key.split(".")
                setattr(getattr(cfg_obj, section), attr, value)
            timed(name, run, cfg_obj)
        return out_dir

    sft = stage("sft", stage_cfgs["sft"], run_sft, {
        "job.dump_folder": str(root / "sft"), "posttrain.init_from": r.init_from,
        "posttrain.sft_data": [str(synth_dir / "sft.jsonl")],
    })  # fmt: skip
    rs = stage("rs", stage_cfgs["rs"], run_rs, {
        "job.dump_folder": str(root / "rs"), "model.init_from": str(sft / "model"),
        "data.train": [str(synth_dir / "prompts.jsonl")], "rs.output": str(root / "rs" / "rs.jsonl"),
    })  # fmt: skip
    # Rejection-sampled pairs plus the fact pairs synth wrote in both directions (refusal > wrong answer, answer >
    # refusal), without which DPO learns only to refuse more.
    pairs = [str(rs / "rs_pairs.jsonl"), str(synth_dir / "pairs.jsonl")]
    stage("rm", stage_cfgs["rm"], run_rm, {
        "job.dump_folder": str(root / "rm"), "model.init_from": str(sft / "model"), "data.train": pairs,
    })  # fmt: skip
    dpo = stage("dpo", stage_cfgs["dpo"], run_dpo, {
        "job.dump_folder": str(root / "dpo"), "model.init_from": str(sft / "model"), "data.train": pairs,
    })  # fmt: skip
    for name, path in (("sft", sft / "model"), ("dpo", dpo / "model")):
        eval_model(name, str(path))
    if r.average:
        averaged = root / "average"
        if not averaged.is_dir():
            timed("average", average_to, [sft / "model", dpo / "model"], averaged, to="hf")
        eval_model("average", str(averaged))

    summary = {"metrics": {name: {k: v for k, v in m.items() if k != "responses"} for name, m in results.items()},
               "seconds": times, "total_s": round(time.perf_counter() - t_round, 1),
               "rm": _summary(root / "rm"), "dpo": _summary(root / "dpo"), "rs": _summary(root / "rs"),
               "synth": _summary(synth_dir)}  # fmt: skip
    write_json(root / "round.json", summary)
    return summary


def _summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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
