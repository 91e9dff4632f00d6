"""`herd sft`, `herd rm`, `herd dpo` and `herd ppo` killed with SIGKILL mid-run resume from their last checkpoint
and end bitwise where an uninterrupted run ends, as pretraining does (tests/train/test_train_resume.py): they are
objectives of the same Trainer."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from writers import write_dialogs, write_pairs, write_prompts

from herd.config import dump, load

pytestmark = pytest.mark.slow
COMMON = ["model.dtype='float32'", "checkpoint.keep_last=2", "metrics.tensorboard=false", "metrics.peak_tflops=1.0",
          "metrics.log_interval=0"]  # fmt: skip


def herd(command: str, config) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "herd", command, "--config", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in ("tokens_per_s", "mfu", "step_s", "mem_gb")}
            for x in lines]  # fmt: skip


def kill_and_resume(command: str, overrides: list[str], tmp_path, *, kill_after: int, interval: int) -> list[dict]:
    """The resumed run's metrics records, once they are checked equal to the uninterrupted run's."""
    configs = {}
    for name in ("reference", "killed"):
        cfg = load(command, None, [f"job.dump_folder='{tmp_path / name}'", *overrides, *COMMON])
        configs[name] = tmp_path / f"{name}.toml"
        configs[name].write_text(dump(cfg, command))
    reference = herd(command, configs["reference"])
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    run_dir = tmp_path / "killed"
    proc = herd(command, configs["killed"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        path = run_dir / "metrics.jsonl"
        if path.is_file() and len(path.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = records(run_dir)[-1]["step"]
    assert killed_at >= kill_after and (run_dir / "checkpoints" / f"step-{interval:08d}").is_dir()

    resumed = herd(command, configs["killed"])
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    # Every step's record (loss, metrics, learning rate, gradient norm) is the uninterrupted run's, bit for bit.
    assert records(run_dir) == records(tmp_path / "reference"), f"killed after step {killed_at}"
    events = [json.loads(x)["event"] for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events.count("resume") == 1
    summaries = [json.loads((d / "summary.json").read_text()) for d in (run_dir, tmp_path / "reference")]
    # Wall-clock figures and the run's own paths aside, the summaries are the same.
    volatile = {"seconds", "model", "effective_training_time", "tokens_per_s", "checkpoint", "run_dir"}
    assert {k: v for k, v in summaries[0].items() if k not in volatile} == {
        k: v for k, v in summaries[1].items() if k not in volatile}  # fmt: skip
    return records(run_dir)


@pytest.mark.parametrize("command", ["sft", "rm", "dpo"])
def test_sft_rm_and_dpo_killed_with_sigkill_resume_bit_identically(command, tiny_chat_model, tmp_path) -> None:
    """Batch 30 carries an injected 100x loss spike, so the recovery state (running mean, good steps) must come back
    from the checkpoint too for the resumed run to decide as the uninterrupted one did."""
    if command == "sft":
        write_dialogs(tmp_path / "p.jsonl", n=96)
    else:
        write_pairs(tmp_path / "p.jsonl", n=96, edited=command == "rm")
    sft = ["training.seq_len=128", "training.batch_tokens=256", "training.micro_batch_tokens=128",
           "lr_schedule.warmup_steps=3"]  # fmt: skip
    batches = sft if command == "sft" else ["training.epochs=0", "training.batch_size=8", "training.micro_batch_size=4"]
    records = kill_and_resume(command, [
        f"model.init_from='{tiny_chat_model}'", f"data.files=['{tmp_path / 'p.jsonl'}']", *batches,
        "training.steps=36", "optim.lr=1e-3", "checkpoint.interval=7", "faults.spike_batches=[30]",
        "recovery.spike_warmup=5",
    ], tmp_path, kill_after=16, interval=14)  # fmt: skip
    if command == "dpo":  # the reward model's loss falls faster than its running mean: there the spike passes
        assert [r["step"] for r in records if r.get("skipped") == "spike"] == [31]


def test_ppo_killed_with_sigkill_resumes_bit_identically(tiny_chat_model, tmp_path) -> None:
    write_prompts(tmp_path / "prompts.jsonl", n=12)
    kill_and_resume("ppo", [
        f"model.init_from='{tiny_chat_model}'", f"data.files=['{tmp_path / 'prompts.jsonl'}']", "training.steps=24",
        "training.batch_size=4", "ppo.epochs=2", "ppo.max_new_tokens=6", "optim.lr=1e-3", "checkpoint.interval=6",
    ], tmp_path, kill_after=14, interval=12)  # fmt: skip
