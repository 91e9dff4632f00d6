"""Token shards: a flat, memory-mappable token file with a versioned header and document boundaries.

Layout (little-endian), one file per shard:
    0   magic        8 bytes  b"HERDTOK\\0"
    8   version      u32      1
    12  token_bytes  u32      2 (uint16 ids, vocab <= 65536) or 4 (uint32)
    16  num_tokens   u64
    24  num_docs     u64
    32  reserved     32 bytes (zero)
    64  tokens       num_tokens x token_bytes
    ..  (zero padding to a multiple of 8)
    ..  doc_offsets  (num_docs + 1) x u64: document i is tokens[doc_offsets[i]:doc_offsets[i + 1]]
A reader checks magic, version, sizes and offsets before trusting a file, so a truncated or foreign file is an
error naming the file rather than garbage tokens. Files are written to a temp name and renamed when complete.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from herd.errors import DataError
from herd.fileio import atomic_file

MAGIC = b"HERDTOK\0"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQQ32x")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def write_shard(path: str | Path, docs: Sequence[Sequence[int]] | Sequence[np.ndarray], vocab_size: int) -> int:
    """Write documents (lists of token ids) as one shard; returns the number of tokens."""
    dtype = token_dtype(vocab_size)
    lengths = np.fromiter((len(d) for d in docs), dtype=np.uint64, count=len(docs))
    offsets = np.zeros(len(docs) + 1, dtype=np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if docs else np.zeros(0, np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise DataError(f"{path}: token id {int(tokens.max())} outside the vocabulary (size {vocab_size})")
    body = tokens.astype(dtype).tobytes()
    pad = b"\0" * (-(HEADER_BYTES + len(body)) % 8)
    with atomic_file(path) as f:
        f.write(_HEADER.pack(MAGIC, VERSION, dtype.itemsize, tokens.size, len(docs)))
        f.write(body)
        f.write(pad)
        f.write(offsets.astype("<u8").tobytes())
    return int(tokens.size)


class Shard:
    """A read-only, memory-mapped shard. `tokens` is a numpy view; nothing is read until it is used."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                header = f.read(HEADER_BYTES)
        except OSError as e:
            raise DataError(f"{self.path}: cannot read shard ({e.strerror})") from None
        if len(header) < HEADER_BYTES:
            raise DataError(f"{self.path}: truncated shard ({size} bytes, the header alone is {HEADER_BYTES})")
        magic, version, token_bytes, num_tokens, num_docs = _HEADER.unpack(header)
        if magic != MAGIC:
            raise DataError(f"{self.path}: not a herd token shard (magic {magic!r})")
        if version != VERSION:
            raise DataError(f"{self.path}: shard format version {version}; this herd reads version {VERSION}")
        if token_bytes not in (2, 4):
            raise DataError(f"{self.path}: token width {token_bytes} bytes is not 2 or 4")
        tokens_end = HEADER_BYTES + num_tokens * token_bytes
        offsets_start = tokens_end + (-tokens_end % 8)
        expected = offsets_start + 8 * (num_docs + 1)
        if size != expected:
            raise DataError(f"{self.path}: {size} bytes, the header promises {expected}: truncated or corrupt")
        dtype = np.uint16 if token_bytes == 2 else np.uint32
        self.tokens = np.memmap(self.path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(num_tokens,))
        self.doc_offsets = np.memmap(self.path, dtype="<u8", mode="r", offset=offsets_start, shape=(num_docs + 1,))
        # Compared pairwise, not by np.diff: the offsets are unsigned, and a decrease would wrap to a huge length.
        offsets = self.doc_offsets
        if offsets[0] != 0 or offsets[-1] != num_tokens or np.any(offsets[1:] < offsets[:-1]):
            raise DataError(f"{self.path}: document offsets are not increasing from 0 to {num_tokens}")
        self.num_tokens, self.num_docs = int(num_tokens), int(num_docs)

    def document(self, i: int) -> np.ndarray:
        return self.tokens[int(self.doc_offsets[i]) : int(self.doc_offsets[i + 1])]

    def __len__(self) -> int:
        return self.num_docs
