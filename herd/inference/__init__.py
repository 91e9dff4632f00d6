"""Generation: sampling and the batched KV-cache engine (models load through herd.formats.load_pretrained)."""

from herd.inference.engine import Completion, Engine, TokenEvent
from herd.inference.sampling import SamplingParams

__all__ = ["Completion", "Engine", "SamplingParams", "TokenEvent"]
