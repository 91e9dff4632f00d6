"""What a stage trains, for the one Trainer: the module around the transformer, the batches and the loss.

The Trainer (herd/train/trainer.py) owns everything else: the mesh and parallelism, AdamW and the learning-rate
schedule, checkpoints with exact resume, NaN and spike recovery, metrics. Pretraining and SFT are
`LanguageModeling` over two loaders; the reward model, DPO and PPO (herd/posttrain) are objectives too, so each
stage gets all of that by supplying:

    wrap(transformer)          the module that trains: the transformer itself, or it with a head
    prepare(module, ...)       once, on the plain module, before parallelism (DPO caches reference log-probs)
    total_steps(cfg)           optimizer steps (from the config, or from epochs over the examples)
    next_batch(plan)           the global batch of a step: every rank draws the same and keeps its share
    split(rows, plan)          a rank's share -> micro-batches
    loss(module, micro)        the micro-batch's loss summed over its units, and metric sums
    state_dict()               the data position (JSON), saved with every checkpoint

A loss is summed over units (target tokens, pairs, response tokens) and divided by the count in the whole global
batch (`batch.count`), so accumulation and data-parallel sharding give the same update as one big batch. Metric
sums are divided by the same count, so they are means per unit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from herd.config import JobConfig
from herd.data.loader import IGNORE_INDEX, Batch
from herd.errors import TrainError
from herd.model import Transformer, document_mask, document_positions
from herd.train.schedule import StepPlan


class StepBatch(Protocol):
    """A global batch as the Trainer sees it."""

    index: int
    """How many batches were drawn before this one (0-based); stable across resumes."""

    @property
    def count(self) -> int:
        """Units the loss is a mean over (target tokens, pairs, response tokens)."""
        ...

    @property
    def num_tokens(self) -> int:
        """Tokens the model reads in a forward pass over the batch (for throughput and MFU)."""
        ...

    @property
    def seq_len(self) -> int:
        """The longest row (for the attention term of the FLOPs count)."""
        ...

    def shard(self, rank: int, world_size: int) -> Any: ...


class Objective:
    """The defaults are language modeling's where one exists; subclasses override what differs."""

    name = "objective"
    vocab_size: int
    """The model must have at least this many embeddings."""
    tokenizer: dict[str, Any]
    """The tokenizer's identity (spec, file hashes), saved in the train state."""
    tokenizer_files: list[Path]
    """Copied into every checkpoint, so a checkpoint directory exports on its own."""
    sparse_logits = False
    """Set by the Trainer: whether the output projection may run at target positions only (not under TP or PP)."""

    def wrap(self, transformer: Transformer) -> nn.Module:
        return transformer

    def prepare(self, module: nn.Module) -> None:
        """Called once on the plain module (before parallelism and before a checkpoint is restored)."""

    def total_steps(self, cfg: JobConfig) -> int:
        return cfg.training.steps

    def longest(self, cfg: JobConfig) -> int:
        """The longest row the model will see (its context must hold it)."""
        return max([cfg.training.seq_len, *(r.seq_len for r in cfg.training.ramp)])

    def begin_step(self, plan: StepPlan) -> list[tuple[str, str]]:
        """Events (name, reason) to log before the step's batch is drawn."""
        return []

    def next_batch(self, plan: StepPlan) -> StepBatch:
        raise NotImplementedError

    def split(self, rows: Any, plan: StepPlan) -> list[Any]:
        raise NotImplementedError

    def loss(self, module: nn.Module, micro: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def record(self) -> dict[str, float]:
        """Extra fields for this step's metrics record (PPO's rollout statistics)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class Loader(Protocol):
    """What LanguageModeling draws from: herd/data/loader.py's MixLoader (token shards) or the dialog loader of
    herd/posttrain/loader.py."""

    vocab_size: int
    tokenizer: dict[str, Any]
    tokenizer_dir: Path
    names: list[str]
    weights: dict[str, float]

    def next_batch(self, rows: int, seq_len: int) -> Batch: ...
    def set_weights(self, weights: dict[str, float]) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LanguageModeling(Objective):
    """Next-token prediction over packed, document-masked rows: pretraining on token shards, SFT on dialogs (whose
    targets are the assistant turns only)."""

    name = "lm"

    def __init__(self, loader: Loader, cfg: JobConfig, *, tokenizer_files: list[Path]) -> None:
        self.loader, self.cfg = loader, cfg
        self.vocab_size, self.tokenizer = loader.vocab_size, loader.tokenizer
        self.tokenizer_files = tokenizer_files

    def begin_step(self, plan: StepPlan) -> list[tuple[str, str]]:
        anneal = self.cfg.anneal.weights
        if plan.phase != "anneal" or not anneal:
            return []
        total = sum(anneal.values())
        target = {n: anneal.get(n, 0.0) / total for n in self.loader.names}
        if self.loader.weights == target:
            return []
        self.loader.set_weights(anneal)
        mix = ", ".join(f"{k}={v:.2f}" for k, v in self.loader.weights.items())
        return [("anneal", f"learning rate to 0 over the last {self.cfg.anneal.tokens} tokens; mix {mix}")]

    def next_batch(self, plan: StepPlan) -> Batch:
        return self.loader.next_batch(plan.batch_tokens // plan.seq_len, plan.seq_len)

    def split(self, rows: Batch, plan: StepPlan) -> list[Batch]:
        micro_tokens = self.cfg.training.micro_batch_tokens or rows.tokens.numel()
        return rows.split(micro_tokens // plan.seq_len)

    def loss(self, module: nn.Module, micro: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = next(module.parameters()).device
        keep = micro.targets != IGNORE_INDEX
        # SFT rows target a fraction of their tokens (assistant turns): the output projection and the cross-entropy
        # then run on those positions only. Decided on the loader's host tensor, so an accelerator never syncs.
        sparse = self.sparse_logits and float(keep.float().mean()) < 0.5
        tokens, targets, doc_ids = micro.tokens.to(device), micro.targets.to(device), micro.doc_ids.to(device)
        out = module(tokens, positions_BT=document_positions(doc_ids), mask=document_mask(doc_ids),
                     output_mask=keep.to(device) if sparse else None)  # fmt: skip
        if sparse:
            return summed_cross_entropy(out[None], targets[keep.to(device)][None]), {}
        return summed_cross_entropy(out, targets), {}

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


def summed_cross_entropy(logits_BTV: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the targets (IGNORE_INDEX left out), in float32; callers divide by the count."""
    return F.cross_entropy(
        logits_BTV.flatten(0, 1).float(), targets_BT.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def epoch_steps(cfg: JobConfig, examples: int) -> int:
    """training.steps, or ceil(epochs x examples / batch_size) when training.epochs is set."""
    t = cfg.training
    if not t.epochs:
        return t.steps
    if examples < 1:
        raise TrainError("no training examples")
    return max(1, math.ceil(t.epochs * examples / t.batch_size))
