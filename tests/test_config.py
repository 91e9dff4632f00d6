"""The config tree: the loader (defaults <- TOML <- overrides, strict keys, typed values, TOML round trip) and the
one JobConfig every command reads its own sections of."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from herd.config import COMMANDS, MOVED, ConfigError, CurateSection, JobConfig, build, dump, load, load_as, to_toml


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
    cfg = load_as(Root, tmp_path / "c.toml", ["--inner.threshold=0.25", "--name=123", "--inner.per_lang={ en = 0.7 }"])
    assert cfg.steps == 20 and cfg.name == "123" and cfg.enabled
    assert cfg.inner.threshold == 0.25 and cfg.inner.langs == ["fr", "de"] and cfg.inner.per_lang == {"en": 0.7}


def test_unknown_keys_and_wrong_types_are_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        build(Root, {"stepz": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'inner\.bogus'"):
        load_as(Root, None, ["--inner.bogus=1"])
    with pytest.raises(ConfigError, match="steps must be int"):
        build(Root, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"inner.langs\[1\] must be str"):
        build(Root, {"inner": {"langs": ["en", 3]}})
    (tmp_path / "bad.toml").write_text("steps = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_as(Root, tmp_path / "bad.toml")


def test_resolved_config_round_trips_through_toml(tmp_path) -> None:
    cfg = load_as(Root, None, ['--inner.path="a \\"b\\""', "--inner.per_lang={ fr = 0.9 }"])
    (tmp_path / "out.toml").write_text(to_toml(cfg))
    assert load_as(Root, tmp_path / "out.toml") == cfg


SHIPPED = {"pretrain/tiny.toml": "train", "posttrain/sft.toml": "sft", "posttrain/rm.toml": "rm",
           "posttrain/dpo.toml": "dpo", "posttrain/ppo.toml": "ppo", "posttrain/rs.toml": "rs",
           "posttrain/synth.toml": "synth", "posttrain/round.toml": "round", "data/curate.toml": "curate",
           "scaling/tiny.toml": "scaling"}  # fmt: skip
CONFIGS = Path(__file__).parents[1] / "configs"


def test_every_shipped_config_loads_with_its_command_and_round_trips(tmp_path) -> None:
    assert {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.toml")} == set(SHIPPED)
    for name, command in SHIPPED.items():
        cfg = load(command, CONFIGS / name)
        (tmp_path / "resolved.toml").write_text(dump(cfg, command))  # what a run saves as its config.toml
        assert load(command, tmp_path / "resolved.toml") == cfg, name
    curate = load("curate", CONFIGS / "data" / "curate.toml")
    assert curate.curate == CurateSection(input=["runs/corpus/raw"])  # the file spells out the defaults


def test_a_section_or_key_the_command_does_not_read_is_an_error_that_names_it(tmp_path) -> None:
    (tmp_path / "c.toml").write_text("[anneal]\ntokens = 5\n")
    with pytest.raises(ConfigError, match=r"c\.toml: herd dpo does not read \[anneal\]"):
        load("dpo", tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=r"herd train does not read training.batch_size"):
        load("train", None, ["data.shards=['x']", "training.batch_size=4"])
    with pytest.raises(ConfigError, match=r"herd rs does not read \[optim\]"):
        load("rs", None, ["data.files=['x']", "optim.lr=1e-3"])
    (tmp_path / "typo.toml").write_text("[optimm]\nlr = 1.0\n")
    with pytest.raises(ConfigError, match=r"typo\.toml: unknown section \[optimm\]"):
        load("sft", tmp_path / "typo.toml")


def test_keys_of_the_old_layout_say_where_they_moved(tmp_path) -> None:
    (tmp_path / "old_sft.toml").write_text('[posttrain]\ninit_from = "m"\nsft_data = ["d.jsonl"]\n')
    with pytest.raises(ConfigError, match=r"old_sft\.toml: posttrain\.init_from moved to model\.init_from"):
        load("sft", tmp_path / "old_sft.toml")
    for old, new in (("optim.warmup_steps=1", "lr_schedule.warmup_steps"), ("model.lora_rank=4", "lora.rank"),
                     ("training.dtype='bfloat16'", "model.dtype"), ("data.train=['x']", "data.files")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"moved to {new}"):
            load("dpo", None, [old])
    with pytest.raises(ConfigError, match=r"rs\.output was removed"):
        load("rs", None, ["rs.output='x'"])
    assert all(new.split(" ")[0].count(".") == 1 or new.startswith("nothing") for new in MOVED.values())


def test_each_command_reads_real_keys_and_its_defaults_are_among_them() -> None:
    fields = {s: set(getattr(JobConfig(), s).__dataclass_fields__) for s in JobConfig.__dataclass_fields__}
    for command, spec in COMMANDS.items():
        for section, keys in spec.reads.items():
            assert keys is None or set(keys) <= fields[section], (command, section)
        for dotted in spec.defaults:
            section, key = dotted.split(".")
            assert section in spec.reads and (spec.reads[section] is None or key in spec.reads[section]), dotted
    # One meaning everywhere: the post-training stages share the optimizer's defaults with pretraining.
    betas = {command: load(command, None, _needs(command)).optim.betas for command in ("train", "sft", "rm", "dpo",
                                                                                       "ppo", "scaling")}  # fmt: skip
    assert set(map(tuple, betas.values())) == {(0.9, 0.95)}


def _needs(command: str) -> list[str]:
    return {"train": ["data.shards=['x']"], "scaling": []}.get(command, ["data.files=['x']"])


def test_sampling_and_judge_quantization_keys_parse_and_bad_values_are_named() -> None:
    rs = load("rs", None, ["data.files=['x']"])
    assert (rs.model.dtype, rs.rs.quant) == ("bfloat16", "none")  # today's sampler unless asked
    assert load("rs", None, ["data.files=['x']", "rs.quant=int8"]).rs.quant == "int8"
    with pytest.raises(ConfigError, match=r"^rs\.quant='int3': expected one of none, int8, int4$"):
        load("rs", None, ["data.files=['x']", "rs.quant=int3"])
    with pytest.raises(ConfigError, match=r"rs\.quant='int4' samples on herd's CPU decode kernels"):
        load("rs", None, ["data.files=['x']", "rs.quant=int4", "training.device=cuda"])
    q = load("curate", None, []).curate.quality
    assert (q.judge_dtype, q.judge_quant) == ("bfloat16", "none")
    q = load("curate", None, ["curate.quality.judge_quant=int4", "curate.quality.judge_dtype=float32"]).curate.quality
    assert (q.judge_dtype, q.judge_quant) == ("float32", "int4")
    with pytest.raises(ConfigError, match=r"^curate\.quality\.judge_dtype='float16': expected one of float32"):
        load("curate", None, ["curate.quality.judge_dtype=float16"])
    with pytest.raises(ConfigError, match=r"^curate\.quality\.judge_quant='q4': expected one of none, int8, int4$"):
        load("curate", None, ["curate.quality.judge_quant=q4"])
