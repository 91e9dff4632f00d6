import pytest

from herd.errors import ToolError
from herd.tools import SearchIndex

DOCS = [
    {"title": "heapq", "text": "Heap queue algorithm, also known as the priority queue algorithm.", "url": "u/heapq"},
    {"title": "json", "text": "JSON encoder and decoder. JSON is a lightweight data interchange format."},
    {"title": "queue", "text": "A multi-producer, multi-consumer queue. It is useful in threaded programming."},
    {"title": "zipfile", "text": "Read and write ZIP files. " + "It handles archives of many files. " * 20},
]


def test_the_document_with_the_query_terms_ranks_first() -> None:
    index = SearchIndex(DOCS)
    assert [r["title"] for r in index.search("json decoder")] == ["json"]
    assert index.search("priority queue")[0] == {
        "title": "heapq",
        "snippet": "Heap queue algorithm, also known as the priority queue algorithm.",
        "url": "u/heapq",
    }


def test_rare_terms_weigh_more_than_common_ones() -> None:
    scores = SearchIndex(DOCS).scores("threaded queue")
    assert scores[2] > scores[0] > 0  # both say "queue"; only the queue module says "threaded"
    assert scores[1] == scores[3] == 0


def test_k_bounds_the_results_and_no_match_gives_none() -> None:
    index = SearchIndex(DOCS)
    assert len(index.search("queue json zip", k=2)) == 2
    assert index.search("kangaroo") == []
    assert index.search("") == []


def test_long_snippets_are_cut_at_a_word_boundary() -> None:
    snippet = SearchIndex(DOCS).search("zip archives")[0]["snippet"]
    assert len(snippet) <= 310
    assert snippet.startswith("Read and write ZIP files.") and snippet.endswith(" ...")


def test_a_document_without_text_is_rejected() -> None:
    with pytest.raises(ToolError, match="document 1"):
        SearchIndex([DOCS[0], {"title": "x"}])
