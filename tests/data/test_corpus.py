"""The embedded corpus: built from installed packages, deterministic, with planted ground truth."""

import json
from collections import Counter

from herd.data.corpus import BOILERPLATE_LINES, build_corpus


def _docs(path):
    return [json.loads(line) for f in sorted(path.glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_corpus_has_every_planted_kind_and_domain(embedded_corpus) -> None:
    docs = _docs(embedded_corpus.path)
    assert len(docs) == embedded_corpus.documents > 500
    kinds = Counter(d["truth"]["kind"] for d in docs)
    assert set(kinds) == {"clean", "exact_duplicate", "near_duplicate", "low_quality", "adult", "blocked_url"}
    assert {d["truth"]["domain"] for d in docs} == {"general", "code", "math", "multilingual"}
    assert len({d["truth"]["lang"] for d in docs}) > 30
    assert sum(1 for d in docs if d["truth"].get("html")) > 20
    assert sum(len(d["truth"].get("pii", [])) for d in docs) > 20
    by_id = {d["id"]: d for d in docs}
    for d in docs:
        if d["truth"]["kind"] == "exact_duplicate":
            assert d["text"] == by_id[d["truth"]["dup_of"]]["text"]
        for item in d["truth"].get("pii", []):
            assert item in d["text"]
    for line in BOILERPLATE_LINES:  # each planted line repeats more often than line dedup tolerates (6)
        assert sum(d["text"].count(line) for d in docs) > 6


def test_corpus_is_deterministic(embedded_corpus, tmp_path) -> None:
    again = build_corpus(tmp_path / "again")
    first = json.loads((embedded_corpus.path / "corpus.json").read_text())
    assert json.loads((again.path / "corpus.json").read_text())["digest"] == first["digest"]


def test_format_corpus_counts_the_kinds_in_name_order(tmp_path) -> None:
    from herd.data.corpus import CorpusStats, format_corpus

    stats = CorpusStats(path=tmp_path, documents=3, bytes=2_500_000, kinds={"spam": 1, "clean": 2})
    assert format_corpus(stats, 1.04) == f"wrote 3 documents (2.5 MB) to {tmp_path} in 1.0s: clean 2, spam 1"
