"""Every TOML under configs/ loads with its command and runs a few steps of its stage, so none can go stale.

Each run keeps the file's settings and changes only what a test must: inputs made here (a tiny random model with
SmolLM2's chat format instead of the embedded one, generated documents, pairs and prompts), the run directory,
and the length. Stages that are slow at full size (curation's LLM judge, a sweep's budgets) are cut down the same
way."""

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from herd.config import JobConfig, PackSection, load

pytestmark = pytest.mark.slow
CONFIGS = Path(__file__).parents[1] / "configs"
QUIET = ["metrics.tensorboard=false", "metrics.peak_tflops=1.0"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_chat_model) -> dict[str, str]:
    """Dialogs, preference pairs and checkable prompts for the post-training stages."""
    from writers import write_dialogs, write_pairs, write_prompts

    root = tmp_path_factory.mktemp("configs-inputs")
    write_dialogs(root / "dialogs.jsonl")
    write_pairs(root / "pairs.jsonl")
    write_prompts(root / "prompts.jsonl", n=8)
    return {"model": tiny_chat_model, **{k: str(root / f"{k}.jsonl") for k in ("dialogs", "pairs", "prompts")}}


def run_of(path: str, command: str, tmp_path, *overrides: str) -> JobConfig:
    return load(command, CONFIGS / path, [f"job.dump_folder='{tmp_path / 'run'}'", *overrides])


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Token shards of the four sources configs/pretrain/tiny.toml mixes (general, math, code, multilingual)."""
    from herd.data.pack import pack
    from herd.tokenizer.train import read_corpus, save_ranks, train_bpe

    root = tmp_path_factory.mktemp("configs-shards")
    rng = random.Random(0)
    words = {s: [f"{s[:2]}{i}" for i in range(20)] for s in ("general", "math", "code", "multilingual")}
    docs = [{"text": " ".join(rng.choice(words[s]) for _ in range(rng.randint(20, 200))), "source": s}
            for s in words for _ in range(60)]  # fmt: skip
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    save_ranks(train_bpe(read_corpus([root / "docs.jsonl"]), 512), root / "tokenizer.model")
    pack(PackSection(input=[str(root / "docs.jsonl")], tokenizer=str(root / "tokenizer.model")), root / "shards")
    return root / "shards"


def test_pretrain_tiny(shards, tmp_path) -> None:
    from herd.train.trainer import Trainer

    cfg = run_of("pretrain/tiny.toml", "train", tmp_path, f"data.shards=['{shards}']", "training.steps=4",
                 "lr_schedule.warmup_steps=1", "anneal.tokens=4096", *QUIET)  # fmt: skip
    summary = Trainer(cfg).train()
    assert summary["steps"] == 4 and summary["final_loss"] > 0
    phases = [json.loads(x)["phase"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert phases[-1] == "anneal"  # the file's anneal, with its own mix weights


def test_sft(inputs, tmp_path) -> None:
    from herd.posttrain.sft import run_sft

    cfg = run_of("posttrain/sft.toml", "sft", tmp_path, f"model.init_from='{inputs['model']}'",
                 f"data.files=['{inputs['dialogs']}']", "training.steps=2", "training.seq_len=128",
                 "training.batch_tokens=512", "lr_schedule.warmup_steps=1", *QUIET)  # fmt: skip
    assert Path(run_sft(cfg)["model"]).is_dir()


@pytest.fixture(scope="module")
def reward_model(inputs, tmp_path_factory) -> str:
    from herd.posttrain.reward import run_rm

    run = tmp_path_factory.mktemp("configs-rm")
    cfg = run_of("posttrain/rm.toml", "rm", run, f"model.init_from='{inputs['model']}'",
                 f"data.files=['{inputs['pairs']}']", *QUIET)  # fmt: skip
    summary = run_rm(cfg)
    assert summary["steps"] == -(-summary["train_pairs"] // 8)  # one epoch of 8-pair batches, as the file says
    return summary["model"]


def test_rm(reward_model) -> None:
    assert (Path(reward_model) / "reward_head.safetensors").is_file()


def test_dpo(inputs, tmp_path) -> None:
    from herd.posttrain.dpo import run_dpo

    cfg = run_of("posttrain/dpo.toml", "dpo", tmp_path, f"model.init_from='{inputs['model']}'",
                 f"data.files=['{inputs['pairs']}']", *QUIET)  # fmt: skip
    summary = run_dpo(cfg)
    assert summary["steps"] == -(-summary["train_pairs"] // 8) and Path(summary["model"]).is_dir()


def test_rs(inputs, reward_model, tmp_path) -> None:
    from herd.posttrain.rejection import run_rs

    cfg = run_of("posttrain/rs.toml", "rs", tmp_path, f"model.init_from='{inputs['model']}'",
                 f"data.files=['{inputs['prompts']}']", f"rs.reward_model='{reward_model}'", "rs.samples=2",
                 "rs.max_new_tokens=8")  # fmt: skip
    summary = run_rs(cfg)
    assert summary["samples"] == 16 and summary["ranked_by"] == "checker, then reward model"


def test_ppo(inputs, tmp_path) -> None:
    from herd.posttrain.ppo import run_ppo

    cfg = run_of("posttrain/ppo.toml", "ppo", tmp_path, f"model.init_from='{inputs['model']}'",
                 f"data.files=['{inputs['prompts']}']", "training.steps=2", "checkpoint.interval=2",
                 "ppo.max_new_tokens=8", *QUIET)  # fmt: skip
    assert cfg.lora.rank == 8 and run_ppo(cfg)["steps"] == 2


SMALL_SYNTH = ["synth.tool_dialogs=4", "synth.tasks=4", "synth.rs_prompts=4", "synth.facts=4", "synth.fact_samples=1",
               "synth.max_new_tokens=6", "synth.eval_tools=2", "synth.eval_tasks=2", "synth.eval_facts=2"]  # fmt: skip


def test_synth(inputs, tmp_path) -> None:
    from herd.posttrain.synth import run_synth

    cfg = run_of("posttrain/synth.toml", "synth", tmp_path, f"model.init_from='{inputs['model']}'", *SMALL_SYNTH)
    summary = run_synth(cfg)
    assert summary["format"] == "json" and summary["sft_dialogs"] >= 8
    assert all((tmp_path / "run" / f"{name}.jsonl").is_file() for name in ("sft", "prompts", "pairs", "eval"))


def test_round(inputs, tmp_path) -> None:
    """The round with the shipped stage configs, each shortened the same way as above."""
    from herd.posttrain.round import format_done, run_round, stage_configs

    cfg = run_of("posttrain/round.toml", "round", tmp_path, f"model.init_from='{inputs['model']}'",
                 "round.eval_max_new_tokens=8", *SMALL_SYNTH, "synth.max_tools=1")  # fmt: skip
    paths = {f"{n}_config": str(CONFIGS.parent / getattr(cfg.round, f"{n}_config")) for n in ("sft", "rm", "rs", "dpo")}
    cfg = replace(cfg, round=replace(cfg.round, **paths))
    stages = stage_configs(cfg)
    stages["sft"] = replace(stages["sft"], training=replace(stages["sft"].training, steps=3, seq_len=128,
                                                            batch_tokens=512))  # fmt: skip
    stages["rs"] = replace(stages["rs"], rs=replace(stages["rs"].rs, samples=2, max_new_tokens=8))
    for name in ("sft", "rm", "dpo"):
        stages[name] = replace(stages[name], metrics=replace(stages[name].metrics, tensorboard=False, peak_tflops=1.0))
    summary = run_round(cfg, stages)
    assert set(summary["metrics"]) == {"start", "sft", "dpo"} and summary["rs"]["ranked_by"].endswith("reward model")
    assert "round done" in format_done(summary)


def test_curate(tmp_path) -> None:
    from herd.data.corpus import build_corpus
    from herd.data.pipeline import Curator

    corpus = build_corpus(tmp_path / "raw")
    cfg = run_of("data/curate.toml", "curate", tmp_path, f"curate.input=['{corpus.path}']", "curate.tasks=1",
                 "curate.quality.enabled=false")  # fmt: skip
    report = Curator(cfg.curate, cfg.job.dump_folder, log=lambda _: None).run()
    assert 0 < report["output"]["documents"] < report["input"]["documents"]


def test_scaling_tiny(shards, tmp_path) -> None:
    from herd.scaling.sweep import run_sweep

    docs = shards.parent / "docs.jsonl"
    cfg = run_of("scaling/tiny.toml", "scaling", tmp_path, f"pack.input=['{docs}']", "pack.source_field='source'",
                 f"pack.tokenizer='{shards.parent / 'tokenizer.model'}'", "scaling.budgets=[1e9, 2e9]",
                 "scaling.holdout_budget=0", "scaling.eval_batches=2", "scaling.task_items=20",
                 "scaling.sizes=[{dim=16, n_layers=1}, {dim=24, n_layers=1}, {dim=32, n_layers=1}]")  # fmt: skip
    manifest = run_sweep(cfg, log=lambda _: None)
    assert len(manifest["runs"]) == 6 and all(r["status"] == "done" for r in manifest["runs"])
