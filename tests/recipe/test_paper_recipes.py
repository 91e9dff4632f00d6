"""The shipped recipes, checked with --dry-run: the paper's settings for Llama 3 8B and Llama 3.1 405B (the layout
of Table 4 within 80 GB per GPU, the batch ramp and learning rate of section 3.4.1, the long-context stages, the
anneal), and the laptop recipes plan without errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from herd.recipe.runner import run_recipe
from herd.recipe.spec import read_recipe
from herd.recipe.stage import command_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def dry_run(name: str, tmp_path: Path) -> dict:
    planned = run_recipe(read_recipe(RECIPES / name, run_dir=tmp_path / "run"), dry_run=True)
    assert not (tmp_path / "run").exists()
    return {p.name: p for p in planned}


def test_405b_dry_run_gives_the_paper_layout_within_80_gb(tmp_path: Path) -> None:
    plan = dry_run("llama3.1-405b.toml", tmp_path)
    made = plan["plan"].stage.make(None)
    assert made["model"]["preset"] == "llama3.1-405b"
    assert made["params_6nd"] == pytest.approx(402e9, rel=0.05)  # section 3.2.1: 402B on 16.55T tokens
    assert made["tokens"] == pytest.approx(16.55e12, rel=0.05)
    pre = plan["pretrain"]
    cfg = command_config(pre.stage)
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.dp_shard, pre.stage.settings.gpus) == (8, 16, 128, 16_384)
    assert pre.estimate.memory_gib is not None and 40 < pre.estimate.memory_gib < 80
    assert "pp 16 x dp_shard 128 x tp 8" in pre.estimate.basis and "126-layer" in pre.estimate.basis
    # Section 3.4.1: 4M tokens of 4,096, 8M of 8,192 after 252M tokens, 16M after 2.87T; LR 8e-5, 8,000 warmup steps,
    # cosine to 8e-7.
    t = cfg.training
    assert (t.batch_tokens, t.seq_len) == (4 * 2**20, 4096)
    assert [(r.at_tokens, r.batch_tokens, r.seq_len) for r in t.ramp] == [
        (252_000_000, 8 * 2**20, 8192), (2_870_000_000_000, 16 * 2**20, 8192)]  # fmt: skip
    assert (cfg.optim.lr, cfg.lr_schedule.warmup_steps, cfg.lr_schedule.decay) == (8e-5, 8000, "cosine")
    assert cfg.optim.lr * cfg.lr_schedule.min_lr_ratio == pytest.approx(8e-7)
    assert cfg.data.weights == {"general": 0.5, "math": 0.25, "code": 0.17, "multilingual": 0.08}
    # The wired config pretraining will run: the planned budget through the ramp (about 1.2M steps in the paper).
    steps = pre.stage.wired(cfg, pre.stage.placeholders()).training.steps
    assert 1.1e6 < steps < 1.3e6
    # 8K -> 128K in six stages, then 40M tokens of annealing to a learning rate of 0.
    contexts = [command_config(p.stage).training.seq_len for n, p in plan.items() if n.startswith("context_")]
    assert contexts == sorted(contexts) and len(contexts) == 6 and contexts[-1] == 131_072
    anneal = plan["anneal"].stage
    wired = anneal.wired(command_config(anneal), anneal.placeholders())
    assert anneal.settings.tokens == 40_000_000 and wired.lr_schedule.decay == "linear"
    assert wired.lr_schedule.min_lr_ratio == 0.0 and wired.lr_schedule.warmup_steps == 0


def test_405b_dry_run_from_the_cli(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "herd", "run", str(RECIPES / "llama3.1-405b.toml"), "--dry-run",
                           "--dir", str(tmp_path / "run")], capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("pretrain "))
    assert "days" in line and "GiB" in line and "run" in line
    assert "16,384 GPUs" in proc.stdout and "WARNING" in proc.stdout  # the 128K stages without context parallelism
    assert not (tmp_path / "run").exists()


def test_8b_dry_run(tmp_path: Path) -> None:
    plan = dry_run("llama3-8b.toml", tmp_path)
    pre = plan["pretrain"]
    assert command_config(pre.stage).model.preset == "llama3-8b" and pre.stage.model_args().n_layers == 32
    assert pre.estimate.memory_gib is not None and pre.estimate.memory_gib < 80
    assert command_config(pre.stage).optim.lr == 3e-4  # Table 3


@pytest.mark.parametrize("name", ["tiny.toml", "smollm2-continue.toml"])
def test_laptop_recipes_plan(tmp_path: Path, name: str) -> None:
    plan = dry_run(name, tmp_path)
    assert all(p.status in ("run", "skip") for p in plan.values())
    assert plan["serve"].status == "skip"
