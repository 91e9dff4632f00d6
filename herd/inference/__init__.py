"""Generation: sampling and the batched KV-cache engine (models load through herd.formats.load_pretrained)."""

from herd.inference.engine import Completion, Engine, TokenEvent
from herd.inference.sampling import SamplingParams
from herd.inference.speculative import SpeculativeConfig, SpeculativeStats

__all__ = ["Completion", "Engine", "SamplingParams", "SpeculativeConfig", "SpeculativeStats", "TokenEvent"]
