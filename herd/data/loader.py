"""The training-time loader: token shards from `herd data pack` -> packed, document-masked batches.

Sources (one per name in the pack manifests) are mixed by weight: each slot of a sequence is filled by drawing a
source with a seeded RNG and taking that source's next chunk of a document (or what is left of it). Chunks are
packed back to back into rows of seq_len + 1 tokens; `doc_ids` numbers the pieces within a row so that the
model's attention mask never crosses a boundary, and a target whose token belongs to another piece than its input
is ignored. A chunk longer than the room left is split; its next piece starts the next row where it stopped.

Every source walks its shards in a seeded order and each shard's chunks in a seeded order, both reshuffled every
epoch. The whole position (per source: epoch, shard, chunk, offset; the mixing RNG; batches drawn) is
`state_dict()`, so a resumed run draws exactly the batches an uninterrupted run would.

Every rank builds the same global batch and keeps its own rows (see `Batch.shard`): packing costs little next to
a step, and it makes the data order independent of the number of ranks, so a run can resume on another layout.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from herd.data.pack import MANIFEST, TOKENIZER_DIR
from herd.data.shards import Shard
from herd.errors import DataError

IGNORE_INDEX = -100


@dataclass(slots=True)
class Batch:
    """Global batch of B rows: inputs, targets (IGNORE_INDEX where no target), and document ids per token."""

    tokens: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64
    doc_ids: torch.Tensor  # (B, T) int64, 0.. within each row
    index: int
    """How many batches the loader had drawn before this one (0-based); stable across resumes."""

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    count = num_targets
    """What the trainer divides the summed loss by."""

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def shard(self, rank: int, world_size: int) -> Batch:
        """Rows rank, rank + world_size, ... (a data-parallel rank's part)."""
        sl = slice(rank, None, world_size)
        tokens, targets, doc_ids = (t[sl].contiguous() for t in (self.tokens, self.targets, self.doc_ids))
        return Batch(tokens, targets, doc_ids, self.index)

    def split(self, micro_rows: int) -> list[Batch]:
        return [
            Batch(self.tokens[i : i + micro_rows], self.targets[i : i + micro_rows], self.doc_ids[i : i + micro_rows],
                  self.index)
            for i in range(0, self.tokens.shape[0], micro_rows)
        ]  # fmt: skip


class SourceStream:
    """One source's tokens as chunks of documents, in a seeded order that changes every epoch.

    Documents are cut into chunks of at most `chunk_tokens` (consecutive chunks of a document share one token, so
    every token but a document's first is a target exactly once). Shards are visited in a seeded order and each
    shard's chunks in a seeded order: a batch then holds pieces of many documents, not a few long ones.
    """

    def __init__(self, name: str, shards: list[Shard], *, seed: int, chunk_tokens: int) -> None:
        if chunk_tokens < 2:
            raise DataError(f"chunk_tokens={chunk_tokens} must be at least 2")
        self.name, self.shards, self.seed, self.chunk_tokens = name, shards, seed, chunk_tokens
        self.key = zlib.crc32(name.encode())
        self.epoch = self.shard_pos = self.chunk_pos = self.offset = 0
        self.num_tokens = sum(s.num_tokens for s in shards)
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        if not self.num_tokens:
            raise DataError(f"source {name!r}: its shards hold no tokens")

    def _shard_order(self) -> np.ndarray:
        key = (self.epoch, -1)
        if key not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k[0] == self.epoch}
            self._orders[key] = np.random.default_rng([self.seed, self.key, self.epoch]).permutation(len(self.shards))
        return self._orders[key]

    def _chunks(self, shard: int) -> np.ndarray:
        """(n, 2) [start, end) token ranges of the shard's chunks, in this epoch's order."""
        key = (self.epoch, shard)
        if key not in self._orders:
            offsets = np.asarray(self.shards[shard].doc_offsets, dtype=np.int64)
            starts, lengths = offsets[:-1], np.diff(offsets)
            starts, lengths = starts[lengths > 0], lengths[lengths > 0]
            stride = self.chunk_tokens - 1
            counts = np.maximum(1, -(-(lengths - 1) // stride))  # ceil((L - 1) / stride), at least 1
            doc = np.repeat(np.arange(len(starts)), counts)
            first = np.cumsum(counts) - counts
            chunk_start = starts[doc] + (np.arange(len(doc)) - first[doc]) * stride
            chunk_end = np.minimum(chunk_start + self.chunk_tokens, starts[doc] + lengths[doc])
            order = np.random.default_rng([self.seed, self.key, self.epoch, shard]).permutation(len(doc))
            self._orders[key] = np.stack([chunk_start, chunk_end], axis=1)[order]
        return self._orders[key]

    def take(self, room: int) -> np.ndarray:
        """Up to `room` tokens of the current chunk, moving past exhausted shards and epochs.

        A piece that does not finish its chunk ends on the token the next piece starts with: that token is only a
        target in this row and only an input in the next, so no prediction is lost.
        """
        while True:
            if self.shard_pos >= len(self.shards):
                self.epoch, self.shard_pos, self.chunk_pos, self.offset = self.epoch + 1, 0, 0, 0
            shard_idx = int(self._shard_order()[self.shard_pos])
            chunks = self._chunks(shard_idx)
            if self.chunk_pos < len(chunks):
                break
            self.shard_pos, self.chunk_pos, self.offset = self.shard_pos + 1, 0, 0
        start, end = (int(x) for x in chunks[self.chunk_pos])
        piece = self.shards[shard_idx].tokens[start + self.offset : min(end, start + self.offset + room)]
        if start + self.offset + room >= end:
            self.chunk_pos, self.offset = self.chunk_pos + 1, 0
        else:
            self.offset += room - 1
        return piece

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "chunk_pos": self.chunk_pos, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.shard_pos = int(state["epoch"]), int(state["shard_pos"])
        self.chunk_pos, self.offset = int(state["chunk_pos"]), int(state["offset"])


class MixLoader:
    """Draws packed batches from several sources by weight; deterministic for a seed and resumable."""

    def __init__(
        self, pack_dirs: list[str], *, weights: dict[str, float] | None = None, seed: int = 0, chunk_tokens: int = 8193
    ) -> None:
        if not pack_dirs:
            raise DataError("data.shards is empty: give the directories `herd data pack` wrote")
        shards: dict[str, list[Shard]] = {}
        tokenizer: dict[str, Any] | None = None
        self.tokenizer_dir = Path(pack_dirs[0]) / TOKENIZER_DIR
        """The copy of the tokenizer files that `herd data pack` keeps beside the shards."""
        for d in pack_dirs:
            manifest = _read_manifest(Path(d))
            identity = {k: v for k, v in manifest["tokenizer"].items() if k != "spec"}
            if tokenizer is not None and {k: v for k, v in tokenizer.items() if k != "spec"} != identity:
                raise DataError(f"{d}: packed with a different tokenizer than {pack_dirs[0]}; pack both alike")
            tokenizer = tokenizer or manifest["tokenizer"]
            for name, src in sorted(manifest["sources"].items()):
                shards.setdefault(name, []).extend(Shard(Path(d) / s["path"]) for s in src["shards"])
        assert tokenizer is not None  # pack_dirs is not empty and every manifest has one
        self.tokenizer: dict[str, Any] = tokenizer
        self.vocab_size = int(self.tokenizer["vocab_size"])
        self.sources = {
            name: SourceStream(name, s, seed=seed, chunk_tokens=chunk_tokens) for name, s in sorted(shards.items())
        }
        self.names = list(self.sources)
        self.rng = np.random.default_rng(seed)
        self.batches = 0
        self.drawn = dict.fromkeys(self.names, 0)
        """Tokens taken from each source so far: the mix as it happened."""
        self.set_weights(weights or {})

    def set_weights(self, weights: dict[str, float]) -> None:
        """Mix weights by source name (normalized); empty means in proportion to each source's tokens."""
        if unknown := sorted(set(weights) - set(self.sources)):
            raise DataError(f"mix weight for unknown source {unknown[0]!r}; the shards hold {', '.join(self.names)}")
        if not weights:
            weights = {n: float(s.num_tokens) for n, s in self.sources.items()}
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise DataError(f"mix weights {weights} must be >= 0 with a positive sum")
        total = sum(weights.values())
        self.weights = {n: weights.get(n, 0.0) / total for n in self.names}
        self._p = np.array([self.weights[n] for n in self.names])

    def next_batch(self, rows: int, seq_len: int) -> Batch:
        row_tokens = np.empty((rows, seq_len + 1), dtype=np.int64)
        row_docs = np.empty((rows, seq_len + 1), dtype=np.int64)
        for r in range(rows):
            filled, doc = 0, 0
            while filled < seq_len + 1:
                name = self.names[self.rng.choice(len(self.names), p=self._p)]
                piece = self.sources[name].take(seq_len + 1 - filled)
                self.drawn[name] += len(piece)
                row_tokens[r, filled : filled + len(piece)] = piece
                row_docs[r, filled : filled + len(piece)] = doc
                filled, doc = filled + len(piece), doc + 1
        tokens = torch.from_numpy(row_tokens[:, :-1].copy())
        targets = torch.from_numpy(row_tokens[:, 1:].copy())
        doc_ids = torch.from_numpy(row_docs[:, :-1].copy())
        targets[doc_ids != torch.from_numpy(row_docs[:, 1:])] = IGNORE_INDEX
        batch = Batch(tokens, targets, doc_ids, self.batches)
        self.batches += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "rng": self.rng.bit_generator.state,
            "weights": self.weights,
            "drawn": self.drawn,
            "sources": {n: s.state_dict() for n, s in self.sources.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if sorted(state["sources"]) != self.names:
            raise DataError(
                f"the checkpoint's data sources {sorted(state['sources'])} differ from the shards' {self.names}"
            )
        self.batches = int(state["batches"])
        self.rng.bit_generator.state = state["rng"]
        self.set_weights(state["weights"])
        self.drawn = {n: int(state["drawn"][n]) for n in self.names}
        for n, s in state["sources"].items():
            self.sources[n].load_state_dict(s)


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(f"{file}: not found; is {path} a directory written by `herd data pack`?") from None
    except (OSError, ValueError) as e:  # ValueError: invalid JSON or not UTF-8
        raise DataError(f"{file}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{file}: expected a JSON object; is this a `herd data pack` manifest?")
    for key in ("tokenizer", "sources"):
        if not isinstance(manifest.get(key), dict):
            raise DataError(f"{file}: no {key!r} object; is this a `herd data pack` manifest?")
    vocab = manifest["tokenizer"].get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
        raise DataError(f"{file}: tokenizer.vocab_size must be a positive integer, got {vocab!r}")
    for name, source in manifest["sources"].items():
        shards = source.get("shards") if isinstance(source, dict) else None
        if not isinstance(shards, list):
            raise DataError(f"{file}: source {name!r} has no list of shards")
        for shard in shards:
            where = shard.get("path") if isinstance(shard, dict) else None
            if not isinstance(where, str):
                raise DataError(f"{file}: source {name!r}: a shard without a path")
            if Path(where).is_absolute() or ".." in Path(where).parts:  # a manifest is data: stay in its directory
                raise DataError(f"{file}: source {name!r}: shard path {where!r} leaves {path}")
    return manifest
