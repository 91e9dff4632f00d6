"""`herd train` under torchrun with 2 processes on gloo, against the same run in one process.

Every launch goes through `torchrun --standalone` exactly as a user starts it; the synthetic shards come from
tests/train/conftest.py's recipe (a Markov-chain corpus, its BPE, `herd data pack`).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from herd.config import dump, load
from herd.train.trainer import Trainer

BASE = [
    "model.dim=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
    "training.steps=10", "training.seq_len=64", "training.batch_tokens=512", "training.micro_batch_tokens=128",
    "optim.lr=0.01", "lr_schedule.warmup_steps=2", "checkpoint.interval=5",
    "metrics.tensorboard=false", "metrics.peak_tflops=1.0", "metrics.log_interval=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    import random

    from herd.config import PackSection
    from herd.data.pack import pack
    from herd.tokenizer.train import read_corpus, save_ranks, train_bpe

    root = tmp_path_factory.mktemp("parallel-data")
    words = [f"w{i}x" for i in range(30)]
    rng = random.Random(0)
    lines = []
    for _ in range(200):
        i = rng.randrange(30)
        text = []
        for _ in range(rng.randint(20, 200)):
            text.append(words[i])
            i = (i + 7) % 30 if rng.random() < 0.9 else rng.randrange(30)
        lines.append(json.dumps({"text": " ".join(text)}))
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    save_ranks(train_bpe(read_corpus([root / "docs.jsonl"]), 600), root / "tokenizer.model")
    pack(PackSection(input=[str(root / "docs.jsonl")], tokenizer=str(root / "tokenizer.model")), root / "shards")
    return root / "shards"


def write_config(path: Path, run_dir: Path, shards: Path, *overrides: str) -> Path:
    cfg = load("train", None, [f"job.dump_folder='{run_dir}'", f"data.shards=['{shards}']", *BASE, *overrides])
    path.write_text(dump(cfg, "train"))
    return path


def torchrun(config: Path, *extra: str, max_restarts: int = 0, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "--max-restarts", str(max_restarts), "-m", "herd", "train", "--config", str(config), *extra]  # fmt: skip
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def assert_close(a: list[float], b: list[float], rel: float = 1e-4) -> None:
    assert len(a) == len(b)
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True)) <= rel, (a, b)


@pytest.fixture(scope="module")
def single(shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("single") / "run"
    Trainer(load("train", None, [f"job.dump_folder='{run}'", f"data.shards=['{shards}']", *BASE])).train()
    return run


@pytest.fixture(scope="module")
def fsdp(shards, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdp")
    torchrun(write_config(root / "c.toml", root / "run", shards, "parallel.dp_shard=2"))
    return root / "run"


def test_fsdp2_matches_one_process(single, fsdp) -> None:
    assert losses(single)[-1] < losses(single)[0] - 0.5  # the curve moves, so matching it means something
    assert_close(losses(fsdp), losses(single))


@pytest.mark.parametrize(
    "layout",
    [
        ["parallel.tp=2", "parallel.dp_shard=1"],  # tensor parallel with sequence parallel norms
        ["parallel.dp_replicate=2", "parallel.dp_shard=1"],  # replicas (HSDP with one shard each)
        ["parallel.pp=2", "parallel.dp_shard=1"],  # pipeline, 1F1B over 2 micro-batches
        ["parallel.pp=2", "parallel.dp_shard=1", "parallel.pp_schedule='GPipe'", "parallel.pp_microbatches=4"],
        ["parallel.dp_shard=2", "model.dtype='bfloat16'"],  # FSDP2 mixed precision: checked for finite loss
    ],
    ids=["tp2", "replicate2", "pp2-1f1b", "pp2-gpipe", "fsdp2-bf16"],
)
def test_layouts_match_one_process(single, shards, tmp_path, layout) -> None:
    run = tmp_path / "run"
    torchrun(write_config(tmp_path / "c.toml", run, shards, *layout))
    if "model.dtype='bfloat16'" in layout:
        assert losses(run)[-1] < losses(run)[0] - 0.5
        return
    assert_close(losses(run), losses(single))
    assert_close([json.loads(x)["grad_norm"] for x in (run / "metrics.jsonl").read_text().splitlines()],
                 [json.loads(x)["grad_norm"] for x in (single / "metrics.jsonl").read_text().splitlines()])  # fmt: skip
    if "parallel.pp=2" in layout:  # each stage saved its own layers; one process resumes from the union
        one = tmp_path / "one"
        shutil.copytree(run / "checkpoints" / "step-00000005", one / "checkpoints" / "step-00000005")
        Trainer(load("train", None, [f"job.dump_folder='{one}'", f"data.shards=['{shards}']", *BASE])).train()
        assert_close(losses(one), losses(run)[5:])


def test_a_checkpoint_saved_under_fsdp2_resumes_in_one_process_and_back_under_tp2(single, fsdp, shards, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(fsdp / "checkpoints" / "step-00000005", one / "checkpoints" / "step-00000005")
    Trainer(load("train", None, [f"job.dump_folder='{one}'", f"data.shards=['{shards}']", *BASE])).train()
    assert_close(losses(one), losses(fsdp)[5:])

    two = tmp_path / "two"
    shutil.copytree(single / "checkpoints" / "step-00000005", two / "checkpoints" / "step-00000005")
    torchrun(write_config(tmp_path / "c.toml", two, shards, "parallel.tp=2", "parallel.dp_shard=1"))
    assert_close(losses(two), losses(single)[5:])


def test_a_worker_killed_mid_run_is_restarted_and_the_job_ends_as_if_never_stopped(fsdp, shards, tmp_path):
    config = write_config(tmp_path / "c.toml", tmp_path / "run", shards, "parallel.dp_shard=2",
                          "faults.kill_at_step=8", "faults.kill_rank=1")  # fmt: skip
    out = torchrun(config, max_restarts=1)
    assert "resuming at step 5" in out.stdout
    assert [e["event"] for e in events(tmp_path / "run")] == ["resume"]
    assert_close(losses(tmp_path / "run"), losses(fsdp), rel=1e-12)


def test_parameter_corruption_on_one_replica_is_named_and_rolled_back(single, shards, tmp_path):
    config = write_config(tmp_path / "c.toml", tmp_path / "run", shards, "parallel.dp_replicate=2",
                          "parallel.dp_shard=1", "parallel.sdc_check_interval=2", "checkpoint.interval=4",
                          "faults.corrupt_at_step=6", "faults.corrupt_rank=1")  # fmt: skip
    torchrun(config)
    (event,) = events(tmp_path / "run")
    assert event["event"] == "rollback" and "rank(s) [1] differ" in event["reason"], event
    assert "back to step 4" in event["reason"]
    assert_close(losses(tmp_path / "run"), losses(single))  # the replay is clean


def test_a_hung_rank_is_caught_by_the_watchdog_and_the_job_restarts(fsdp, shards, tmp_path):
    # Checkpoints are written asynchronously here (committed once both ranks have written them), so the restart
    # resumes from whichever step was complete; the losses must come out the same either way.
    config = write_config(tmp_path / "c.toml", tmp_path / "run", shards, "parallel.dp_shard=2",
                          "parallel.watchdog_timeout=4.0", "faults.hang_at_step=7", "faults.kill_rank=1",
                          "checkpoint.async_save=true")  # fmt: skip
    torchrun(config, max_restarts=1)
    # Rank 0 waits for rank 1 in a collective, so either watchdog may fire first (torchrun then stops the other).
    dumps = {p.name: p.read_text() for p in (tmp_path / "run").glob("hang-rank*.txt")}
    assert dumps and all("made no progress for 4s in step 7" in d for d in dumps.values()), dumps
    if "hang-rank1.txt" in dumps:
        assert "in at_step_start" in dumps["hang-rank1.txt"]  # the stack shows where it hung
    assert_close(losses(tmp_path / "run"), losses(fsdp), rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [["parallel.tp=2", "parallel.dp_shard=2"], ["parallel.pp=2", "parallel.dp_shard=2"]],
    ids=["fsdp2xtp2", "pp2xfsdp2"],
)
def test_two_dimensional_layouts_on_four_processes_match_one_process(single, shards, tmp_path, layout) -> None:
    torchrun(write_config(tmp_path / "c.toml", tmp_path / "run", shards, *layout), nproc=4)
    assert_close(losses(tmp_path / "run"), losses(single))
