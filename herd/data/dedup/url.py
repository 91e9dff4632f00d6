"""URL dedup: one document per normalized URL, the most recent crawl kept (Llama 3: "URL-level de-duplication ...
we keep the most recent version for pages corresponding to each URL").

The key is a hash of `normalize_url(metadata["url"])` and the priority the document's date, newest first, so the
generic `KeyMerge` keeps the newest copy. Documents without a URL are never dropped here. Drop reason
"duplicate_url".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.io import DataFolderLike
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.disk_base import DiskWriter

from herd.data.dedup.normalize import _hash64, _timestamp, normalize_url
from herd.data.dedup.stages import DedupKind, DedupSignature


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
