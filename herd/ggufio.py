"""GGUF files read fast: a memory-mapped reader and the key/value metadata as plain Python values.

It knows the container, not what the tensors mean: the tokenizer (herd/tokenizer/hf.py) reads its vocabulary
through it and the weight format (herd/formats/gguf.py) its tensors, so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import numpy.typing as npt

from herd.errors import CheckpointError


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The GGUF key/values as plain python values (tokenizer vocabulary included)."""
    return read_metadata(open_gguf(Path(path)), path)


def read_metadata(reader: gguf.GGUFReader, path: str | Path) -> dict[str, Any]:
    """The reader's key/values; strings are decoded here, so a corrupt one is found here (named by `path`)."""
    try:
        return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    except (ValueError, IndexError) as e:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{path}: corrupt GGUF metadata ({str(e)[:200]})") from None


class Reader(gguf.GGUFReader):
    """GGUFReader slicing a plain ndarray view of its memmap.

    The reader slices the file once per metadata string (about 100K for a 49K-token vocabulary) and
    every np.memmap slice runs memmap's __array_finalize__: 2 s of a 3 s load. A plain view of the
    same mapping reads the same bytes at a quarter of the cost. `_get` is the reader's one slicing
    method in gguf 0.19.0 (pinned).

    It also refuses reads past the end of the file. The stock reader slices short there and goes on, so a corrupt
    array length (2^64 - 1) had it loop for as long as the count said, reading empty items (found by tests/fuzz).
    """

    def _get(
        self, offset: int, dtype: npt.DTypeLike, count: int = 1, override_order: Literal["I", "S", "<"] | None = None
    ) -> npt.NDArray[Any]:
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
        count, size = int(count), np.dtype(dtype).itemsize
        if offset < 0 or count < 0 or offset + size * count > len(plain):
            raise ValueError(f"{count} x {np.dtype(dtype)} at byte {offset} runs past the end ({len(plain)} bytes)")
        arr = plain[offset : offset + size * count].view(dtype)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
        # An array's items take at least a byte each: a length beyond the bytes left is corrupt, and would otherwise
        # be walked item by item up to the end of a multi-GB file.
        if raw_type == gguf.GGUFValueType.ARRAY:
            alen = int(self._get(orig_offs + 4, np.uint64)[0])
            if alen > len(self.data) - orig_offs:
                raise ValueError(f"array of {alen} items at byte {orig_offs} is longer than the file")
        return super()._get_field_parts(orig_offs, raw_type)


def open_gguf(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        reader = Reader(path)
    # GGUFReader has no error type of its own: a short or corrupt file surfaces as whichever numpy
    # view or reshape fails first (ValueError, IndexError), a duplicate key as KeyError.
    except (ValueError, IndexError, KeyError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file (truncated or corrupt?): {e}") from e
    if reader.byte_order != "I":
        raise CheckpointError(f"{path}: byte order differs from this machine's; byte-swapped GGUF is not supported")
    return reader
