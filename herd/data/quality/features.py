"""Hashed n-gram features (the hashing trick, as fastText does): text -> a sparse unit vector over `num_buckets`.

`Featurizer` is shared by the quality and domain classifiers; its hashes (crc32 and `mix64`) are the same in every
process, so every worker computes the same features.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from herd.data.hashing import mix64
from herd.errors import DataError

# On UTF-8 bytes, with every non-ASCII byte counted as a word byte: tokenizing bytes is 1.5x faster than str, and
# words of any script stay whole (non-ASCII punctuation then sticks to its word, which costs little here).
_TOKEN = re.compile(rb"[\w\x80-\xff]+|[^\w\s\x80-\xff]+")
_SPACES = re.compile(r"\s+")
_SALT_UNIGRAM, _SALT_BIGRAM = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD1B54A32D192ED03)
_CHAR_BASE = np.uint64(0x100000001B3)


def _counts_to_features(hashes: np.ndarray, num_buckets: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    buckets, counts = np.unique(hashes % np.uint64(num_buckets), return_counts=True)
    counts = counts.astype(np.float32)
    return buckets.astype(np.int64), counts * np.float32(scale / math.sqrt(float(counts @ counts)))


@dataclass(frozen=True)
class Featurizer:
    """Text -> sparse vector over `num_buckets` hashed features (the hashing trick, as fastText does).

    Each feature group (word n-grams up to `word_ngrams`, and each character n-gram size) is counted, L2-normalized
    and weighted 1/sqrt(groups), so a document's vector has unit norm whatever its length. Hashes use crc32 and a
    fixed mixer, never Python's per-process salted `hash`, so every worker computes the same features.
    """

    num_buckets: int = 1 << 18
    word_ngrams: int = 2
    char_ngrams: tuple[int, ...] = ()
    max_chars: int = 20_000
    """Only the start of longer documents is read: it keeps the cost per document bounded."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_buckets <= 1 << 30:
            raise DataError(f"num_buckets must be in [1, 2**30], got {self.num_buckets}")
        if self.word_ngrams not in (0, 1, 2):
            raise DataError(f"word_ngrams must be 0, 1 or 2, got {self.word_ngrams}")
        if any(not 1 <= n <= 8 for n in self.char_ngrams) or (self.word_ngrams == 0 and not self.char_ngrams):
            raise DataError(f"char_ngrams must be sizes in 1..8 (or word_ngrams > 0), got {self.char_ngrams}")

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(bucket ids, values) of one text; duplicates across groups are allowed (they add up)."""
        text = text[: self.max_chars].lower()
        groups: list[np.ndarray] = []
        if self.word_ngrams:
            tokens = _TOKEN.findall(text.encode("utf-8", "surrogatepass"))
            if tokens:
                words = np.fromiter(map(zlib.crc32, tokens), np.uint64, len(tokens))
                groups.append(mix64(words ^ _SALT_UNIGRAM))
                if self.word_ngrams == 2 and len(words) > 1:
                    groups.append(mix64(((words[:-1] << np.uint64(32)) | words[1:]) ^ _SALT_BIGRAM))
        if self.char_ngrams:
            chars = " " + _SPACES.sub(" ", text).strip() + " "
            codes = np.frombuffer(chars.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
            for n in self.char_ngrams:
                if len(codes) < n:
                    continue
                h = np.full(len(codes) - n + 1, n, dtype=np.uint64)
                for j in range(n):
                    h = h * _CHAR_BASE + codes[j : len(codes) - n + 1 + j]
                groups.append(mix64(h))
        if not groups:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scale = 1.0 / math.sqrt(len(groups))
        parts = [_counts_to_features(g, self.num_buckets, scale) for g in groups]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR form of many texts: (indices, values, offsets) with row i at offsets[i]:offsets[i+1]."""
        rows = [self.features(t) for t in texts]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r[0]) for r in rows], out=offsets[1:])
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), offsets
        return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]), offsets
