"""The pipeline steps that apply saved classifiers: `QualityScorer` (Llama 3 section 3.1.1, model-based quality
filtering) and `DomainTagger` (section 3.1.2, the domain of each document for the data mix).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.batching import batched

from herd.data.quality.classifier import Label, TextClassifier, scores_from_proba
from herd.data.quality.domain import DOMAINS
from herd.errors import DataError


class QualityScorer(BaseFilter):
    """Score each document with a saved quality `TextClassifier` (Llama 3 section 3.1.1, model-based filtering).

    Writes metadata["quality_score"] in [0, 1] (see `scores_from_proba`); with `threshold` set, drops documents
    scoring below it with reason "low_quality", otherwise keeps every document.
    """

    name = "quality scorer"

    def __init__(
        self,
        model_path: str | Path,
        *,
        threshold: float | None = None,
        positive_label: Label | None = None,
        batch_size: int = 256,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
        if threshold is not None and not 0 <= threshold <= 1:
            raise DataError(f"QualityScorer threshold must be in [0, 1], got {threshold}")
        self.classifier = TextClassifier.load(model_path)
        self.threshold, self.positive_label = threshold, positive_label
        # Check the labels now: a bad positive_label should fail at construction, not in the middle of a run.
        scores_from_proba(np.ones((1, len(self.classifier.labels))), self.classifier.labels, positive_label)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        proba = self.classifier.predict_proba([d.text for d in batch])
        scores = scores_from_proba(proba, self.classifier.labels, self.positive_label)
        results: list[bool | tuple[bool, str]] = []
        for doc, score in zip(batch, scores, strict=True):
            doc.metadata["quality_score"] = float(score)
            self.stat_update("quality_score", value=float(score), unit="doc")
            results.append(True if self.threshold is None or score >= self.threshold else (False, "low_quality"))
        return results


class DomainTagger(PipelineStep):
    """Tag each document with its domain for the data mix (Llama 3 section 3.1.2) using a saved domain classifier.

    Writes metadata["domain"] (one of code, math, general, multilingual) and metadata["domain_score"] (the
    classifier's probability of that domain). A document whose metadata[language_key] is set and not English is
    "multilingual" whatever the classifier says (language ID is the more reliable signal there), scored with
    metadata["language_score"] when present, else 1.0.
    """

    name = "domain tagger"
    type = "🏷 - TAGGER"

    def __init__(self, model_path: str | Path, *, language_key: str | None = "language", batch_size: int = 256) -> None:
        super().__init__()
        self.classifier = TextClassifier.load(model_path)
        if bad := sorted(set(map(str, self.classifier.labels)) - set(DOMAINS)):
            raise DataError(f"{model_path}: labels {bad} are not domains {DOMAINS}")
        self.language_key, self.batch_size = language_key, batch_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        labels = self.classifier.labels
        for batch in batched(data, self.batch_size):
            with self.track_time("batch"):
                proba = self.classifier.predict_proba([d.text for d in batch])
            for doc, p in zip(batch, proba, strict=True):
                self.stat_update("total")
                language = doc.metadata.get(self.language_key) if self.language_key else None
                if language and str(language).split("_")[0].lower() not in ("en", "eng"):
                    domain, score = "multilingual", float(doc.metadata.get("language_score", 1.0))
                    self.stat_update("language_override")
                else:
                    best = int(p.argmax())
                    domain, score = str(labels[best]), float(p[best])
                doc.metadata["domain"], doc.metadata["domain_score"] = domain, score
                self.stat_update(f"domain_{domain}")
                yield doc
