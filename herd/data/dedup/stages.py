"""What every dedup kind is made of: its three stages, the files between them, and the keep-rule.

A kind (`DedupKind`) names one step per stage, all sharing the folder `<work_dir>/<kind>/`:
  1. `DedupSignature`, every task: one record per document (position in the task, id, priority, and a row of keys
     or an embedding) to `signatures/<rank>.npz`;
  2. `DedupMerge`, one task: reads every task's records, decides which documents go (`duplicates`), writes
     `remove/<rank>.npz` for every task;
  3. `DedupFilter`, every task: reads the same documents again and drops the listed ones, checking their ids.
`_Records.keep_order` is the keep-rule (priority, then document id in natural order); `_candidate_pairs` and
`_drop_all_but_first` turn equal keys into groups that keep their first document, for `KeyMerge` (URL and exact
dedup) and MinHash alike. The files are numpy .npz, written under a temporary name and renamed, and carry the task
count, so a crashed task leaves no half file and files from a run with other tasks are refused.
"""

from __future__ import annotations

import copy
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolder, DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.batching import batched
from datatrove.utils.typeshelper import StatHints

from herd.errors import DataError

_DIGITS = re.compile(r"(\d+)")


def _natural_key(doc_id: str) -> tuple[str | int, ...]:
    """Sort key that orders embedded numbers by value, so `f.jsonl/2` comes before `f.jsonl/10`."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(doc_id)))


# ---------------------------------------------------------------------------------------------------------------------
# Files between the stages: numpy .npz, written to a temporary name and renamed so a crashed task leaves no half file


def _save(folder: DataFolder, path: str, **arrays: np.ndarray | int) -> None:
    tmp = f"{path}.tmp"
    with folder.open(tmp, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)  # as _load reads them; no array here holds objects
    folder.mv(tmp, path)


def _load(folder: DataFolder, path: str) -> dict[str, np.ndarray]:
    if not folder.isfile(path):
        raise DataError(f"{folder.path}/{path}: missing; run the stages before this one (with the same tasks) first")
    with folder.open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _rank_files(folder: DataFolder, subdir: str) -> dict[int, dict[str, np.ndarray]]:
    """The `<rank>.npz` files under subdir, loaded and checked to be ranks 0..N-1 of one run (N stored in each)."""
    names = {int(Path(name).name.split(".")[0]): name for name in folder.list_files(subdir, glob_pattern="*.npz")}
    if not names:
        raise DataError(f"{folder.path}/{subdir}: no signature files; run the signature stage first")
    files = {rank: _load(folder, names[rank]) for rank in sorted(names)}
    world_sizes = {int(data["world_size"]) for data in files.values()}
    if len(world_sizes) != 1 or sorted(files) != list(range(next(iter(world_sizes)))):
        raise DataError(
            f"{folder.path}/{subdir}: files for ranks {sorted(files)} written by runs with tasks={sorted(world_sizes)};"
            " stale files from another run? use a fresh work_dir"
        )
    return files


@dataclass(frozen=True, slots=True)
class _Records:
    """Every document's signature record, concatenated over tasks in rank order."""

    rank: np.ndarray  # (N,) int64
    position: np.ndarray  # (N,) int64, index of the document in its task's stream
    ids: list[str]
    priority: np.ndarray  # (N,) float64, smaller is kept first
    rows: np.ndarray  # (N, k) keys or embeddings
    world_size: int

    def keep_order(self) -> np.ndarray:
        """(N,) int64: each record's place in the keep-rule order (0 = kept before everything else)."""
        order = sorted(
            range(len(self.ids)),
            key=lambda i: (self.priority[i], _natural_key(self.ids[i]), self.ids[i], self.rank[i], self.position[i]),
        )
        place = np.empty(len(order), dtype=np.int64)
        place[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
        return place


def _load_records(folder: DataFolder) -> _Records:
    files = _rank_files(folder, "signatures")
    parts = list(files.values())
    nonempty = [p for p in parts if len(p["position"])]
    return _Records(
        rank=np.concatenate([np.full(len(p["position"]), rank, dtype=np.int64) for rank, p in files.items()]),
        position=np.concatenate([p["position"] for p in parts]).astype(np.int64),
        ids=[str(i) for p in parts for i in p["id"]],
        priority=np.concatenate([p["priority"] for p in parts]).astype(np.float64),
        rows=np.concatenate([p["rows"] for p in nonempty]) if nonempty else np.zeros((0, 0)),
        world_size=len(files),
    )


# ---------------------------------------------------------------------------------------------------------------------
# The three generic stages


class DedupSignature(PipelineStep, ABC):
    """Stage 1 of a dedup kind: writes one record per document of this task to `signatures/<rank>.npz`.

    Subclasses compute the record row (`rows`) for a batch of documents and, optionally, a priority.
    The step yields no documents: the filter stage reads the input again.
    """

    type = "🫂 - DEDUP"

    def __init__(self, folder: DataFolderLike, *, batch_size: int = 1) -> None:
        super().__init__()
        self.folder = get_datafolder(folder)
        self.batch_size = batch_size

    @abstractmethod
    def rows(self, docs: list[Document]) -> list[np.ndarray | None]:
        """One 1-D array per document, all of one length and dtype, or None for a document this kind skips."""

    def priority(self, doc: Document) -> float:
        """Smaller is kept first within a duplicate group; ties go to the smaller document id."""
        return 0.0

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        positions: list[int] = []
        ids: list[str] = []
        priorities: list[float] = []
        rows: list[np.ndarray] = []
        position = 0
        for batch in batched(data or (), self.batch_size):
            with self.track_time("batch" if self.batch_size > 1 else None):
                for doc, row in zip(batch, self.rows(batch), strict=True):
                    self.stat_update(StatHints.total)
                    if row is None:
                        self.stat_update("skipped")
                    else:
                        positions.append(position)
                        ids.append(str(doc.id))
                        priorities.append(self.priority(doc))
                        rows.append(row)
                    position += 1
        _save(
            self.folder,
            f"signatures/{rank:05d}.npz",
            position=np.asarray(positions, dtype=np.int64),
            id=np.asarray(ids, dtype=np.str_),
            priority=np.asarray(priorities, dtype=np.float64),
            rows=np.stack(rows) if rows else np.zeros((0, 0)),
            world_size=world_size,
        )
        yield from ()


class DedupMerge(PipelineStep, ABC):
    """Stage 2 of a dedup kind (one task): reads every task's records, writes each task's `remove/<rank>.npz`."""

    type = "🫂 - DEDUP"

    def __init__(self, folder: DataFolderLike) -> None:
        super().__init__()
        self.folder = get_datafolder(folder)

    @abstractmethod
    def duplicates(self, rows: np.ndarray, place: np.ndarray) -> np.ndarray:
        """(N,) bool, True for documents to drop, given their rows and keep-rule places (a permutation of 0..N-1)."""

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if world_size != 1:
            raise DataError(f"{self.name}: the merge stage must run as 1 task, got tasks={world_size}")
        with self.track_time():
            records = _load_records(self.folder)
            drop = self.duplicates(records.rows, records.keep_order()) if records.ids else np.zeros(0, dtype=bool)
        self.stat_update("documents", value=len(records.ids))
        self.stat_update("to_remove", value=int(drop.sum()))
        for r in range(records.world_size):
            mine = drop & (records.rank == r)
            _save(
                self.folder,
                f"remove/{r:05d}.npz",
                position=records.position[mine],
                id=np.asarray([i for i, m in zip(records.ids, mine, strict=True) if m], dtype=np.str_),
                world_size=records.world_size,
            )
        yield from ()


class DedupFilter(BaseFilter):
    """Stage 3 of a dedup kind: drops the documents the merge stage listed for this task, with `reason`."""

    name = "dedup filter"

    def __init__(self, folder: DataFolderLike, reason: str, *, exclusion_writer: DiskWriter | None = None) -> None:
        self.name = f"{reason} filter"  # before super().__init__, which labels the stats with it
        super().__init__(exclusion_writer=exclusion_writer)
        self.folder = get_datafolder(folder)
        self.reason = reason
        self._drop: dict[int, str] = {}
        self._position = 0

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        removal = _load(self.folder, f"remove/{rank:05d}.npz")
        if int(removal["world_size"]) != world_size:
            raise DataError(
                f"{self.folder.path}/remove: written for tasks={int(removal['world_size'])}, the filter runs with"
                f" tasks={world_size}; run every stage with the same tasks"
            )
        self._drop = dict(zip(removal["position"].tolist(), removal["id"].tolist(), strict=True))
        self._position = 0
        yield from super().run(data, rank, world_size)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        position, self._position = self._position, self._position + 1
        expected = self._drop.get(position)
        if expected is None:
            return True
        if expected != str(doc.id):
            raise DataError(
                f"{self.folder.path}: document {position} of this task is {doc.id!r}, the signature stage saw"
                f" {expected!r}; the filter stage must read the same input with the same tasks"
            )
        return False, self.reason


def _candidate_pairs(keys: np.ndarray, place: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of documents that share a key in some column: each one is paired with the first document of its
    key (in keep order) and with the one just before it, so a misfit first document cannot hide a true pair."""
    n = len(place)
    a, b = [], []
    for column in keys.T:
        order = np.lexsort((place, column))  # equal keys together, the earliest in keep order first
        sorted_keys = column[order]
        starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
        head = order[np.maximum.accumulate(np.where(starts, np.arange(n), 0))]
        follower = ~starts
        a += [head[follower], np.r_[order[:-1]][follower[1:]]]
        b += [order[follower], order[1:][follower[1:]]]
    a_all, b_all = np.concatenate(a), np.concatenate(b)
    pairs = np.unique(np.minimum(a_all, b_all) * n + np.maximum(a_all, b_all))  # drop the pairs found twice
    return pairs // n, pairs % n


def _drop_all_but_first(a: np.ndarray, b: np.ndarray, place: np.ndarray) -> np.ndarray:
    """Documents joined by the pairs (a, b), transitively, form a group; all but each group's first are dropped."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(place)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, place)
    return place != first[labels]


class KeyMerge(DedupMerge):
    """Merge for key-based kinds (URL, exact): documents with equal keys are one group; the first stays."""

    name = "dedup merge"

    def duplicates(self, rows: np.ndarray, place: np.ndarray) -> np.ndarray:
        return _drop_all_but_first(*_candidate_pairs(rows, place), place)


# ---------------------------------------------------------------------------------------------------------------------
# A kind: the steps of its three stages


@dataclass(frozen=True, slots=True)
class Stage:
    """One executor run: a pipeline and its task count (None: the same as the input's tasks)."""

    pipeline: list[PipelineStep]
    tasks: int | None = None


class DedupKind(ABC):
    """One level of dedup: the step of each of its three stages, sharing the folder `<work_dir>/<folder_name>`."""

    folder_name: str
    reason: str

    def __init__(self, work_dir: str | Path, *, exclusion_writer: DiskWriter | None = None) -> None:
        self.folder = f"{str(work_dir).rstrip('/')}/{self.folder_name}"
        self.exclusion_writer = exclusion_writer

    @abstractmethod
    def signature_step(self) -> PipelineStep:
        """Stage 1, run over every task after the input and the filters of earlier kinds."""

    def merge_stage(self) -> Stage:
        """Stage 2."""
        return Stage([KeyMerge(self.folder)], tasks=1)

    def filter_step(self, *, write_exclusions: bool = True) -> PipelineStep:
        """Stage 3, run over every task; also part of every later stage that reads documents (without writing the
        dropped documents again)."""
        writer = copy.deepcopy(self.exclusion_writer) if write_exclusions else None
        return DedupFilter(self.folder, self.reason, exclusion_writer=writer)
