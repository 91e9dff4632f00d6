"""Exact dedup: one document per text, up to case, whitespace runs and Unicode compatibility forms.

The key is a 64-bit hash of `normalize_text(text)`; the generic `KeyMerge` keeps the first document of each key
by the keep-rule (the smallest id). Drop reason "exact_duplicate".
"""

from __future__ import annotations

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from herd.data.dedup.normalize import _hash64, normalize_text
from herd.data.dedup.stages import DedupKind, DedupSignature


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
