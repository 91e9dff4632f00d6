"""A full disk (ENOSPC) during a shard write and during a checkpoint, on a small tmpfs the test mounts (issue 22):
the command ends with one `herd: error:` line that names the file and the cause, leaves no output that looks
complete, and what was written before is intact."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from commands import documents, write_jsonl
from drill import digest

from herd.config import dump


@contextlib.contextmanager
def small_disk(path: Path, kib: int) -> Iterator[Path]:
    """A tmpfs of `kib` KiB at `path` (root only; skips where mounting is not allowed)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def herd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "herd", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def assert_one_line_enospc(done: subprocess.CompletedProcess, under: Path) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("herd: error:") and "No space left on device" in lines[0], lines
    assert str(under) in lines[0], lines  # it names the file it could not write


@pytest.mark.slow
def test_a_full_disk_during_a_shard_write_fails_cleanly_and_keeps_earlier_shards(tmp_path) -> None:
    from herd.data.shards import Shard
    from herd.tokenizer.train import save_ranks, train_bpe

    docs = documents(3000)
    write_jsonl(tmp_path / "small.jsonl", docs[:50])
    write_jsonl(tmp_path / "big.jsonl", docs)
    save_ranks(train_bpe([d["text"] for d in docs[:300]], 640), tmp_path / "tokenizer.model")
    with small_disk(tmp_path / "disk", 256) as disk:
        pack = ["data", "pack", "--tokenizer", "tokenizer.model", "--shard-tokens", "4000"]
        assert herd(*pack, "-i", "small.jsonl", "-o", str(disk / "earlier"), cwd=tmp_path).returncode == 0
        earlier = digest(disk / "earlier")
        done = herd(*pack, "-i", "big.jsonl", "-o", str(disk / "shards"), cwd=tmp_path)
        assert_one_line_enospc(done, disk)
        assert not (disk / "shards").exists()  # nothing that looks like a finished pack
        assert sorted(p.name for p in disk.iterdir()) == ["earlier"]  # and no temporary directory left over
        assert digest(disk / "earlier") == earlier
        for shard in (disk / "earlier").rglob("*.bin"):
            assert len(Shard(shard).tokens) > 0  # each earlier shard still reads, its header checked


def _blocks(root: Path) -> int:
    """Bytes that the files under `root` take on a tmpfs (whole 4 KiB pages)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("async_save", [False, True], ids=["sync-save", "async-save"])
def test_a_full_disk_during_a_checkpoint_fails_cleanly_and_the_last_checkpoint_resumes(tmp_path, async_save) -> None:
    from herd.config import load
    from herd.tokenizer.train import save_ranks, train_bpe

    docs = documents(400)
    write_jsonl(tmp_path / "docs.jsonl", docs)
    save_ranks(train_bpe([d["text"] for d in docs[:300]], 640), tmp_path / "tokenizer.model")
    pack = ["data", "pack", "-i", "docs.jsonl", "-o", "shards", "--tokenizer", "tokenizer.model"]
    assert herd(*pack, cwd=tmp_path).returncode == 0

    def config(run_dir: Path) -> Path:
        cfg = load("train", None, [
            f"job.dump_folder={json.dumps(str(run_dir))}", f"data.shards=[{json.dumps(str(tmp_path / 'shards'))}]",
            "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "training.steps=12",
            "training.seq_len=64", "training.batch_tokens=256", "training.micro_batch_tokens=256",
            "lr_schedule.warmup_steps=2", "checkpoint.interval=6", "checkpoint.keep_last=2",
            f"checkpoint.async_save={str(async_save).lower()}", "metrics.tensorboard=false", "metrics.log_interval=0",
        ])  # fmt: skip
        path = run_dir.parent / f"{run_dir.name}.toml"
        path.write_text(dump(cfg, "train"))
        return path

    # A run on a roomy disk measures the run directory after its first checkpoint and the size of one checkpoint.
    probe = tmp_path / "probe"
    assert herd("train", "--config", str(config(probe)), cwd=tmp_path).returncode == 0
    checkpoint = _blocks(probe / "checkpoints" / "step-00000006")
    first = _blocks(probe) - _blocks(probe / "checkpoints" / "step-00000012")
    # The disk holds the run up to its first checkpoint and half of another: the save at step 12 runs out of space.
    with small_disk(tmp_path / "disk", (first + checkpoint // 2) // 1024 + 4) as disk:
        run_dir = disk / "run"
        done = herd("train", "--config", str(config(run_dir)), cwd=tmp_path)
        assert_one_line_enospc(done, disk)
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir()) == ["step-00000006"]
        # With room again, the checkpoint written before the disk filled is whole: training resumes from it.
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = herd("train", "--config", str(config(run_dir)), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming at step 6" in resumed.stdout + resumed.stderr
