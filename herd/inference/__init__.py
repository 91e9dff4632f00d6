"""Generation: sampling, the batched KV-cache engine, and loading models by name or path."""

from herd.inference.engine import Completion, Engine, TokenEvent
from herd.inference.loader import DEFAULT_MODEL, EMBEDDED, load_pretrained, resolve_model_path
from herd.inference.sampling import SamplingParams

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "Completion",
    "Engine",
    "SamplingParams",
    "TokenEvent",
    "load_pretrained",
    "resolve_model_path",
]
