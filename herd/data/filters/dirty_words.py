"""Dirty-word counting: Llama 3's filter for adult websites that the URL blocklist missed. Drop reason
"dirty_words".
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from herd.data.filters.common import LISTS_DIR, read_list

_LETTER_WORD = re.compile(r"[^\W\d_]+")


class DirtyWordFilter(BaseFilter):
    """Drops documents in which words of an adult-content list make up more than `max_fraction` of the words.

    Llama 3's "dirty word counting" (section 3.1.1) for adult sites missed by the URL blocklist. A document needs at
    least `min_matches` listed words as well, so one clinical or news mention in a short text does not drop it.
    Words are lower-cased letter runs; the default list is herd/data/lists/dirty_words.txt (English). Writes
    `metadata["dirty_word_fraction"]`. Drop reason: "dirty_words".
    """

    name = "dirty words"

    def __init__(
        self,
        *,
        words: Iterable[str] | None = None,
        max_fraction: float = 0.03,
        min_matches: int = 3,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer)
        entries = read_list(LISTS_DIR / "dirty_words.txt") if words is None else list(words)
        self.words = frozenset(w.lower() for w in entries)
        self.max_fraction = max_fraction
        self.min_matches = min_matches

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        tokens = _LETTER_WORD.findall(doc.text.lower())
        hits = sum(1 for t in tokens if t in self.words)
        fraction = hits / len(tokens) if tokens else 0.0
        doc.metadata["dirty_word_fraction"] = round(fraction, 4)
        if hits >= self.min_matches and fraction > self.max_fraction:
            return False, "dirty_words"
        return True
