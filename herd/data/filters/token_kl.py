"""Token-distribution KL divergence: Llama 3 drops "documents containing excessive numbers of outlier tokens
compared to the training corpus distribution". Drop reason "token_kl_outlier".

`token_pieces` splits text into the pieces counted, `TokenReference` is the fitted reference distribution and
threshold (saved as JSON), `TokenDistributionFilter` fits, saves, loads and applies it; `_reference`, `_log_probs`
and `_score` at the bottom are the arithmetic.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from herd.data.filters.common import _skipped
from herd.errors import DataError
from herd.fileio import atomic_file

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Pieces much like a BPE pre-tokenizer's: letter runs, digit groups of at most 3 (as Llama 3's tokenizer splits
# numbers), one punctuation mark, one CJK character (CJK has no spaces between words).
_PIECE = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+|\d{{1,3}}|[^\w\s]|_")
REFERENCE_VERSION = 1


def token_pieces(text: str) -> list[str]:
    """The lower-cased pieces `TokenDistributionFilter` counts."""
    return _PIECE.findall(text.lower())


@dataclass
class TokenReference:
    """A reference unigram distribution over pieces, with the divergence threshold fitted with it."""

    counts: dict[str, int]
    total: int
    """Pieces counted, including those of types dropped by `max_vocab`."""
    other_types: int
    """Piece types dropped by `max_vocab`; an unseen piece gets their mean count."""
    threshold: float
    quantile: float
    alpha: float
    window: int
    min_tokens: int

    def to_json(self) -> dict[str, Any]:
        return {"version": REFERENCE_VERSION, "total": self.total, "other_types": self.other_types,
                "threshold": self.threshold, "quantile": self.quantile, "alpha": self.alpha, "window": self.window,
                "min_tokens": self.min_tokens, "counts": self.counts}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "<reference>") -> TokenReference:
        if data.get("version") != REFERENCE_VERSION:
            raise DataError(f"{source}: token reference version {data.get('version')!r}, expected {REFERENCE_VERSION}")
        try:
            return cls(counts={str(k): int(v) for k, v in data["counts"].items()}, total=int(data["total"]),
                       other_types=int(data["other_types"]), threshold=float(data["threshold"]),
                       quantile=float(data["quantile"]), alpha=float(data["alpha"]), window=int(data["window"]),
                       min_tokens=int(data["min_tokens"]))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{source}: malformed token reference ({e!r})") from e


class TokenDistributionFilter(BaseFilter):
    """Drops documents whose piece distribution is far, in KL divergence, from a reference distribution.

    Llama 3 (section 3.1.1) filters "documents containing excessive numbers of outlier tokens compared to the training
    corpus distribution" with a token-distribution Kullback-Leibler divergence. Here:
    - pieces are `token_pieces` (letter runs, 1-3 digit groups, punctuation marks, CJK characters), lower-cased;
    - the reference q is the piece distribution of a sample of documents (`fit`), with add-`alpha` smoothing, so a
      piece never seen in the sample has a small non-zero probability;
    - a document's score is the mean of KL(p_w || q) over windows w of exactly `window` pieces spread over the
      document, p_w being the window's empirical distribution. One window size keeps scores of short and long
      documents comparable (the KL of an empirical distribution shrinks as its sample grows). Documents with fewer
      than `min_tokens` pieces (default: one window) are not scored and pass;
    - the threshold is `max_divergence` if given, else the `quantile` of scores that `fit` measured on its sample,
      each half of the sample scored against a reference built from the other half (scores of documents the
      reference has seen would be too low).
    Random character soup, base64 blobs, number tables and one word repeated score well above prose (in the tests,
    more than twice the highest score of generated prose).
    Fit on a sample as broad as the corpus: a piece the sample never saw costs about log(sample pieces / window)
    nats per occurrence, so a small or single-topic sample also flags prose on other topics. A quantile threshold
    also needs a homogeneous sample: a few documents in scripts the sample barely holds form a tail that lifts it
    above every outlier. So fit one filter per language (and per domain where they differ) and give it
    `languages` (documents tagged with another `metadata["language"]` pass; untagged and "und" ones are scored) and
    `skip_domains`.
    Writes `metadata["token_kl"]`. Drop reason: "token_kl_outlier".
    """

    name = "token kl"

    def __init__(
        self,
        reference: TokenReference | str | Path | None = None,
        *,
        max_divergence: float | None = None,
        languages: Iterable[str] | None = None,
        skip_domains: Iterable[str] = (),
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer)
        self.max_divergence = max_divergence
        self.languages = None if languages is None else frozenset(languages)
        self.skip_domains = frozenset(skip_domains)
        self.reference: TokenReference | None = None
        self._logq: dict[str, float] = {}
        self._unseen_logq = 0.0
        if reference is not None:
            self.set_reference(reference if isinstance(reference, TokenReference) else self.load_reference(reference))

    # -- reference --------------------------------------------------------------------------------------------------

    @staticmethod
    def load_reference(path: str | Path) -> TokenReference:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read token reference ({e})") from e
        return TokenReference.from_json(data, str(path))

    def save(self, path: str | Path) -> None:
        """Write the fitted reference as JSON (atomically)."""
        if self.reference is None:
            raise DataError(f"{path}: TokenDistributionFilter has no reference to save; call fit() first")
        with atomic_file(path, "w") as f:
            json.dump(self.reference.to_json(), f, ensure_ascii=False, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> TokenDistributionFilter:
        return cls(cls.load_reference(path), **kwargs)

    def set_reference(self, reference: TokenReference) -> None:
        self.reference = reference
        self._logq, self._unseen_logq = _log_probs(reference)

    def fit(
        self,
        texts: Iterable[str],
        *,
        quantile: float = 0.99,
        alpha: float = 1.0,
        window: int = 128,
        min_tokens: int | None = None,
        max_vocab: int | None = 200_000,
    ) -> TokenDistributionFilter:
        """Fit the reference distribution and the threshold (the `quantile` of held-out sample scores).

        `min_tokens` (default: `window`) is the shortest document scored; shorter ones would be judged on a
        smaller sample than the threshold was fitted on.
        """
        if not 0 < quantile <= 1:
            raise DataError(f"TokenDistributionFilter.fit: quantile must be in (0, 1], got {quantile}")
        if window < 1:
            raise DataError(f"TokenDistributionFilter.fit: window must be positive, got {window}")
        min_tokens = window if min_tokens is None else min_tokens
        pieces = [token_pieces(t) for t in texts]
        if len(pieces) < 2 or sum(map(len, pieces)) == 0:
            raise DataError("TokenDistributionFilter.fit: need at least 2 non-empty texts")
        halves: list[Counter[str]] = [Counter(), Counter()]
        for i, p in enumerate(pieces):
            halves[i % 2].update(p)
        params = {"quantile": quantile, "alpha": alpha, "window": window, "min_tokens": min_tokens}
        scores: list[float] = []
        for half in (0, 1):
            logq, unseen = _log_probs(_reference(halves[1 - half], max_vocab, threshold=math.inf, **params))
            scores += [s for p in pieces[half::2] if (s := _score(p, logq, unseen, window, min_tokens)) is not None]
        if not scores:
            raise DataError(f"TokenDistributionFilter.fit: no text has {min_tokens}+ pieces to score")
        threshold = float(np.quantile(scores, quantile, method="higher"))
        self.set_reference(_reference(halves[0] + halves[1], max_vocab, threshold=threshold, **params))
        return self

    # -- scoring ----------------------------------------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        if self.max_divergence is not None:
            return self.max_divergence
        if self.reference is None:
            raise DataError("TokenDistributionFilter: no reference; pass one or call fit() before running")
        return self.reference.threshold

    def divergence(self, text: str) -> float | None:
        """The document's mean windowed KL divergence from the reference, or None if it is too short to score."""
        if self.reference is None:
            raise DataError("TokenDistributionFilter: no reference; pass one or call fit() before running")
        ref = self.reference
        return _score(token_pieces(text), self._logq, self._unseen_logq, ref.window, ref.min_tokens)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if _skipped(self, doc, self.skip_domains):
            return True
        language = doc.metadata.get("language")
        # "und" (no letters: number tables, symbol runs) belongs to no language's filter; score it against this one.
        if self.languages is not None and language not in (None, "und") and language not in self.languages:
            self.stat_update("skipped_language")
            return True
        score = self.divergence(doc.text)
        if score is None:
            self.stat_update("too_short_to_score")
            return True
        doc.metadata["token_kl"] = round(score, 4)
        if score > self.threshold:
            return False, "token_kl_outlier"
        return True


