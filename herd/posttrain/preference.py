"""Preference pairs -> batches, for the reward model and DPO (`PairObjective`, what both give the Trainer).

Each side of a pair is the prompt followed by one response as the assistant's turn, rendered by the dialog's own
chat format (herd/posttrain/data.py). Only the final turn is a target: earlier assistant turns belong to the prompt.
DPO also leaves the end-of-turn token (and whatever the template puts after it) out of the loss, as Llama 3
masks its formatting tokens; the header is part of the prompt already. Pairs are split into train and held-out
by a hash of the prompt, so one prompt never sits on both sides.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from herd.config import JobConfig
from herd.data.loader import IGNORE_INDEX
from herd.errors import DataError
from herd.posttrain.data import encode_dialog, read_jsonl
from herd.posttrain.stage import run_tokenizer
from herd.tokenizer import Tokenizer
from herd.train.objective import Objective, epoch_steps
from herd.train.schedule import StepPlan


@dataclass(slots=True)
class Side:
    ids: list[int]
    """The whole rendered dialog."""
    targets: list[int]
    """targets[i] = ids[i + 1] where that token is part of the final response's loss, else IGNORE_INDEX."""


@dataclass(slots=True)
class Pair:
    key: str
    chosen: Side
    rejected: Side
    edited: Side | None = None


def prompt_key(messages: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


def held_out(key: str, fraction: float, seed: int) -> bool:
    """Deterministic split: the same prompt lands on the same side for a given seed."""
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def encode_response(tokenizer: Tokenizer, messages: list[dict[str, Any]], response: str, *, content_only: bool) -> Side:
    """The prompt + `response` as the last assistant turn, with targets on that turn only (`content_only`: up to,
    not including, its end-of-turn token)."""
    ids, mask = encode_dialog(tokenizer, [*messages, {"role": "assistant", "content": response}])
    end = len(mask)
    while end > 0 and not mask[end - 1]:
        end -= 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    if content_only:
        stops = [i for i in range(start, end) if ids[i] in tokenizer.stop_ids]
        end = stops[0] if stops else end
    targets = [ids[i] if start <= i < end else IGNORE_INDEX for i in range(1, len(ids))]
    return Side(ids, targets)


@dataclass(slots=True)
class PairData:
    train: list[Pair]
    held_out: list[Pair]
    problems: list[str]
    """`file:line: reason` of every skipped line."""
    too_long: int


def load_pairs(
    files: list[str], tokenizer: Tokenizer, *, on_error: str, max_seq_len: int, eval_fraction: float, seed: int,
    content_only: bool, use_edited: bool = True,
) -> PairData:  # fmt: skip
    data = PairData([], [], [], 0)
    for file in files:
        result = read_jsonl(file, kind="preference", on_error=on_error)
        data.problems += result.problems
        for record in result.records:
            messages = record["messages"]

            def side(response: str, messages: list[dict[str, Any]] = messages) -> Side:
                return encode_response(tokenizer, messages, response, content_only=content_only)

            edited = side(record["edited"]) if use_edited and record.get("edited") else None
            pair = Pair(prompt_key(messages), side(record["chosen"]), side(record["rejected"]), edited)
            sides = [pair.chosen, pair.rejected] + ([edited] if edited else [])
            if max(len(s.ids) for s in sides) > max_seq_len:
                data.too_long += 1
                continue
            (data.held_out if held_out(pair.key, eval_fraction, seed) else data.train).append(pair)
    if not data.train:
        why = data.problems[:1]
        if data.too_long:
            why.append(f"{data.too_long} longer than training.seq_len={max_seq_len}")
        raise DataError(f"no usable training pairs in {', '.join(files)}" + (f" ({'; '.join(why)})" if why else ""))
    return data


@dataclass(slots=True)
class PairBatch:
    """A global batch of pairs, as the Trainer sees it (herd/train/objective.py): the loss is a mean over pairs."""

    pairs: list[Pair]
    index: int

    @property
    def count(self) -> int:
        return len(self.pairs)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.ids) for s in self._sides())

    @property
    def seq_len(self) -> int:
        return max((len(s.ids) for s in self._sides()), default=0)

    def _sides(self) -> list[Side]:
        return [s for p in self.pairs for s in (p.chosen, p.rejected, p.edited) if s is not None]

    def shard(self, rank: int, world_size: int) -> PairBatch:
        return PairBatch(self.pairs[rank::world_size], self.index)

    def split(self, size: int) -> list[list[Pair]]:
        size = size or len(self.pairs)
        return [self.pairs[i : i + size] for i in range(0, len(self.pairs), size)]


