"""The direction of a post-training round, on the real embedded SmolLM2-135M-Instruct at a size CI can afford:
SFT on checked synthetic data moves the held-out metrics the round reports the right way."""

import random

import pytest

from herd.config import load
from herd.inference.loader import load_pretrained
from herd.posttrain.data import write_jsonl
from herd.posttrain.round import RoundJobConfig, format_round
from herd.posttrain.sft import run_sft
from herd.posttrain.synth import evaluate
from herd.posttrain.synth_facts import fact_items, make_fact_data, open_book_variant
from herd.posttrain.synth_tasks import make_tasks, task_dialog
from herd.posttrain.synth_tools import make_tool_dialogs, make_tool_eval
from herd.train.config import TrainJobConfig


def fact_set(split: str, n: int, seed: int) -> list[dict]:
    """Made-up entities (unanswerable) and questions with their snippet in the prompt (answerable)."""
    fake = fact_items(random.Random(seed), n, split=split, fictitious=1.0)
    real = [open_book_variant(q) for q in fact_items(random.Random(seed + 1), n, split=split, fictitious=0.0)]
    return [{**q, "label": "unknown", "samples": [], "answerable": not q["fictitious"]} for q in fake + real]


@pytest.mark.slow
def test_sft_on_checked_data_raises_tool_validity_and_refusals_of_unanswerable_questions(tmp_path) -> None:
    rng = random.Random(0)
    dialogs = make_tool_dialogs(rng, 40, fmt="json", max_tools=1, no_tool_share=0.0)
    dialogs += [task_dialog(t) for t in make_tasks(rng, 32, split="train", tasks=["add", "uppercase"])]
    dialogs += make_fact_data(fact_set("train", 16, 1), rng)
    rng.shuffle(dialogs)
    write_jsonl(tmp_path / "sft.jsonl", dialogs)
    held = make_tool_eval(random.Random(2), 8, fmt="json", max_tools=1)
    held += make_tasks(random.Random(3), 8, split="eval", tasks=["add", "uppercase"])
    held += [{**q, "kind": "fact"} for q in fact_set("eval", 6, 4)]

    base = load_pretrained()
    before = evaluate(base.model, base.tokenizer, held, max_new_tokens=64)
    cfg = load(TrainJobConfig, None, [
        f"job.dump_folder='{tmp_path / 'sft'}'", f"posttrain.sft_data=['{tmp_path / 'sft.jsonl'}']",
        "training.steps=12", "training.seq_len=320", "training.batch_tokens=2560", "training.dtype=bfloat16",
        "optim.lr=1e-4", "lr_schedule.warmup_steps=1", "metrics.tensorboard=false", "metrics.peak_tflops=1.0",
        "metrics.log_interval=0", "checkpoint.interval=12",
    ])  # fmt: skip
    tuned = load_pretrained(run_sft(cfg)["model"])
    after = evaluate(tuned.model, tuned.tokenizer, held, max_new_tokens=64)
    table = format_round({"metrics": {"start": before, "sft": after}})
    print(table)
    assert after["tool_call_valid"] >= 0.5 and after["tool_call_valid"] > before["tool_call_valid"], table
    # Refusals rise where there is nothing to go on, and rise less (the base model never refuses) where the
    # answer is in the prompt; answers there do not get worse.
    refused_unanswerable = after["fact_unanswerable_refused"] - before["fact_unanswerable_refused"]
    refused_answerable = after["fact_answerable_refused"] - before["fact_answerable_refused"]
    assert refused_unanswerable >= 0.5 and refused_answerable < refused_unanswerable / 2, table
    assert after["fact_answerable_correct"] >= before["fact_answerable_correct"], table
    assert after["task_accuracy"] >= before["task_accuracy"], table


def test_the_shipped_round_config_loads_with_its_stage_configs() -> None:
    from pathlib import Path

    from herd.posttrain.config import DPOJobConfig, RejectionJobConfig, RewardJobConfig, check

    root = Path(__file__).parents[2]
    cfg = load(RoundJobConfig, root / "configs" / "posttrain" / "round.toml")
    for path, cls in ((cfg.round.rs_config, RejectionJobConfig), (cfg.round.rm_config, RewardJobConfig),
                      (cfg.round.dpo_config, DPOJobConfig)):  # fmt: skip
        check(load(cls, root / path))
    load(TrainJobConfig, root / cfg.round.sft_config).check()