def _reference(counts: Counter[str], max_vocab: int | None, **params: Any) -> TokenReference:
    kept = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # ties by piece: the same vocabulary every run
    if max_vocab is not None:
        kept = kept[:max_vocab]
    return TokenReference(counts=dict(kept), total=sum(counts.values()), other_types=len(counts) - len(kept), **params)


def _log_probs(ref: TokenReference) -> tuple[dict[str, float], float]:
    vocab = len(ref.counts) + ref.other_types + 1  # +1: the mass left for pieces never seen
    dropped = ref.total - sum(ref.counts.values())
    unseen = dropped / ref.other_types if ref.other_types else 0.0
    z = math.log(ref.total + ref.alpha * vocab)
    logq = {piece: math.log(c + ref.alpha) - z for piece, c in ref.counts.items()}
    return logq, math.log(unseen + ref.alpha) - z


def _score(pieces: list[str], logq: dict[str, float], unseen: float, window: int, min_tokens: int) -> float | None:
    n = len(pieces)
    if n < max(1, min_tokens):
        return None
    size = min(window, n)
    # Windows of exactly `size` pieces spread evenly over the document (the last ones may overlap a little), so
    # every window's KL has the same small-sample bias and no piece of the document goes unread.
    count = math.ceil(n / size)
    starts = [0] if count == 1 else [round(i * (n - size) / (count - 1)) for i in range(count)]
    total = 0.0
    for start in starts:
        kl = 0.0
        for piece, c in Counter(pieces[start : start + size]).items():
            p = c / size
            kl += p * (math.log(p) - logq.get(piece, unseen))
        total += kl
    return total / count
