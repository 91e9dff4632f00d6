"""Offline search: BM25 over a list of documents, for the search tool of tool-use data and agents.

Okapi BM25 (Robertson & Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", 2009) with Lucene's
non-negative idf, log(1 + (N - df + 0.5) / (df + 0.5)). Terms are lowercased word characters; a document's title
is indexed with its text.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from herd.errors import ToolError

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SNIPPET_CHARS = 300


def _terms(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class SearchIndex:
    """Documents {"title", "text", "url"?} ranked by BM25; k1 scales term frequency, b length normalisation."""

    def __init__(self, docs: list[dict[str, Any]], *, k1: float = 1.5, b: float = 0.75) -> None:
        for i, doc in enumerate(docs):
            if not isinstance(doc, dict) or not all(isinstance(doc.get(key), str) for key in ("title", "text")):
                raise ToolError(f"search document {i} needs string 'title' and 'text', got {doc!r:.80}")
        self.docs = docs
        self.k1, self.b = k1, b
        self._tf = [Counter(_terms(f"{doc['title']} {doc['text']}")) for doc in docs]
        self._len = [sum(tf.values()) for tf in self._tf]
        self._avg_len = max(sum(self._len) / max(len(docs), 1), 1.0)
        df = Counter(term for tf in self._tf for term in tf)
        n = len(docs)
        self._idf = {term: math.log(1 + (n - f + 0.5) / (f + 0.5)) for term, f in df.items()}

    def scores(self, query: str) -> list[float]:
        """The BM25 score of every document for `query` (each distinct query term counted once)."""
        terms = set(_terms(query)) & self._idf.keys()
        scores = []
        for tf, length in zip(self._tf, self._len, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / self._avg_len)
            scores.append(sum(self._idf[t] * tf[t] * (self.k1 + 1) / (tf[t] + norm) for t in terms if t in tf))
        return scores

    def search(self, query: str, k: int = 3) -> list[dict[str, str]]:
        """The `k` best documents that share a term with `query`, best first (ties in document order)."""
        scores = self.scores(query)
        ranked = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: -scores[i])[:k]
        terms = set(_terms(query))
        return [
            {
                "title": self.docs[i]["title"],
                "snippet": _snippet(self.docs[i]["text"], terms),
                "url": self.docs[i].get("url", ""),
            }
            for i in ranked
        ]


def _snippet(text: str, terms: set[str]) -> str:
    """From the sentence with the most query terms on, cut at a word boundary near SNIPPET_CHARS."""
    sentences = _SENTENCE_END.split(" ".join(text.split()))
    best = max(range(len(sentences)), key=lambda i: (len(terms & set(_terms(sentences[i]))), -i))
    snippet = " ".join(sentences[best:])
    if len(snippet) <= SNIPPET_CHARS:
        return snippet
    return snippet[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " ..."
