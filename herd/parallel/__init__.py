"""Transforms applied to a plain model from outside: activation checkpointing and compile (FSDP/TP/PP next)."""

from herd.parallel.parallelize import apply_activation_checkpointing, apply_compile

__all__ = ["apply_activation_checkpointing", "apply_compile"]
