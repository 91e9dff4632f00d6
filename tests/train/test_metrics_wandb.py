"""Weights & Biases as a metrics sink: a tiny run logs offline into its run directory, and a resumed run appends to
the same W&B run. The offline run is read back with wandb's own reader of .wandb files (what `wandb sync` uses)."""

import json
import re
import sys
from pathlib import Path

import pytest

from herd.config import ConfigError, load
from herd.errors import TrainError
from herd.train.metrics import WandbSink
from herd.train.trainer import Trainer


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch) -> None:
    """No network and nothing outside tmp_path: offline mode, no key, wandb's own files in a scratch home."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))


def offline_records(run_dir: Path) -> list[tuple[str, object]]:
    """(kind, record) for every record of every offline run under run_dir, oldest run first."""
    from wandb.proto.wandb_internal_pb2 import Record
    from wandb.sdk.internal.datastore import DataStore

    out = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        store = DataStore()
        store.open_for_scan(str(path))
        while (data := store.scan_data()) is not None:
            record = Record()
            record.ParseFromString(data)
            out.append((record.WhichOneof("record_type"), record))
    return out


def history(run_dir: Path) -> list[dict[str, float]]:
    rows = []
    for kind, record in offline_records(run_dir):
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows.append({k: v for k, v in items.items() if k.startswith("train/")})
    return rows


def test_a_run_logs_to_wandb_offline_and_a_resumed_run_appends_to_it(
    synthetic_shards, tmp_path, train_config, wandb_offline
) -> None:  # fmt: skip
    run_dir = tmp_path / "run"
    wandb = ("metrics.wandb=true", "metrics.wandb_project='herd-test'", "checkpoint.interval=2",
             "lr_schedule.warmup_steps=2")  # fmt: skip
    Trainer(train_config(run_dir, synthetic_shards, "training.steps=4", *wandb)).train()
    run_id = (run_dir / "wandb_id").read_text()
    # Resumed from step 4's checkpoint with a longer schedule: a second offline run with the same id.
    Trainer(train_config(run_dir, synthetic_shards, "training.steps=6", *wandb)).train()
    import wandb as wandb_package

    wandb_package.teardown()  # wandb-core, the process that writes the .wandb files, flushes them as it stops
    assert (run_dir / "wandb_id").read_text() == run_id
    runs = sorted(run_dir.glob("wandb/offline-run-*"))
    # offline-run-<date>_<time>-<id>, and "-1" after it when the two runs start within the same second
    assert [re.match(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)", p.name).group(1) for p in runs] == [run_id, run_id]

    records = offline_records(run_dir)
    starts = [r.run for kind, r in records if kind == "run"]
    names = {(s.run_id, s.project, s.display_name, s.job_type) for s in starts}
    assert names == {(run_id, "herd-test", "run", "train")}
    config = {item.key: json.loads(item.value_json) for item in starts[-1].config.update}
    assert config["training"]["steps"] == 6 and config["metrics"]["wandb"] is True  # the resolved config

    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = history(run_dir)
    assert [r["train/step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["train/loss"] for r in rows] == [r["loss"] for r in logged]
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s"} <= rows[0].keys()


def test_without_the_package_metrics_wandb_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets when it is not installed
    with pytest.raises(TrainError, match=r"^metrics\.wandb=true needs the wandb package: pip install 'herd\[wandb\]'"):
        WandbSink(tmp_path, project="herd", mode="offline", job_type="train", config={})
    with pytest.raises(ConfigError, match=r"^metrics\.wandb_mode='cloud': expected one of auto, online, offline$"):
        load("train", None, ["data.shards=['x']", "metrics.wandb_mode='cloud'"])


def test_resume_drops_a_half_written_last_metrics_line_and_refuses_a_corrupt_earlier_one(tmp_path) -> None:
    from herd.train.metrics import MetricsLogger

    lines = [json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 4, "lo')  # killed mid-line
    logger = MetricsLogger(tmp_path, total_steps=10, start_step=2, tensorboard=False, log_interval=0, progress=False)
    logger.file.close()
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:2])
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "{torn\n" + lines[1])
    with pytest.raises(TrainError, match=r"metrics.jsonl: line 2 is not JSON"):
        MetricsLogger(tmp_path, total_steps=10, start_step=2, tensorboard=False, log_interval=0, progress=False)
