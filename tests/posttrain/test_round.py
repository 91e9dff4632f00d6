"""The direction of a post-training round, on the real embedded SmolLM2-135M-Instruct at a size CI can afford:
`herd round` end to end (synth -> SFT -> reward model -> rejection sampling -> DPO) on about 120 checked
dialogs moves the held-out metrics it reports the right way.

At this size the held-out facts are a handful per family and bf16 numerics differ between machines, so the
refusal rate of unanswerable questions after DPO moves by several items between settings and machines. Measured
on one machine (2026-12-06): 0.267 of 15 with these settings, 0.333 with the same settings at the commit before
the one-Trainer move, 0.467 and 0.333 with DPO at lr 2e-5 and 3e-5 for 2 epochs, 0.226 of 31 with lr 2e-5 for 2
epochs and twice the held-out facts; an earlier session measured above 0.4. The test asserts a rise of at least
0.2 from the start (which refuses nothing), and that answerable questions are not refused more or answered worse.

The stages train in bf16, as the shipped configs do, where the CPU has native bf16 matmul; elsewhere (an AVX2-only
CPU) in float32, since torch's fallback bf16 kernel would take hours here."""

import json
from dataclasses import replace

import pytest
import torch

from herd.config import JobConfig, defaults, load
from herd.posttrain.round import format_round, run_round, stage_configs
from herd.train.metrics import native_bf16

DTYPE = "bfloat16" if native_bf16(torch.device("cpu")) else "float32"
QUIET = {"metrics": {"log_interval": 0, "tensorboard": False, "peak_tflops": 1.0}}
STAGES = {
    "sft": {"model": {"dtype": DTYPE}, "optim": {"lr": 1e-4, "weight_decay": 0.0},
            "lr_schedule": {"warmup_steps": 1, "decay": "linear", "min_lr_ratio": 0.0},
            "training": {"steps": 10, "seq_len": 512, "batch_tokens": 4096}, "checkpoint": {"interval": 10}, **QUIET},
    "rs": {"model": {"dtype": DTYPE}, "rs": {"samples": 4, "temperature": 0.8, "max_new_tokens": 32}},
    "rm": {"model": {"dtype": DTYPE}, "data": {"eval_fraction": 0.2}, "optim": {"lr": 2e-5},
           "training": {"batch_size": 8, "micro_batch_size": 8}, **QUIET},
    "dpo": {"model": {"dtype": DTYPE}, "data": {"eval_fraction": 0.1}, "optim": {"lr": 1e-5},
            "training": {"batch_size": 8, "micro_batch_size": 8}, "dpo": {"beta": 0.1, "nll_coef": 0.2}, **QUIET},
}  # fmt: skip


def compose(command: str, sections: dict) -> JobConfig:
    """`command`'s defaults with these sections changed: a stage config built in Python, as the round builds its
    own."""
    cfg = defaults(command)
    for name, values in sections.items():
        cfg = replace(cfg, **{name: replace(getattr(cfg, name), **values)})
    return cfg


@pytest.mark.slow
@pytest.mark.timeout(1800)  # in float32 (a CPU without native bf16) the round outlasts the default 600 s
def test_a_small_round_raises_tool_validity_and_refusals_without_refusing_answerable_questions(tmp_path) -> None:
    overrides = [f"job.dump_folder='{tmp_path / 'round'}'", "round.eval_max_new_tokens=40"]
    overrides += ["synth.tool_dialogs=40", "synth.max_tools=1", "synth.tasks=40", "synth.rs_prompts=16",
                  "synth.facts=24", "synth.fact_samples=2", "synth.fact_fictitious=0.25", "synth.max_new_tokens=24",
                  "synth.eval_tools=8", "synth.eval_tasks=8", "synth.eval_facts=16"]  # fmt: skip
    # The reference-data families (the default before issue 21's everyday ones): the start knows none of them, so
    # this checks the mechanics (refuse where there is nothing to go on, read the snippet where it is given). On the
    # everyday default, DPO still refuses some questions the start knew (README, issue 21 open).
    families = ["http_status", "html_entity", "unicode_name", "errno", "mime_type", "month"]
    overrides.append(f"synth.fact_families={json.dumps(families)}")
    summary = run_round(load("round", None, overrides), {name: compose(name, v) for name, v in STAGES.items()})
    table = format_round(summary)
    print(table)
    before, after = summary["metrics"]["start"], summary["metrics"]["dpo"]
    assert after["tool_call_valid"] >= 0.5 and after["tool_call_valid"] > before["tool_call_valid"], table
    # Refusals rise where there is nothing to go on, and not where the answer is in the prompt or known.
    assert after["fact_unanswerable_refused"] - before["fact_unanswerable_refused"] >= 0.2, table
    assert after["fact_answerable_refused"] <= before["fact_answerable_refused"], table
    assert after["fact_answerable_correct"] >= before["fact_answerable_correct"], table
    assert after["task_accuracy"] >= before["task_accuracy"], table
    pairs = (tmp_path / "round" / "synth" / "pairs.jsonl").read_text().splitlines()
    assert pairs and all(json.loads(p)["chosen"] != json.loads(p)["rejected"] for p in pairs)


def test_the_shipped_round_config_loads_with_its_stage_configs() -> None:
    from pathlib import Path

    root = Path(__file__).parents[2]
    cfg = load("round", root / "configs" / "posttrain" / "round.toml")
    cfg = replace(cfg, round=replace(cfg.round, **{f"{name}_config": str(root / getattr(cfg.round, f"{name}_config"))
                                                   for name in ("sft", "rm", "rs", "dpo")}))  # fmt: skip
    stages = stage_configs(cfg)
    assert stages["rs"].rs.samples == 4 and stages["dpo"].dpo.beta == 0.1 and stages["sft"].training.steps == 20
