"""Parallelism applied to a plain model from outside: the mesh, FSDP2, tensor parallel, activation checkpointing
and compile (herd/parallel/parallelize.py), and the process-group plumbing (herd/parallel/distributed.py)."""

from herd.parallel.dims import ParallelDims, ParallelError
from herd.parallel.parallelize import apply_activation_checkpointing, apply_compile, apply_fsdp, apply_tp

__all__ = ["ParallelDims", "ParallelError", "apply_activation_checkpointing", "apply_compile", "apply_fsdp", "apply_tp"]
