"""The Llama 3 model: arguments and presets, the transformer, and masks for packed sequences."""

from herd.model.args import PRESETS, ModelArgs, RopeScaling, count_params, flops_per_token, get_preset
from herd.model.llama import Transformer, build_model, causal_mask, document_mask, document_positions

__all__ = [
    "PRESETS",
    "ModelArgs",
    "RopeScaling",
    "Transformer",
    "build_model",
    "causal_mask",
    "count_params",
    "document_mask",
    "document_positions",
    "flops_per_token",
    "get_preset",
]
