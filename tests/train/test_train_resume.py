import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from herd.config import dump


def losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def herd_train(config: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "herd", "train", "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.mark.parametrize("async_save", [False, True], ids=["sync-save", "async-save"])
def test_a_run_killed_with_sigkill_resumes_bit_identically(synthetic_shards, tmp_path, train_config, async_save):
    configs = {}
    for name in ("reference", "killed"):
        cfg = train_config(
            tmp_path / name, synthetic_shards, "training.steps=40", "checkpoint.interval=7", "checkpoint.keep_last=2",
            "faults.spike_batches=[30]", "recovery.spike_warmup=5", f"checkpoint.async_save={str(async_save).lower()}",
        )  # fmt: skip
        configs[name] = tmp_path / f"{name}.toml"
        configs[name].write_text(dump(cfg, "train"))
    reference = herd_train(configs["reference"])
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    run_dir = tmp_path / "killed"
    proc = herd_train(configs["killed"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        path = run_dir / "metrics.jsonl"
        if path.is_file() and len(path.read_text().splitlines()) >= 17:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = losses(run_dir)[-1][0]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    # An async save is committed a step or two after it starts; a sync one before training goes on.
    assert killed_at > 14 and checkpoints[-1] >= ("step-00000007" if async_save else "step-00000014")

    resumed = herd_train(configs["killed"])
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert "resuming at step" in out
    # Every step's loss, the spike-skipped step 31 included, is bitwise the same as the uninterrupted run's.
    assert losses(run_dir) == losses(tmp_path / "reference"), f"killed after step {killed_at}"
    assert [e["event"] for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())].count(
        "resume") == 1  # fmt: skip


def test_measuring_peak_flops_leaves_the_global_rng_alone() -> None:
    """The trainer measures after restoring a checkpoint's RNG state (when metrics.peak_tflops is 0); a draw from the
    global generator there made a resumed round's RNG state differ from the uninterrupted one's (tests/drills)."""
    import torch

    from herd.train.metrics import measure_peak_flops

    torch.manual_seed(0)
    before = torch.get_rng_state()
    measure_peak_flops(torch.float32, torch.device("cpu"), n=64, reps=1)
    assert torch.equal(torch.get_rng_state(), before)
