"""Line-level dedup (Llama 3, after ccNet): lines found in more than `threshold` documents of their bucket are
removed from every document, e.g. cookie banners and navigation; documents left blank are dropped.

Its three stages are its own rather than the generic ones in stages.py: the records are the distinct line hashes of
each document, sharded into buckets by a hash of the document id (Llama 3 counts per bucket of 30M documents); the
count stage runs one task per bucket and writes the frequent lines; the filter edits text as well as dropping
documents. Drop reason "all_lines_duplicate".
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.typeshelper import StatHints

from herd.data.dedup.normalize import _hash64, normalize_line
from herd.data.dedup.stages import DedupKind, Stage, _load, _rank_files, _save
from herd.errors import DataError


def _line_hashes(lines: Sequence[str]) -> np.ndarray:
    """(len(lines),) uint64 hash of each normalized line; 0 marks a line with nothing to compare (blank, "----")."""
    return np.fromiter(
        ((_hash64(norm) | 1) if (norm := normalize_line(line)) else 0 for line in lines), dtype=np.uint64
    )


def _line_bucket(doc_id: str, num_buckets: int) -> int:
    return _hash64(doc_id) % num_buckets


class LineSignature(PipelineStep):
    """Line dedup stage 1: writes the distinct line hashes of each document to `signatures/<bucket>/<rank>.npz`.

    The bucket of a document is a hash of its id, so buckets do not depend on how documents are sharded into tasks.
    """

    name = "line signature"
    type = "🫂 - DEDUP"

    def __init__(self, folder: DataFolderLike, *, num_buckets: int = 1) -> None:
        super().__init__()
        self.folder = get_datafolder(folder)
        self.num_buckets = num_buckets

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        per_bucket: list[list[np.ndarray]] = [[] for _ in range(self.num_buckets)]
        for doc in data or ():
            with self.track_time():
                self.stat_update(StatHints.total)
                hashes = np.unique(_line_hashes(doc.text.split("\n")))
                per_bucket[_line_bucket(str(doc.id), self.num_buckets)].append(hashes[hashes != 0])
        for bucket, parts in enumerate(per_bucket):
            hashes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
            _save(self.folder, f"signatures/{bucket:05d}/{rank:05d}.npz", hashes=hashes, world_size=world_size)
        yield from ()


class LineCount(PipelineStep):
    """Line dedup stage 2: in each bucket, the lines found in more than `threshold` documents, to `frequent/`.

    Counts documents, not occurrences, so a line repeated inside one document (a chorus, a table row) counts once.
    Task r of N handles buckets r, r + N, ...
    """

    name = "line count"
    type = "🫂 - DEDUP"

    def __init__(self, folder: DataFolderLike, *, threshold: int = 6, num_buckets: int = 1) -> None:
        super().__init__()
        self.folder = get_datafolder(folder)
        self.threshold = threshold
        self.num_buckets = num_buckets

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for bucket in range(rank, self.num_buckets, world_size):
            with self.track_time("bucket"):
                files = _rank_files(self.folder, f"signatures/{bucket:05d}")
                hashes = np.concatenate([data["hashes"] for data in files.values()])
                distinct, counts = np.unique(hashes, return_counts=True)
                frequent = distinct[counts > self.threshold]
                _save(self.folder, f"frequent/{bucket:05d}.npz", hashes=frequent, world_size=len(files))
            self.stat_update("distinct_lines", value=len(distinct), unit="bucket")
            self.stat_update("frequent_lines", value=len(frequent), unit="bucket")
        yield from ()


class LineDedupFilter(BaseFilter):
    """Line dedup stage 3: removes the frequent lines of the document's bucket; drops documents left blank."""

    name = "line dedup filter"

    def __init__(
        self, folder: DataFolderLike, *, num_buckets: int = 1, exclusion_writer: DiskWriter | None = None
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer)
        self.folder = get_datafolder(folder)
        self.num_buckets = num_buckets
        self._frequent: dict[int, np.ndarray] = {}

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        bucket = _line_bucket(str(doc.id), self.num_buckets)
        if bucket not in self._frequent:
            self._frequent[bucket] = _load(self.folder, f"frequent/{bucket:05d}.npz")["hashes"]
        frequent = self._frequent[bucket]
        lines = doc.text.split("\n")
        hashes = _line_hashes(lines)
        found = np.minimum(np.searchsorted(frequent, hashes), max(len(frequent) - 1, 0))
        remove = (hashes != 0) & (frequent[found] == hashes) if len(frequent) else np.zeros(len(lines), dtype=bool)
        if removed := int(remove.sum()):
            self.stat_update("lines_removed", value=removed)
            doc.text = "\n".join(line for line, r in zip(lines, remove, strict=True) if not r)
        return (False, "all_lines_duplicate") if not doc.text.strip() else True


class LineDedup(DedupKind):
    """Removes lines found in more than `threshold` documents of their bucket (Llama 3: more than 6 times per
    bucket of 30M documents), e.g. cookie banners and navigation; drops documents left blank ("all_lines_duplicate").

    Set num_buckets to about (number of documents) / 30M. The merge stage runs with num_buckets tasks.
    """

    folder_name = "line"
    reason = "all_lines_duplicate"

    def __init__(
        self,
        work_dir: str | Path,
        *,
        threshold: int = 6,
        num_buckets: int = 1,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(work_dir, exclusion_writer=exclusion_writer)
        if threshold < 1 or num_buckets < 1:
            raise DataError(f"line dedup: threshold={threshold} and num_buckets={num_buckets} must be >= 1")
        self.threshold = threshold
        self.num_buckets = num_buckets

    def signature_step(self) -> PipelineStep:
        return LineSignature(self.folder, num_buckets=self.num_buckets)

    def merge_stage(self) -> Stage:
        return Stage([LineCount(self.folder, threshold=self.threshold, num_buckets=self.num_buckets)], self.num_buckets)

    def filter_step(self, *, write_exclusions: bool = True) -> PipelineStep:
        writer = copy.deepcopy(self.exclusion_writer) if write_exclusions else None
        return LineDedupFilter(self.folder, num_buckets=self.num_buckets, exclusion_writer=writer)
