"""The config loader: defaults <- TOML <- overrides, strict keys, typed values, TOML round trip."""

from dataclasses import dataclass, field

import pytest

from herd.config import ConfigError, build, load, to_toml


@dataclass(kw_only=True, slots=True)
class Inner:
    threshold: float = 0.5
    """A float."""
    langs: list[str] = field(default_factory=lambda: ["en"])
    per_lang: dict[str, float] = field(default_factory=dict)
    path: str | None = None


@dataclass(kw_only=True, slots=True)
class Root:
    name: str = "run"
    steps: int = 10
    enabled: bool = True
    inner: Inner = field(default_factory=Inner)


def test_precedence_defaults_file_overrides(tmp_path) -> None:
    (tmp_path / "c.toml").write_text('steps = 20\n[inner]\nthreshold = 1\nlangs = ["fr", "de"]\n')
    cfg = load(Root, tmp_path / "c.toml", ["--inner.threshold=0.25", "--name=123", "--inner.per_lang={ en = 0.7 }"])
    assert cfg.steps == 20 and cfg.name == "123" and cfg.enabled
    assert cfg.inner.threshold == 0.25 and cfg.inner.langs == ["fr", "de"] and cfg.inner.per_lang == {"en": 0.7}


def test_unknown_keys_and_wrong_types_are_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        build(Root, {"stepz": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'inner\.bogus'"):
        load(Root, None, ["--inner.bogus=1"])
    with pytest.raises(ConfigError, match="steps must be int"):
        build(Root, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"inner.langs\[1\] must be str"):
        build(Root, {"inner": {"langs": ["en", 3]}})
    (tmp_path / "bad.toml").write_text("steps = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load(Root, tmp_path / "bad.toml")


def test_resolved_config_round_trips_through_toml(tmp_path) -> None:
    cfg = load(Root, None, ['--inner.path="a \\"b\\""', "--inner.per_lang={ fr = 0.9 }"])
    (tmp_path / "out.toml").write_text(to_toml(cfg))
    assert load(Root, tmp_path / "out.toml") == cfg


def test_shipped_configs_load() -> None:
    from pathlib import Path

    from herd.data.pipeline import CurateConfig, DataJobConfig

    root = Path(__file__).parents[1] / "configs"
    job = load(DataJobConfig, root / "data" / "curate.toml")
    assert job.curate == CurateConfig(input=["runs/corpus/raw"])  # the file spells out the defaults


def test_shipped_pretrain_configs_load_and_pass_their_checks() -> None:
    from pathlib import Path

    from herd.train.config import TrainJobConfig
    from herd.train.schedule import Schedule

    for path in sorted((Path(__file__).parents[1] / "configs" / "pretrain").glob("*.toml")):
        cfg = load(TrainJobConfig, path)
        cfg.check()
        schedule = Schedule(cfg)
        assert schedule.anneal_start <= cfg.training.steps, path  # each shipped recipe ends with an anneal
    from herd.posttrain import config as pc
    from herd.posttrain.round import RoundJobConfig
    from herd.posttrain.synth import SynthJobConfig

    classes = {"sft": TrainJobConfig, "rm": pc.RewardJobConfig, "dpo": pc.DPOJobConfig, "rs": pc.RejectionJobConfig,
               "ppo": pc.PPOJobConfig, "synth": SynthJobConfig, "round": RoundJobConfig}  # fmt: skip
    shipped = sorted((Path(__file__).parents[1] / "configs" / "posttrain").glob("*.toml"))
    assert {p.stem for p in shipped} == set(classes)
    for path in shipped:
        cfg = load(classes[path.stem], path)
        if path.stem == "sft":
            cfg.check()
        elif path.stem not in ("synth", "round"):
            pc.check(cfg)
    from herd.scaling.sweep import ScalingJobConfig

    for path in sorted((Path(__file__).parents[1] / "configs" / "scaling").glob("*.toml")):
        assert len(load(ScalingJobConfig, path).scaling.sizes) >= 3, path
