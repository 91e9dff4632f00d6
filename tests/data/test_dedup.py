"""Tests for herd.data.dedup on generated documents whose duplicate structure is known.

Each test measures recall (duplicates removed / duplicates planted) and false drops (distinct documents lost / distinct
documents), and checks that the kept set does not depend on the number of tasks or workers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest
from datatrove.data import Document

from herd.data.dedup import (
    DedupKind,
    DocumentList,
    ExactDedup,
    HashedBagOfWords,
    LineDedup,
    MinHashDedup,
    MinHashSignature,
    SemanticDedup,
    UrlDedup,
    dedup_documents,
    dedup_stages,
    normalize_line,
    normalize_text,
    normalize_url,
    run_in_process,
    run_local,
)
from herd.data.dedup.semantic import _greedy_drop
from herd.errors import DataError

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# ---------------------------------------------------------------------------------------------------------------------
# A generated corpus: a shared Zipfian vocabulary plus per-topic words, so distinct documents of one topic share
# most of their vocabulary and many word pairs, which is what makes near-duplicate detection non-trivial.

FUNCTION_WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "with", "was", "on", "be", "by"]


def _pseudo_words(rng: random.Random, n: int) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


class Corpus:
    def __init__(self, seed: int = 0, num_topics: int = 4) -> None:
        self.rng = random.Random(seed)
        common = FUNCTION_WORDS + _pseudo_words(self.rng, 400)
        self.topics = [common + _pseudo_words(self.rng, 150) for _ in range(num_topics)]
        self.weights = [1.0 / (rank + 1) for rank in range(len(self.topics[0]))]  # Zipf over the whole list

    def sentence(self, topic: int) -> str:
        words = self.rng.choices(self.topics[topic], self.weights, k=self.rng.randint(8, 20))
        return " ".join(words).capitalize() + "."

    def document(self, topic: int, num_words: int) -> str:
        sentences: list[str] = []
        while sum(len(s.split()) for s in sentences) < num_words:
            sentences.append(self.sentence(topic))
        return " ".join(sentences)

    def edit(self, text: str, rate: float, topic: int) -> str:
        """Random insertions, deletions and substitutions of `rate` of the words, then re-wrapped whitespace."""
        words = text.split()
        for _ in range(max(1, round(rate * len(words)))):
            op, at = self.rng.choice("ids"), self.rng.randrange(len(words))
            if op == "i":
                words.insert(at, self.rng.choice(self.topics[topic]))
            elif op == "d" and len(words) > 1:
                del words[at]
            else:
                words[at] = self.rng.choice(self.topics[topic])
        return self.rewrap(words)

    def rewrap(self, words: Sequence[str]) -> str:
        lines, line = [], []
        width = self.rng.randint(40, 100)
        for word in words:
            line.append(word)
            if sum(len(w) + 1 for w in line) > width:
                lines.append(self.rng.choice([" ", "  ", "\t"]).join(line))
                line = []
        lines.append(" ".join(line))
        return "\n".join(lines)


def _ids(docs: Sequence[Document]) -> list[str]:
    return [str(doc.id) for doc in docs]


def _score(groups: dict[str, list[str]], kept: set[str]) -> tuple[float, float]:
    """(recall, false-drop rate) for groups {group: member ids}; each group should keep exactly one member."""
    planted = sum(len(members) - 1 for members in groups.values())
    removed = sum(min(len(members) - sum(m in kept for m in members), len(members) - 1) for members in groups.values())
    lost = sum(not any(m in kept for m in members) for members in groups.values())
    return removed / max(planted, 1), lost / len(groups)


def _near_duplicate_corpus(
    seed: int, *, num_distinct: int = 360, num_copies: int = 180, rates: tuple[float, float] = (0.01, 0.05)
) -> tuple[list[Document], dict[str, list[str]]]:
    """Distinct documents and near-duplicate copies of some of them (`rates`: share of words edited).

    The distinct ones are hard negatives: all share one vocabulary, a quarter share a quarter of their sentences with
    another document of their topic (J ~ 0.1), and a quarter are pages of one site with a common 100-word header and
    footer (J ~ 0.2-0.3). Returns the documents, originals first, and {original id: [original, copies...]}.
    """
    corpus = Corpus(seed)
    header, footer = corpus.document(0, 50), corpus.document(0, 50)
    texts: list[tuple[int, str]] = []
    for i in range(num_distinct):
        topic = i % len(corpus.topics)
        if i % 4 == 3 and i >= 4:
            shared = [s + "." for s in texts[i - 4][1].split(". ") if s][::4]
            texts.append((topic, " ".join(shared) + " " + corpus.document(topic, corpus.rng.randint(120, 300))))
        elif i % 4 == 2:
            texts.append((topic, f"{header}\n{corpus.document(topic, corpus.rng.randint(150, 300))}\n{footer}"))
        else:
            texts.append((topic, corpus.document(topic, corpus.rng.randint(150, 400))))
    docs = [Document(text=text, id=f"doc/{i}") for i, (_, text) in enumerate(texts)]
    groups = {doc.id: [doc.id] for doc in docs}
    for j in range(num_copies):
        source = corpus.rng.randrange(num_distinct)
        topic, text = texts[source]
        copy_id = f"doc/{num_distinct + j}"
        docs.append(Document(text=corpus.edit(text, corpus.rng.uniform(*rates), topic), id=copy_id))
        groups[f"doc/{source}"].append(copy_id)
    return docs, groups


# ---------------------------------------------------------------------------------------------------------------------
# 1. Exact


def test_exact_dedup_ignores_case_and_whitespace_and_keeps_smallest_id(tmp_path: Path) -> None:
    docs = [
        Document(text="The  Quick brown\nfox.", id="b.jsonl/10"),
        Document(text="the quick BROWN fox.", id="b.jsonl/2"),
        Document(text="\tthe quick brown fox.  ", id="a.jsonl/7"),
        Document(text="the quick brown fox!", id="a.jsonl/8"),  # one character differs: distinct
        Document(text="ﬁne print", id="c/1"),  # NFKC folds the ligature
        Document(text="fine print", id="c/0"),
    ]
    assert normalize_text(docs[0].text) == normalize_text(docs[1].text)
    for tasks in (1, 2, 4):
        kept = dedup_documents(docs, [ExactDedup(tmp_path / f"t{tasks}")], tasks=tasks)
        assert sorted(_ids(kept)) == ["a.jsonl/7", "a.jsonl/8", "c/0"]


def test_exact_dedup_recall_and_precision_on_generated_corpus(tmp_path: Path) -> None:
    corpus = Corpus(1)
    rng = random.Random(1)
    originals = [corpus.document(i % 4, 60) for i in range(200)]
    docs = [Document(text=t, id=f"d/{i}") for i, t in enumerate(originals)]
    groups = {doc.id: [doc.id] for doc in docs}
    for j in range(100):
        src = rng.randrange(200)
        text = corpus.rewrap(originals[src].split())
        text = text.upper() if j % 2 else text
        docs.append(Document(text=text, id=f"d/{200 + j}"))
        groups[f"d/{src}"].append(f"d/{200 + j}")
    rng.shuffle(docs)  # input order must not matter, only ids
    kept = set(_ids(dedup_documents(docs, [ExactDedup(tmp_path)], tasks=3)))
    recall, false_drops = _score(groups, kept)
    assert (recall, false_drops) == (1.0, 0.0)
    assert all(group[0] in kept for group in groups.values())  # the original has the smallest id


# ---------------------------------------------------------------------------------------------------------------------
# 2. URL


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTP://Example.COM:80/a/b/?utm_source=x&utm_medium=y#top", "http://example.com/a/b"),
        ("https://example.com:443/a/b", "http://example.com/a/b"),
        ("https://example.com:8443/a/b", "http://example.com:8443/a/b"),
        ("https://example.com/?b=2&a=1&fbclid=zz", "http://example.com/?a=1&b=2"),
        ("https://example.com", "http://example.com/"),
        ("https://example.com/Path/", "http://example.com/Path"),  # paths stay case-sensitive
        ("https://[2001:db8::1]:443/x", "http://[2001:db8::1]/x"),
    ],
)
def test_normalize_url_canonical_forms(url: str, canonical: str) -> None:
    assert normalize_url(url) == canonical


def test_url_dedup_keeps_most_recent_version_and_distinct_pages(tmp_path: Path) -> None:
    docs = [
        Document(text="v1", id="x/1", metadata={"url": "http://site.org/page/", "crawl_date": "2021-03-01T00:00:00Z"}),
        Document(text="v3", id="x/2", metadata={"url": "https://SITE.org/page?utm_campaign=a", "crawl_date": 1.7e9}),
        Document(text="v2", id="x/3", metadata={"url": "https://site.org:443/page#c", "date": "2022-06-01"}),
        Document(text="p2", id="x/4", metadata={"url": "https://site.org/page?id=2"}),  # another page
        Document(text="n1", id="x/5", metadata={"url": "https://site.org/nodate"}),
        Document(text="n2", id="x/6", metadata={"url": "https://site.org/nodate/"}),
        Document(text="dated", id="x/7", metadata={"url": "https://site.org/mixed", "crawl_date": "2020-01-01"}),
        Document(text="undated", id="x/0", metadata={"url": "https://site.org/mixed"}),
        Document(text="no url", id="x/8"),
    ]
    for tasks in (1, 3):
        kept = dedup_documents(docs, [UrlDedup(tmp_path / f"t{tasks}")], tasks=tasks)
        # 1.7e9 s is Nov 2023: the newest; without dates the smallest id; a dated copy beats an undated one
        assert sorted(_ids(kept)) == ["x/2", "x/4", "x/5", "x/7", "x/8"]


def test_url_dedup_rejects_unparseable_date(tmp_path: Path) -> None:
    docs = [Document(text="a", id="bad/1", metadata={"url": "http://a.b/", "crawl_date": "last tuesday"})]
    with pytest.raises(DataError, match=r"bad/1.*crawl_date"):
        dedup_documents(docs, [UrlDedup(tmp_path)])


# ---------------------------------------------------------------------------------------------------------------------
# 3. MinHash


def test_minhash_catches_95_percent_of_near_duplicates_with_under_1_percent_false_drops(tmp_path: Path) -> None:
    docs, groups = _near_duplicate_corpus(seed=2)
    kept = set(_ids(dedup_documents(docs, [MinHashDedup(tmp_path)], tasks=2)))
    recall, false_drops = _score(groups, kept)
    print(f"minhash 25x4, J>=0.5: recall={recall:.3f} false_drops={false_drops:.4f} over {len(groups)} distinct docs")
    assert recall >= 0.95
    assert false_drops <= 0.01
    assert all(group[0] in kept for group in groups.values())  # each group keeps its original: the smallest id


def test_minhash_similarity_check_stops_template_pages_from_chaining(tmp_path: Path) -> None:
    docs, groups = _near_duplicate_corpus(seed=2, num_copies=0)
    unchecked = set(_ids(dedup_documents(docs, [MinHashDedup(tmp_path / "a", min_jaccard=0.0)])))
    checked = set(_ids(dedup_documents(docs, [MinHashDedup(tmp_path / "b")])))
    assert _score(groups, unchecked)[1] > 0.02  # band collisions alone link pages that share the site template
    assert _score(groups, checked)[1] == 0.0


def test_minhash_generated_near_duplicates_have_jaccard_in_the_tested_band() -> None:
    docs, groups = _near_duplicate_corpus(seed=3, num_distinct=40, num_copies=40)
    by_id = {doc.id: doc.text for doc in docs}
    sig = MinHashSignature("memory://unused")
    jaccards = []
    for members in groups.values():
        base = set(sig.shingles(by_id[members[0]]).tolist())
        for other in members[1:]:
            shingles = set(sig.shingles(by_id[other]).tolist())
            jaccards.append(len(base & shingles) / len(base | shingles))
    # editing 1-5% of the words puts 5-gram Jaccard at about 0.6-0.95, well above the 0.5 the check asks for
    assert 0.55 < min(jaccards) and np.median(jaccards) < 0.9


def test_minhash_identical_documents_and_short_documents(tmp_path: Path) -> None:
    docs = [
        Document(text="a b c", id="s/1"),
        Document(text="A, b; c!", id="s/0"),  # punctuation and case do not count
        Document(text="a b d", id="s/2"),
        Document(text="...", id="s/3"),  # no words: no signature, never dropped
    ]
    assert sorted(_ids(dedup_documents(docs, [MinHashDedup(tmp_path)]))) == ["s/0", "s/2", "s/3"]


def test_minhash_rejects_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="rows_per_band=0"):
        MinHashDedup(tmp_path, rows_per_band=0)


# ---------------------------------------------------------------------------------------------------------------------
# 4. Line-level


BOILERPLATE = [
    "We use cookies to improve your experience. Accept all cookies",
    "Home | About | Contact | Privacy",
    "© {year} Example Media Inc. All rights reserved.",
    "Subscribe to our newsletter!",
    "Share this: Facebook Twitter Email",
]


def _line_corpus(seed: int) -> tuple[list[Document], set[str], set[str]]:
    """Documents of unique content lines, quotes repeated in 2-6 documents, and boilerplate planted in many.

    Returns the documents and the normalized boilerplate and content lines."""
    corpus, rng = Corpus(seed), random.Random(seed)
    quotes = [corpus.sentence(0) for _ in range(10)]
    quote_docs = {q: set(rng.sample(range(80), rng.randint(2, 6))) for q in quotes}
    docs, content = [], set()
    for i in range(80):
        lines = [corpus.sentence(i % 4) for _ in range(rng.randint(3, 10))]
        content.update(lines)
        lines += [q for q in quotes if i in quote_docs[q]]
        if i % 7 == 0:
            lines += [lines[0]] * 3  # a line repeated inside one document counts once
        for template in BOILERPLATE:
            if rng.random() < 0.4:
                lines.insert(rng.randint(0, len(lines)), template.format(year=rng.randint(2015, 2024)))
        rng.shuffle(lines)
        docs.append(Document(text="\n".join(lines), id=f"page/{i}"))
    docs.append(Document(text="\n".join(t.format(year=2020) for t in BOILERPLATE) + "\n\n", id="page/80"))
    boiler = {normalize_line(t.format(year=2020)) for t in BOILERPLATE}
    return docs, boiler, {normalize_line(line) for line in content | set(quotes)}


def _line_stats(before: list[Document], after: list[Document], boiler: set[str]) -> tuple[float, float, int]:
    """(boilerplate recall, precision of removed lines, content lines lost)."""
    kept = {doc.id: doc.text.split("\n") for doc in after}
    planted = removed_boiler = removed_other = 0
    for doc in before:
        remaining = [normalize_line(line) for line in kept.get(doc.id, [])]
        for line in doc.text.split("\n"):
            norm = normalize_line(line)
            if not norm:
                continue
            is_boiler = norm in boiler
            planted += is_boiler
            if norm not in remaining:
                removed_boiler += is_boiler
                removed_other += not is_boiler
    return removed_boiler / planted, removed_boiler / max(removed_boiler + removed_other, 1), removed_other


def test_line_dedup_removes_boilerplate_and_keeps_content_repeated_up_to_threshold(tmp_path: Path) -> None:
    docs, boiler, _ = _line_corpus(seed=4)
    after = dedup_documents(docs, [LineDedup(tmp_path, threshold=6)], tasks=2)
    recall, precision, content_lost = _line_stats(docs, after, boiler)
    print(f"line dedup: boilerplate recall={recall:.3f} precision={precision:.3f} content lines lost={content_lost}")
    assert recall == 1.0 and precision == 1.0 and content_lost == 0
    assert "page/80" not in _ids(after)  # nothing but boilerplate: dropped
    repeated = next(doc for doc in after if doc.id == "page/0").text.split("\n")
    assert len(repeated) - len(set(repeated)) >= 3  # the in-document repeat stayed


def test_line_dedup_buckets_do_not_depend_on_tasks(tmp_path: Path) -> None:
    docs, boiler, _ = _line_corpus(seed=5)
    outs = [
        {doc.id: doc.text for doc in dedup_documents(docs, [LineDedup(tmp_path / f"t{t}", num_buckets=2)], tasks=t)}
        for t in (1, 3)
    ]
    assert outs[0] == outs[1]
    recall, precision, _ = _line_stats(docs, [Document(text=t, id=i) for i, t in outs[0].items()], boiler)
    assert recall == 1.0 and precision == 1.0  # ~40 documents per bucket still see each banner more than 6 times


def test_line_dedup_threshold_is_exclusive(tmp_path: Path) -> None:
    docs = [Document(text=f"unique line {chr(97 + i)}\nshared footer", id=f"d/{i}") for i in range(7)]
    assert all("shared footer" in d.text for d in dedup_documents(docs, [LineDedup(tmp_path / "a", threshold=7)]))
    assert not any("shared footer" in d.text for d in dedup_documents(docs, [LineDedup(tmp_path / "b", threshold=6)]))


# ---------------------------------------------------------------------------------------------------------------------
# 5. Semantic


def test_semantic_dedup_with_cheap_embedder_recall_and_false_drops(tmp_path: Path) -> None:
    docs, groups = _near_duplicate_corpus(seed=6, num_distinct=200, num_copies=100, rates=(0.01, 0.02))
    kept = set(_ids(dedup_documents(docs, [SemanticDedup(tmp_path, embedder=HashedBagOfWords())], tasks=2)))
    recall, false_drops = _score(groups, kept)
    print(f"semantic (hashed bag of words, 0.95): recall={recall:.3f} false_drops={false_drops:.4f}")
    assert recall >= 0.95 and false_drops <= 0.01


def test_semantic_dedup_kmeans_clusters_are_independent_of_tasks(tmp_path: Path) -> None:
    docs, groups = _near_duplicate_corpus(seed=7, num_distinct=200, num_copies=100, rates=(0.01, 0.02))
    kept = [
        _ids(
            dedup_documents(
                docs, [SemanticDedup(tmp_path / f"t{t}", embedder=HashedBagOfWords(), cluster_size=40)], tasks=t
            )
        )
        for t in (1, 3)
    ]
    assert kept[0] == kept[1]
    recall, false_drops = _score(groups, set(kept[0]))
    assert recall >= 0.9 and false_drops <= 0.01  # 8 k-means clusters: a few pairs may be split apart


def test_semantic_dedup_minilm_drops_paraphrases_keeps_unrelated(tmp_path: Path) -> None:
    groups = {
        "p/0": ["The cat sat on the mat all afternoon.", "All afternoon, the cat was sitting on the mat."],
        "p/1": [
            "The central bank raised interest rates by half a point to fight inflation.",
            "To combat inflation, the central bank increased interest rates by 0.5 percentage points.",
        ],
        "p/2": [
            "Photosynthesis converts light energy into chemical energy in plants.",
            "Plants use photosynthesis to turn light energy into chemical energy.",
        ],
    }
    unrelated = [
        "The recipe calls for two cups of flour and one egg.",
        "The football match ended in a draw after extra time.",
        "Quantum computers use qubits that can be in superposition.",
        "Interest rates at the bank were discussed at the cafe.",  # shares words with p/1, not its meaning
    ]
    docs = [Document(text=t, id=f"{g}/{i}") for g, texts in groups.items() for i, t in enumerate(texts)]
    docs += [Document(text=t, id=f"u/{i}") for i, t in enumerate(unrelated)]
    kept = _ids(dedup_documents(docs, [SemanticDedup(tmp_path, threshold=0.8, batch_size=4)], tasks=2))
    assert sorted(kept) == sorted([f"{g}/0" for g in groups] + [f"u/{i}" for i in range(len(unrelated))])


def test_semantic_greedy_keep_does_not_depend_on_block_size() -> None:
    vectors = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    full = _greedy_drop(vectors, 0.8)
    assert 0 < full.sum() < 300
    assert (full == _greedy_drop(vectors, 0.8, block=7)).all()


def test_semantic_dedup_rejects_bad_embedder_output(tmp_path: Path) -> None:
    docs = [Document(text="a", id="1"), Document(text="b", id="2")]
    with pytest.raises(DataError, match="shape"):
        dedup_documents(docs, [SemanticDedup(tmp_path, embedder=lambda texts: np.zeros((1, 4)))])


# ---------------------------------------------------------------------------------------------------------------------
# Stages across tasks and workers


def _all_kinds(work_dir: Path) -> list[DedupKind]:
    return [
        UrlDedup(work_dir),
        ExactDedup(work_dir),
        MinHashDedup(work_dir),
        LineDedup(work_dir, num_buckets=2),
        SemanticDedup(work_dir, embedder=HashedBagOfWords()),
    ]


def _write_jsonl_corpus(folder: Path) -> None:
    docs, _ = _near_duplicate_corpus(seed=8, num_distinct=40, num_copies=20)
    line_docs, _, _ = _line_corpus(seed=8)
    rng = random.Random(8)
    records = [{"text": d.text, "url": f"https://s.org/{rng.randrange(60)}"} for d in docs]
    records += [{"text": d.text} for d in line_docs]
    text = Corpus(9).document(0, 200)  # an exact and a bag-of-words duplicate that MinHash cannot see
    shuffled = text.split()
    rng.shuffle(shuffled)
    records += [
        {"text": text, "id": "zz/a"},
        {"text": text.upper(), "id": "zz/b"},
        {"text": " ".join(shuffled), "id": "zz/c"},
    ]
    for r in records:
        if rng.random() < 0.5 and "url" in r:
            r["crawl_date"] = f"2023-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
    rng.shuffle(records)
    folder.mkdir()
    for f in range(4):
        (folder / f"part{f}.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records[f::4]))


def test_local_executor_output_is_identical_for_1_and_2_workers(tmp_path: Path) -> None:
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    _write_jsonl_corpus(tmp_path / "input")
    outputs = {}
    for workers in (1, 2):
        run_dir = tmp_path / f"w{workers}"
        stages = dedup_stages(
            [JsonlReader(str(tmp_path / "input"))],
            _all_kinds(run_dir / "work"),
            [JsonlWriter(str(run_dir / "out"), compression=None)],
        )
        assert len(stages) == 11
        run_local(stages, tasks=2, workers=workers, logging_dir=run_dir / "logs")
        outputs[workers] = {p.name: p.read_bytes() for p in sorted((run_dir / "out").iterdir())}
    assert outputs[1] == outputs[2]
    assert list(outputs[1]) == ["00000.jsonl", "00001.jsonl"]
    kept = {orjson.loads(line)["id"] for blob in outputs[1].values() for line in blob.splitlines()}
    # the same stages in one process with one task keep the same documents
    in_process = run_in_process(
        dedup_stages([JsonlReader(str(tmp_path / "input"))], _all_kinds(tmp_path / "single")), tasks=1
    )
    assert set(_ids(in_process)) == kept
    assert {"zz/a", "zz/b", "zz/c"} & kept == {"zz/a"}
    stats = orjson.loads((tmp_path / "w2" / "logs" / "stage_10" / "stats.json").read_bytes())
    dropped = {k for step in stats for k in step["stats"] if k.startswith("dropped_")}
    assert dropped == {f"dropped_{k.reason}" for k in _all_kinds(tmp_path)}  # every kind removed something


def test_exclusion_writers_get_each_dropped_document_once_with_its_reason(tmp_path: Path) -> None:
    from datatrove.pipeline.writers import JsonlWriter

    docs = [Document(text=f"text {i % 3}", id=f"d/{i}", metadata={"url": f"https://a.org/{i % 5}"}) for i in range(10)]
    kinds = [
        UrlDedup(tmp_path / "w", exclusion_writer=JsonlWriter(str(tmp_path / "ex_url"), compression=None)),
        ExactDedup(tmp_path / "w", exclusion_writer=JsonlWriter(str(tmp_path / "ex_exact"), compression=None)),
    ]
    kept = run_in_process(dedup_stages([DocumentList(docs)], kinds), tasks=2)
    excluded = {
        name: [orjson.loads(line) for f in sorted((tmp_path / name).iterdir()) for line in f.read_bytes().splitlines()]
        for name in ("ex_url", "ex_exact")
    }
    assert sorted(r["id"] for r in excluded["ex_url"]) == [f"d/{i}" for i in range(5, 10)]
    assert {r["metadata"]["filter_reason"] for r in excluded["ex_url"]} == {"duplicate_url"}
    assert sorted(r["id"] for r in excluded["ex_exact"]) == ["d/3", "d/4"]
    assert sorted(_ids(kept)) == ["d/0", "d/1", "d/2"]


def test_filter_refuses_input_that_differs_from_signature_stage(tmp_path: Path) -> None:
    docs = [Document(text="same", id=f"d/{i}") for i in range(4)]
    kind = ExactDedup(tmp_path)
    stages = dedup_stages([DocumentList(docs)], [kind])
    run_in_process(stages[:2])
    renamed = [Document(text="same", id=f"e/{i}") for i in range(4)]
    with pytest.raises(DataError, match="same input"):
        run_in_process(dedup_stages([DocumentList(renamed)], [kind])[2:])


def test_merge_refuses_stale_signature_files_from_a_run_with_other_tasks(tmp_path: Path) -> None:
    docs = [Document(text=str(i % 3), id=f"d/{i}") for i in range(6)]
    kind = ExactDedup(tmp_path)
    run_in_process(dedup_stages([DocumentList(docs)], [kind])[:1], tasks=3)
    with pytest.raises(DataError, match="stale"):
        run_in_process(dedup_stages([DocumentList(docs)], [kind])[:2], tasks=2)
