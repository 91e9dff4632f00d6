"""A DCP checkpoint directory is data (issue 22): torch's FileSystemReader unpickles `.metadata` with plain pickle and
its default planner torch.loads non-tensor entries with weights_only=False, so a crafted directory runs code on load.
herd's `load_dcp` admits only what a DCP checkpoint holds."""

import os
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from herd.errors import CheckpointError
from herd.train.checkpoint import _quiet_dcp, load_dcp


class _Payload:
    """Unpickles as os.mkdir(marker): what a crafted checkpoint could run instead."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _save(path, state) -> None:
    with _quiet_dcp():
        dcp.save(state, checkpoint_id=str(path))


def test_a_checkpoint_with_its_optimizer_state_and_plain_values_loads(tmp_path) -> None:
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    _save(
        tmp_path / "ok", {"model": model.state_dict(), "optimizer": opt.state_dict(), "note": {"step": 3, "x": [1.5]}}
    )
    fresh = torch.nn.Linear(4, 3)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh(torch.randn(2, 4)).sum().backward()
    fresh_opt.step()
    target = {"model": fresh.state_dict(), "optimizer": fresh_opt.state_dict(), "note": {"step": 0, "x": [0.0]}}
    load_dcp(target, tmp_path / "ok")
    assert all(torch.equal(target["model"][k], v) for k, v in model.state_dict().items())
    assert target["note"] == {"step": 3, "x": [1.5]}


def test_crafted_metadata_and_entries_run_nothing(tmp_path) -> None:
    state = {"w": torch.ones(3), "extra": {"n": 1}}
    # 1. .metadata replaced by a pickle whose loading calls os.mkdir
    _save(tmp_path / "meta", state)
    marker = tmp_path / "ran-from-metadata"
    (tmp_path / "meta" / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError) as refused:  # one line: DCP's CheckpointException carries a traceback
        load_dcp({"w": torch.zeros(3), "extra": {"n": 0}}, tmp_path / "meta")
    assert "\n" not in str(refused.value)
    assert "mkdir is not part of a DCP checkpoint's metadata" in str(refused.value), str(refused.value)[-500:]
    assert not marker.exists()
    with _quiet_dcp(), pytest.raises(CheckpointException):  # the control: torch's own reader runs it, then fails
        dcp.load({"w": torch.zeros(3), "extra": {"n": 0}}, checkpoint_id=str(tmp_path / "meta"))
    assert marker.is_dir()

    # 2. a non-tensor entry whose pickle calls os.mkdir when torch.load(weights_only=False) reads it
    marker2 = tmp_path / "ran-from-entry"
    _save(tmp_path / "entry", {"w": torch.ones(3), "extra": {"n": _Payload(str(marker2))}})
    with pytest.raises(CheckpointError) as refused:
        load_dcp({"w": torch.zeros(3), "extra": {"n": 0}}, tmp_path / "entry")
    assert "Weights only load failed" in str(refused.value), str(refused.value)[-500:]
    assert not marker2.exists()
    with _quiet_dcp():  # the control: torch's default planner runs it
        dcp.load({"w": torch.zeros(3), "extra": {"n": 0}}, checkpoint_id=str(tmp_path / "entry"))
    assert marker2.is_dir()
