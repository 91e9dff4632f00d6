"""The one config tree (`JobConfig`), what each command reads of it, and its loader.

    cfg = load("dpo", "configs/posttrain/dpo.toml", ["optim.lr=2e-5"])

Every command that trains, curates, packs, sweeps or runs a round is configured by a `JobConfig`. `COMMANDS` lists,
per command, the sections (and keys) it reads and the defaults it changes: a TOML file or override that sets
anything else is an error that names it, and a key from an older layout is an error that says where it went.
Stages compose in Python: `herd round` and `herd scaling sweep` build each run's `JobConfig` from their own with
`dataclasses.replace`, never from strings.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.config.checks import check
from herd.config.loader import ConfigError, apply_override, build, read_toml, to_toml
from herd.config.sections import (
    AnnealSection,
    CheckpointSection,
    DataSection,
    FaultsSection,
    JobSection,
    LoraSection,
    MetricsSection,
    ModelSection,
    OptimSection,
    ParallelSection,
    RecoverySection,
    ScheduleSection,
    TrainingSection,
)
from herd.config.stages import (
    CurateSection,
    DPOSection,
    PackSection,
    PPOSection,
    RejectionSection,
    RewardSection,
    RoundSection,
    ScalingSection,
    SynthSection,
)


@dataclass(kw_only=True, slots=True)
class JobConfig:
    job: JobSection = field(default_factory=JobSection)
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    lr_schedule: ScheduleSection = field(default_factory=ScheduleSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    anneal: AnnealSection = field(default_factory=AnnealSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    recovery: RecoverySection = field(default_factory=RecoverySection)
    faults: FaultsSection = field(default_factory=FaultsSection)
    rm: RewardSection = field(default_factory=RewardSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    rs: RejectionSection = field(default_factory=RejectionSection)
    synth: SynthSection = field(default_factory=SynthSection)
    round: RoundSection = field(default_factory=RoundSection)
    curate: CurateSection = field(default_factory=CurateSection)
    pack: PackSection = field(default_factory=PackSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)


# ---------------------------------------------------------------------------------------------
# What each command reads: a section name -> None (all of it) or the keys it reads.

ALL = None
_RUN = {"checkpoint": ALL, "metrics": ALL, "recovery": ALL, "faults": ALL}  # what the Trainer reads of any stage
_START = ("init_from", "dtype", "export_dtype")  # post-training starts from a model and exports one
_DP = ("dp_replicate", "dp_shard", "reshard_after_forward", "sdc_check_interval", "watchdog_timeout")
_PAIRS = ("steps", "epochs", "seq_len", "batch_size", "micro_batch_size", "compile", "activation_checkpoint",
          "device")  # fmt: skip
_POSTTRAIN = {"model.init_from": "smollm2-135m-instruct", "optim.lr": 1e-5, "optim.weight_decay": 0.0,
              "lr_schedule.warmup_steps": 0, "lr_schedule.decay": "linear",
              "lr_schedule.min_lr_ratio": 0.0}  # fmt: skip


@dataclass(frozen=True)
class Command:
    reads: dict[str, tuple[str, ...] | None]
    defaults: dict[str, Any] = field(default_factory=dict)
    """`section.key` -> this command's default where it differs from the dataclass default."""
    cli: str = ""
    """How the command is typed after `herd`, where it differs from its name."""