class PairSampler:
    """Batches of `batch_size` pairs from a seeded order that changes every epoch; the position is
    `state_dict()`, so a resumed run draws the batches an uninterrupted one would."""

    def __init__(self, pairs: list[Pair], batch_size: int, *, seed: int) -> None:
        self.pairs, self.batch_size, self.seed = pairs, batch_size, seed
        self.epoch = self.pos = self.batches = 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return torch.randperm(len(self.pairs), generator=generator).tolist()

    def next_batch(self) -> PairBatch:
        chosen = []
        for _ in range(self.batch_size):
            chosen.append(self.pairs[self._order[self.pos]])
            self.pos += 1
            if self.pos == len(self.pairs):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
        batch = PairBatch(chosen, self.batches)
        self.batches += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "batches": self.batches, "pairs": len(self.pairs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["pairs"] != len(self.pairs):
            raise DataError(f"the checkpoint was trained on {state['pairs']} pairs; these files hold {len(self.pairs)}")
        self.epoch, self.pos, self.batches = state["epoch"], state["pos"], state["batches"]
        self._order = self._permutation()


class PairObjective(Objective):
    """What the reward model and DPO share as objectives of the Trainer: batches of `training.batch_size` pairs
    drawn epoch by epoch, split into micro-batches of `training.micro_batch_size`; the loss is a mean over pairs.
    Subclasses give the module and the loss."""

    def __init__(self, cfg: JobConfig, data: PairData, tokenizer: Tokenizer) -> None:
        self.cfg, self.data = cfg, data
        self.sampler = PairSampler(data.train, cfg.training.batch_size, seed=cfg.job.seed)
        self.vocab_size = tokenizer.vocab_size
        self.run_dir = Path(cfg.job.dump_folder)
        self.tokenizer, self.tokenizer_files = run_tokenizer(tokenizer, self.run_dir)
        self.micro = cfg.training.micro_batch_size or cfg.training.batch_size
        """Pairs per forward (evaluation and DPO's reference pass use the same groups)."""

    def total_steps(self, cfg: JobConfig) -> int:
        return epoch_steps(cfg, len(self.data.train))

    def longest(self, cfg: JobConfig) -> int:
        return max(PairBatch(self.data.train + self.data.held_out, 0).seq_len, 1)

    def next_batch(self, plan: StepPlan) -> PairBatch:
        return self.sampler.next_batch()

    def split(self, rows: PairBatch, plan: StepPlan) -> list[list[Pair]]:
        return rows.split(self.cfg.training.micro_batch_size)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def pad(sides: list[Side], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (tokens, targets, last) for model(tokens): with causal attention a real token never sees the
    padding after it, so no mask is needed. `last` is each row's final real position."""
    T = max(len(s.ids) for s in sides)
    tokens = torch.zeros(len(sides), T, dtype=torch.long)
    targets = torch.full((len(sides), T), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(sides):
        tokens[i, : len(s.ids)] = torch.tensor(s.ids)
        targets[i, : len(s.targets)] = torch.tensor(s.targets)
    last = torch.tensor([len(s.ids) - 1 for s in sides])
    return tokens.to(device), targets.to(device), last.to(device)
