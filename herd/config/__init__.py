"""One config tree for every command: `JobConfig`, its sections, what each command reads, and the loader.

    from herd.config import load
    cfg = load("train", "configs/pretrain/tiny.toml", ["training.steps=30"])

This package imports nothing else from herd (but its errors): every stage may depend on it.
"""

from herd.config.checks import check, check_layout
from herd.config.job import COMMANDS, MOVED, JobConfig, defaults, dump, load, save
from herd.config.loader import ConfigError, build, load_as, to_toml
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
    RampStage,
    RecoverySection,
    ScheduleSection,
    TrainingSection,
)
from herd.config.stages import (
    CurateSection,
    DedupSection,
    DPOSection,
    HeuristicsSection,
    LanguageSection,
    PackSection,
    PPOSection,
    QualitySection,
    RejectionSection,
    RewardSection,
    RoundSection,
    ScalingSection,
    SweepSize,
    SynthSection,
    UrlSection,
)

__all__ = [
    "COMMANDS",
    "MOVED",
    "AnnealSection",
    "CheckpointSection",
    "ConfigError",
    "CurateSection",
    "DPOSection",
    "DataSection",
    "DedupSection",
    "FaultsSection",
    "HeuristicsSection",
    "JobConfig",
    "JobSection",
    "LanguageSection",
    "LoraSection",
    "MetricsSection",
    "ModelSection",
    "OptimSection",
    "PPOSection",
    "PackSection",
    "ParallelSection",
    "QualitySection",
    "RampStage",
    "RecoverySection",
    "RejectionSection",
    "RewardSection",
    "RoundSection",
    "ScalingSection",
    "ScheduleSection",
    "SweepSize",
    "SynthSection",
    "TrainingSection",
    "UrlSection",
    "build",
    "check",
    "check_layout",
    "defaults",
    "dump",
    "load",
    "load_as",
    "save",
    "to_toml",
]