COMMANDS: dict[str, Command] = {
    "train": Command(
        reads={"job": ALL, "model": tuple(f for f in ModelSection.__dataclass_fields__ if f != "export_dtype"),
               "data": ("shards", "weights", "chunk_tokens"), "optim": ALL, "lr_schedule": ALL,
               "training": ("steps", "seq_len", "batch_tokens", "micro_batch_tokens", "ramp", "compile",
                            "activation_checkpoint", "device"),
               "parallel": ALL, "anneal": ALL, **_RUN},
        defaults={"job.dump_folder": "runs/pretrain"},
    ),
    "sft": Command(
        reads={"job": ALL, "model": _START, "lora": ALL, "data": ("files", "on_error"), "optim": ALL,
               "lr_schedule": ALL, "training": ("steps", "seq_len", "batch_tokens", "micro_batch_tokens", "compile",
                                                "activation_checkpoint", "device"),
               "parallel": ALL, **_RUN},
        defaults={"job.dump_folder": "runs/sft", "model.init_from": "smollm2-135m-instruct"},
    ),
    "rm": Command(
        reads={"job": ALL, "model": _START, "lora": ALL, "data": ("files", "eval_fraction", "on_error"),
               "optim": ALL, "lr_schedule": ALL, "training": _PAIRS, "parallel": _DP, **_RUN, "rm": ALL},
        defaults={"job.dump_folder": "runs/rm", **_POSTTRAIN, "model.dtype": "bfloat16", "training.epochs": 1.0,
                  "training.seq_len": 512, "training.micro_batch_size": 4},
    ),
    "dpo": Command(
        reads={"job": ALL, "model": _START, "lora": ALL, "data": ("files", "eval_fraction", "on_error"),
               "optim": ALL, "lr_schedule": ALL, "training": _PAIRS, "parallel": _DP, **_RUN, "dpo": ALL},
        defaults={"job.dump_folder": "runs/dpo", **_POSTTRAIN, "model.dtype": "bfloat16", "training.epochs": 1.0,
                  "training.seq_len": 512, "training.micro_batch_size": 4},
    ),
    "ppo": Command(
        reads={"job": ALL, "model": _START, "lora": ALL, "data": ("files", "on_error"), "optim": ALL,
               "lr_schedule": ALL, "training": ("steps", "batch_size", "micro_batch_size", "device"), **_RUN,
               "ppo": ALL},
        # The PPO loss can be negative: a spike test on its running mean would mean nothing.
        defaults={"job.dump_folder": "runs/ppo", **_POSTTRAIN, "lr_schedule.decay": "constant",
                  "training.steps": 40, "checkpoint.interval": 10, "recovery.spike_factor": 0.0},
    ),
    "rs": Command(
        reads={"job": ("dump_folder", "seed"), "model": ("init_from", "dtype"), "data": ("files", "on_error"),
               "training": ("device",), "rs": ALL},
        defaults={"job.dump_folder": "runs/rs", "model.init_from": "smollm2-135m-instruct",
                  "model.dtype": "bfloat16"},
    ),
    "synth": Command(
        reads={"job": ("dump_folder", "seed"), "model": ("init_from",), "synth": ALL},
        defaults={"job.dump_folder": "runs/synth", "model.init_from": "smollm2-135m-instruct"},
    ),
    "round": Command(
        reads={"job": ("dump_folder", "seed"), "model": ("init_from",), "round": ALL, "synth": ALL},
        defaults={"job.dump_folder": "runs/round", "model.init_from": "smollm2-135m-instruct"},
    ),
    "curate": Command(reads={"job": ("dump_folder",), "curate": ALL}, defaults={"job.dump_folder": "runs/curate"},
                      cli="data curate"),
    "pack": Command(reads={"job": ("dump_folder",), "pack": ALL}, defaults={"job.dump_folder": "runs/shards"},
                    cli="data pack"),
    "scaling": Command(
        reads={"job": ("dump_folder", "seed"), "pack": ("input", "tokenizer", "source_field"), "model": ("preset",),
               "optim": ALL, "lr_schedule": ("decay", "min_lr_ratio"), "training": ("seq_len", "batch_tokens",
                                                                                      "device"),
               "scaling": ALL},
        defaults={"job.dump_folder": "runs/scaling/tiny", "pack.input": ["runs/curate/kept"],
                  "pack.tokenizer": "runs/tok/tokenizer.model", "pack.source_field": "domain", "optim.lr": 3e-3,
                  "training.batch_tokens": 4096},
        cli="scaling sweep",
    ),
}  # fmt: skip

# Keys of earlier layouts -> where they live now (or why they are gone).
MOVED = {
    **{f"posttrain.{k}": v for k, v in (("init_from", "model.init_from"), ("sft_data", "data.files"),
                                        ("on_error", "data.on_error"), ("lora_rank", "lora.rank"),
                                        ("lora_alpha", "lora.alpha"), ("lora_targets", "lora.targets"))},
    **{f"model.lora_{k}": f"lora.{k}" for k in ("rank", "alpha", "dropout", "targets")},
    "training.dtype": "model.dtype",
    "optim.warmup_steps": "lr_schedule.warmup_steps",
    **{f"optim.{k}": f"training.{k}" for k in ("epochs", "batch_size", "micro_batch_size")},
    "data.train": "data.files",
    "data.max_seq_len": "training.seq_len",
    "rs.output": "nothing: herd rs writes rs.jsonl and rs_pairs.jsonl into job.dump_folder",
    "ppo.steps": "training.steps (now counted in optimizer steps: rollouts x ppo.epochs)",
    "ppo.prompts_per_step": "training.batch_size",
    "ppo.ppo_epochs": "ppo.epochs",
    **{f"{s}.{k}": v for s in ("round", "synth", "scaling") for k, v in (
        ("dump_folder", "job.dump_folder"), ("output", "job.dump_folder"), ("seed", "job.seed"),
        ("init_from", "model.init_from"), ("model", "model.init_from"))},
    "curate.output": "job.dump_folder",
    "pack.output": "job.dump_folder",
    **{f"scaling.{k}": v for k, v in (("lr", "optim.lr"), ("seq_len", "training.seq_len"),
                                      ("batch_tokens", "training.batch_tokens"),
                                      ("min_lr_ratio", "lr_schedule.min_lr_ratio"), ("input", "pack.input"),
                                      ("tokenizer", "pack.tokenizer"), ("source_field", "pack.source_field"))},
}  # fmt: skip


