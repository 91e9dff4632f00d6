import math
import tomllib

import pytest

from herd.config import ConfigError, JobConfig, check_layout, load, to_toml
from herd.train.schedule import Schedule


def config(*overrides: str) -> JobConfig:
    return load("train", None, ["data.shards=['x']", *overrides])


def test_warmup_then_cosine_to_the_floor() -> None:
    s = Schedule(config("training.steps=100", "optim.lr=1.0", "lr_schedule.warmup_steps=10",
                        "lr_schedule.min_lr_ratio=0.1"))  # fmt: skip
    assert s.lr(1) == pytest.approx(0.1) and s.lr(10) == pytest.approx(1.0)
    assert s.lr(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s.lr(100) == pytest.approx(0.1)
    assert all(s.lr(i) >= s.lr(i + 1) for i in range(10, 100))
    assert [s.at(i).phase for i in (1, 10, 11, 100)] == ["warmup", "warmup", "decay", "decay"]


def test_llama3_ramp_in_tokens_and_anneal_to_zero() -> None:
    """4M tokens at 4K, then 8M at 8K after 252M tokens, then 16M after 2.87T; ~15.6T tokens in 1.1M steps."""
    cfg = config(
        "training.steps=1_100_000", "training.seq_len=4096", "training.batch_tokens=4194304", "optim.lr=8e-5",
        "training.ramp=[{at_tokens=252_000_000, batch_tokens=8388608, seq_len=8192},"
        " {at_tokens=2_870_000_000_000, batch_tokens=16777216, seq_len=8192}]",
        "lr_schedule.warmup_steps=8000", "lr_schedule.min_lr_ratio=0.01", "anneal.tokens=40_000_000_000",
    )  # fmt: skip
    s = Schedule(cfg)
    first, second, third = s.stages()
    assert (first["step"], second["step"]) == (1, 62)  # ceil(252M / 4M) = 61 steps at 4M come first
    assert second["tokens"] == 61 * 4194304 and second["seq_len"] == 8192
    assert third["tokens"] >= 2_870_000_000_000 > third["tokens"] - 8388608
    assert s.at(61).batch_tokens == 4194304 and s.at(62).batch_tokens == 8388608
    assert s.at(third["step"]).batch_tokens == 16777216
    # Anneal: the last 40B tokens take the learning rate linearly to zero.
    a = s.anneal_start
    assert s.total_tokens - s.tokens_before(a) <= 40_000_000_000 < s.total_tokens - s.tokens_before(a - 1)
    assert s.at(a).phase == "anneal" and s.at(a - 1).phase == "decay"
    assert s.lr(a) == pytest.approx(s.lr(a - 1))
    assert s.lr(1_100_000) == pytest.approx(s.lr(a) * 16777216 / (s.total_tokens - s.tokens_before(a)))
    mid = (a + 1_100_000) // 2
    assert s.lr(mid) == pytest.approx(s.lr(a) * (s.total_tokens - s.tokens_before(mid)) /
                                      (s.total_tokens - s.tokens_before(a)))  # fmt: skip


def test_resolved_config_with_a_ramp_round_trips_through_toml() -> None:
    cfg = config("training.ramp=[{at_tokens=100, batch_tokens=512, seq_len=128}]", "anneal.weights={a=1.0}")
    again = load("train", None, ["data.shards=['x']"])
    raw = tomllib.loads(to_toml(cfg))
    assert raw["training"]["ramp"] == [{"at_tokens": 100, "batch_tokens": 512, "seq_len": 128}]
    from herd.config import build

    assert build(JobConfig, raw) == cfg != again


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("training.batch_tokens=1000", "training.batch_tokens=1000 is not a multiple of seq_len=256"),
        ("training.micro_batch_tokens=300", "training.micro_batch_tokens=300"),
        ("model.dtype='fp8'", "model.dtype='fp8'"),
        ("lr_schedule.warmup_steps=500", "lr_schedule.warmup_steps=500"),
        ("training.ramp=[{at_tokens=0, batch_tokens=512, seq_len=128}]", r"training.ramp\[0\].at_tokens=0"),
        ("data.weights={a=-1.0}", "data.weights.a=-1.0"),
        ("recovery.spike_action='ignore'", "recovery.spike_action='ignore'"),
    ],
)
def test_bad_values_name_their_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        check_layout(config(override), "train", world_size=1, tp=1, pp=1)


def test_anneal_reaching_into_the_warmup_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"anneal\.tokens=.*reaches into the warmup"):
        Schedule(config("training.steps=10", "lr_schedule.warmup_steps=5", "anneal.tokens=50000"))