def load(
    command: str,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    tables: dict[str, Any] | None = None,
    tables_source: str = "",
    checked: bool = True,
) -> JobConfig:
    """`command`'s config: dataclass defaults <- its defaults <- the TOML file at `path` <- `tables` (sections
    given as parsed TOML, e.g. a `herd run` recipe's stage tables, named `tables_source` in errors) <-
    `section.key=value` overrides; checked (herd/config/checks.py) before it is returned, unless `checked` is
    False (a caller that fills in paths first, then calls `check`)."""
    if command not in COMMANDS:
        raise ConfigError(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}")
    raw = read_toml(path)
    source = str(path or "defaults")
    _check_keys(raw, command, source)
    if tables:
        given = copy.deepcopy(tables)
        _check_keys(given, command, tables_source or "tables")
        _merge(raw, given, JobConfig)
        source = tables_source or source
    for item in overrides or []:
        one: dict[str, Any] = {}
        key = item.removeprefix("--").partition("=")[0]
        _check_moved(key, command, f"override {item!r}")
        apply_override(JobConfig, one, item)
        _check_keys(one, command, f"override {item!r}")
        _merge(raw, one, JobConfig)
    merged = _expand(COMMANDS[command].defaults)
    _merge(merged, raw, JobConfig)
    cfg = build(JobConfig, merged, source=source)
    if checked:
        check(cfg, command)
    return cfg


def defaults(command: str) -> JobConfig:
    """`command`'s config with nothing set: for composing stages in Python."""
    return build(JobConfig, _expand(COMMANDS[command].defaults), source=f"{command} defaults")


def save(cfg: JobConfig, command: str, path: str | Path) -> None:
    """Write the keys `command` reads as TOML (the resolved config of a run, reloadable with `load`)."""
    from herd.fileio import atomic_file

    with atomic_file(Path(path), "w") as f:
        f.write(dump(cfg, command))


def dump(cfg: JobConfig, command: str) -> str:
    reads = COMMANDS[command].reads

    def keep(dotted: str) -> bool:
        section, _, key = dotted.partition(".")
        if section not in reads:
            return False
        wanted = reads[section]
        return wanted is None or not key or key.partition(".")[0] in wanted

    return to_toml(cfg, keep)


def _check_keys(raw: dict[str, Any], command: str, source: str) -> None:
    reads, typed = COMMANDS[command].reads, COMMANDS[command].cli or command
    for section, table in raw.items():
        if not isinstance(table, dict):
            _check_moved(section, command, source)
            continue
        for key in table:
            _check_moved(f"{section}.{key}", command, source)
        if section not in JobConfig.__dataclass_fields__:
            raise ConfigError(
                f"{source}: unknown section [{section}]; sections: {', '.join(JobConfig.__dataclass_fields__)}"
            )
        if section not in reads:
            raise ConfigError(f"{source}: herd {typed} does not read [{section}] (it reads "
                              f"{', '.join(f'[{s}]' for s in reads)}); remove it")  # fmt: skip
        wanted = reads[section]
        for key in table:
            if wanted is not None and key in _fields(section) and key not in wanted:
                raise ConfigError(f"{source}: herd {typed} does not read {section}.{key} (of [{section}] it "
                                  f"reads {', '.join(wanted)}); remove it")  # fmt: skip


def _check_moved(dotted: str, command: str, source: str) -> None:
    if dotted in MOVED:
        where = MOVED[dotted]
        verb = "moved to" if not where.startswith("nothing") else "was removed; it does"
        raise ConfigError(f"{source}: {dotted} {verb} {where}")
    if "." not in dotted and command == "pack" and dotted in PackSection.__dataclass_fields__ | {"output": None}:
        # `herd data pack --config` files used to hold PackConfig's keys at the top level.
        new = "job.dump_folder" if dotted == "output" else f"pack.{dotted}"
        raise ConfigError(f"{source}: {dotted} moved to {new}")


def _fields(section: str) -> set[str]:
    return set(typing.get_type_hints(JobConfig)[section].__dataclass_fields__)


def _expand(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        section, key = dotted.split(".")
        out.setdefault(section, {})[key] = copy.deepcopy(value)
    return out


def _merge(into: dict[str, Any], other: dict[str, Any], cls: type) -> None:
    """Tables of sections merge key by key; any other value (a dict-valued key included) replaces."""
    hints = typing.get_type_hints(cls)
    for key, value in other.items():
        hint = hints.get(key)
        if isinstance(value, dict) and isinstance(into.get(key), dict) and dataclasses.is_dataclass(hint):
            _merge(into[key], value, hint)  # type: ignore[arg-type]
        else:
            into[key] = value
