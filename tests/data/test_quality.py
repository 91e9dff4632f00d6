"""Tests for herd.data.quality on documents written or generated here, with known labels.

The classifier tests measure accuracy on held-out documents; the domain tests measure per-domain precision and
recall of the seed heuristic and of the trained tagger; the slow test measures how well the embedded 135M judge
separates clearly good documents from clearly bad ones.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
from datatrove.data import Document

from herd.data.quality import (
    DOMAINS,
    QUALITY_EXAMPLES,
    DomainTagger,
    Featurizer,
    LLMJudge,
    QualityScorer,
    TextClassifier,
    judge_quality,
    label_and_train_quality,
    load_judge,
    seed_domain_label,
    train_domain_classifier,
)
from herd.errors import DataError

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# ---------------------------------------------------------------------------------------------------------------------
# Written test documents

PROSE = [
    "The museum reopened last spring after a long renovation of its east wing.",
    "Visitors can now walk through a reconstructed medieval market street.",
    "Most of the old paintings were cleaned and hung in brighter rooms.",
    "Our hiking group left the village early to avoid the afternoon heat.",
    "The trail climbs slowly through pine forest before reaching the ridge.",
    "From the top you can see the lake and the snow on the northern peaks.",
    "Bakers in the region still use sourdough starters that are decades old.",
    "The dough rests overnight, which gives the bread its sour taste.",
    "Many families buy fresh loaves every morning from the corner shop.",
    "The city council voted to extend the bicycle lanes along the river.",
    "Shop owners worried about parking, but traffic has been calmer since.",
    "Children from the nearby school now ride to class in small groups.",
    "The novel tells the story of two sisters who inherit a failing farm.",
    "Their letters to each other show how differently they remember childhood.",
    "Critics praised the quiet ending, which leaves several questions open.",
    "Migrating birds stop at the marsh each autumn to rest and feed.",
    "Volunteers count them from wooden towers at the edge of the reeds.",
    "This year they recorded more cranes than in any season before.",
    "The orchestra rehearsed the symphony for three weeks before the concert.",
    "The conductor asked the violins to play the slow movement more softly.",
    "After the final chord the audience stood and applauded for a long time.",
    "Coffee was first grown commercially in the highlands of Ethiopia and Yemen.",
    "Traders carried the beans across the sea, and coffee houses spread quickly.",
    "Today small farms sell their harvest directly to roasters abroad.",
]

FOREIGN = {
    "fr": [
        "Le marché du samedi attire beaucoup de monde sur la place du village.",
        "Les enfants jouent dans le parc pendant que leurs parents discutent.",
        "Nous avons visité le château et ses jardins au début de l'été.",
        "La boulangerie ouvre très tôt le matin et ferme à midi.",
        "Il pleut souvent en novembre, alors prenez un parapluie.",
        "Le train pour Lyon part à huit heures et demie.",
        "Elle lit un roman policier chaque soir avant de dormir.",
        "Les musées de la ville sont gratuits le premier dimanche du mois.",
    ],
    "de": [
        "Am Wochenende fahren wir mit dem Fahrrad an den See.",
        "Die Bibliothek bleibt wegen Bauarbeiten bis Ende Mai geschlossen.",
        "Mein Bruder arbeitet seit drei Jahren in einer kleinen Werkstatt.",
        "Im Winter wird es hier schon um vier Uhr dunkel.",
        "Der Zug hatte heute Morgen wieder zwanzig Minuten Verspätung.",
        "Wir haben gestern Abend zusammen Suppe gekocht und Karten gespielt.",
        "Die Kinder freuen sich auf die Sommerferien an der Ostsee.",
        "Auf dem Markt gibt es frisches Obst aus der Region.",
    ],
    "es": [
        "Los domingos comemos en casa de mis abuelos.",
        "La ciudad tiene un puerto antiguo y muchas calles estrechas.",
        "El autobús llega cada quince minutos a la parada de la esquina.",
        "Mi hermana estudia medicina en la universidad de Sevilla.",
        "En verano hace mucho calor y la gente sale por la noche.",
        "Compramos pan, queso y fruta en el mercado central.",
        "La película empieza a las nueve y media en el cine del barrio.",
        "Los turistas visitan la catedral y el museo de arte moderno.",
    ],
    "it": [
        "La nonna prepara la pasta fresca ogni domenica mattina.",
        "Il treno per Milano parte dal binario tre.",
        "In primavera i giardini della villa sono pieni di fiori.",
        "Abbiamo passato le vacanze in una piccola isola del sud.",
        "Il negozio di scarpe chiude alle sette e mezza.",
        "I ragazzi giocano a calcio nel cortile della scuola.",
        "La biblioteca comunale ha aperto una nuova sala di lettura.",
        "Ogni mattina prendo un caffè al bar sotto casa.",
    ],
    "ru": [
        "Летом мы часто ездим на дачу к родителям.",
        "В городе открыли новую библиотеку для детей.",
        "Поезд в Москву отправляется в семь часов вечера.",
        "Моя сестра учится в университете на историческом факультете.",
        "Зимой здесь выпадает много снега и бывает очень холодно.",
        "На рынке продают свежие овощи и домашний сыр.",
        "Вечером мы гуляли по набережной и смотрели на реку.",
        "В музее проходит выставка старинных карт.",
    ],
    "zh": [
        "我们周末常常去公园散步。",
        "这家饭馆的面条非常好吃，价格也不贵。",
        "明天早上八点我们在学校门口见面。",
        "他每天坐地铁去公司上班。",
        "图书馆里有很多关于历史的书。",
        "今年夏天的天气特别热。",
        "妈妈在市场上买了新鲜的水果和蔬菜。",
        "孩子们在院子里玩得很开心。",
    ],
}


def _ident(rng: random.Random) -> str:
    stem = rng.choice(["count", "total", "items", "buffer", "user", "path", "node", "size", "index", "result"])
    return stem + rng.choice(["", "_id", "s", "_list", "2"])


def code_doc(rng: random.Random) -> str:
    a, b, c = _ident(rng), _ident(rng), _ident(rng)
    kind = rng.randrange(4)
    if kind == 0:
        return (
            f"import os\nfrom typing import Any\n\n\ndef load_{a}({b}: str) -> list[Any]:\n"
            f"    {c} = []\n    for line in open({b}):\n        if line.strip():\n"
            f"            {c}.append(line.split(','))\n    return {c}\n\n\nclass {a.title()}Cache:\n"
            f"    def __init__(self, size: int = {rng.randint(2, 99)}) -> None:\n        self.size = size\n"
            f"        self.data = {{}}\n\n    def get(self, key):\n        return self.data.get(key)\n"
        )
    if kind == 1:
        return (
            f"const {a} = require('fs');\n\nfunction read{b.title()}({c}) {{\n  let out = [];\n"
            f"  for (let i = 0; i < {c}.length; i++) {{\n    if ({c}[i] !== null) {{\n      out.push({c}[i]);\n"
            f"    }}\n  }}\n  return out;\n}}\n\nmodule.exports = {{ read{b.title()} }};\n"
        )
    if kind == 2:
        return (
            f"#include <stdio.h>\n#include <stdlib.h>\n\nstatic int {a}(int *{b}, int n) {{\n    int s = 0;\n"
            f"    for (int i = 0; i < n; ++i) {{\n        s += {b}[i];\n    }}\n    return s;\n}}\n\n"
            f'int main(void) {{\n    int {c}[{rng.randint(3, 9)}] = {{0}};\n    printf("%d\\n", {a}({c}, 3));\n'
            f"    return 0;\n}}\n"
        )
    return (
        f'package main\n\nimport "fmt"\n\ntype {a.title()} struct {{\n    Name string\n    Size int\n}}\n\n'
        f'func (x *{a.title()}) Grow({b} int) error {{\n    if {b} < 0 {{\n        return fmt.Errorf("negative")\n'
        f"    }}\n    x.Size += {b}\n    return nil\n}}\n"
    )


def math_doc(rng: random.Random) -> str:
    a, b, n = rng.randint(2, 9), rng.randint(1, 9), rng.randint(2, 6)
    v = rng.choice("xyzt")
    parts = [
        f"Let $f({v}) = {a}{v}^{{{n}}} + {b}{v}$. Then $f'({v}) = {a * n}{v}^{{{n - 1}}} + {b}$.",
        f"By the fundamental theorem of calculus, $\\int_0^1 f({v})\\,d{v} = \\frac{{{a}}}{{{n + 1}}} + "
        f"\\frac{{{b}}}{{2}}$.",
        f"Consider the series $\\sum_{{k=1}}^{{\\infty}} \\frac{{1}}{{k^{{{n}}}}}$, which converges.",
        f"The matrix $A = \\begin{{pmatrix}} {a} & {b} \\\\ 0 & {n} \\end{{pmatrix}}$ has eigenvalues "
        f"$\\lambda_1 = {a}$ and $\\lambda_2 = {n}$.",
        f"Proof. Suppose $p$ is a prime with $p \\mid {a}^{{{n}}}$; then $p \\mid {a}$, and the lemma follows.",
        f"We solve ${a}{v}^2 - {b}{v} - {n} = 0$ with the formula $\\frac{{-b \\pm \\sqrt{{b^2 - 4ac}}}}{{2a}}$.",
        f"For every $\\epsilon > 0$ there is $\\delta > 0$ such that $|{v} - {a}| < \\delta$ implies "
        f"$|f({v}) - f({a})| < \\epsilon$.",
    ]
    return " ".join(rng.sample(parts, 4))


def domain_dataset(seed: int, split: int, n: int = 10) -> tuple[list[str], list[str]]:
    """n documents per domain. Prose and foreign documents of split 0 and 1 use disjoint halves of the sentences."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        lang = rng.choice(sorted(FOREIGN))
        texts += [
            code_doc(rng),
            math_doc(rng),
            " ".join(rng.sample(PROSE[split::2], 5)),
            " ".join(rng.sample(FOREIGN[lang][split::2], 3)),
        ]
        labels += ["code", "math", "general", "multilingual"]
    return texts, labels


def per_class(predicted: list, truth: list) -> dict[str, tuple[float, float]]:
    """label -> (precision, recall)."""
    out = {}
    for label in sorted(set(truth)):
        tp = sum(p == t == label for p, t in zip(predicted, truth, strict=True))
        out[label] = (tp / max(1, predicted.count(label)), tp / truth.count(label))
    return out


SPAM = ["cheap", "best", "buy", "discount", "free", "offer", "deal", "sale", "price", "online", "click", "win"]


def junk_doc(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return " ".join(rng.choice(SPAM) for _ in range(40)) + " !!!"
    if kind == 1:
        return " ".join(
            "".join(rng.choice("qwrtzpsdfghjklxcvbnm") for _ in range(rng.randint(3, 9))) for _ in range(40)
        )
    return " | ".join(rng.choice(["Home", "Login", "Cart", "Contact", "FAQ", "Next »", "Share"]) for _ in range(30))


def quality_dataset(seed: int, n: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        texts += [" ".join(rng.sample(PROSE, 5)), junk_doc(rng)]
        labels += [1, 0]
    return texts, labels


# ---------------------------------------------------------------------------------------------------------------------
# TextClassifier


def topic_dataset(seed: int, n: int) -> tuple[list[str], list[str]]:
    """Two topics over shared filler words; each document has ~30% topic words."""
    rng = random.Random(seed)
    topics = {
        "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum"],
        "car": ["engine", "wheel", "brake", "piston", "gear", "clutch", "axle", "tire", "valve", "spark"],
    }
    filler = ["the", "a", "of", "and", "to", "in", "is", "it", "that", "with", "for", "on"]
    texts, labels = [], []
    for i in range(n):
        label = ["fruit", "car"][i % 2]
        texts.append(" ".join(rng.choice(topics[label] if rng.random() < 0.3 else filler) for _ in range(30)))
        labels.append(label)
    return texts, labels


def test_classifier_learns_separable_task_with_high_heldout_accuracy() -> None:
    train_x, train_y = topic_dataset(0, 200)
    test_x, test_y = topic_dataset(1, 200)
    clf = TextClassifier().fit(train_x, train_y)
    assert clf.labels == ["car", "fruit"]
    accuracy = np.mean([p == y for p, y in zip(clf.predict(test_x), test_y, strict=True)])
    assert accuracy >= 0.98, accuracy
    proba = clf.predict_proba(test_x)
    assert proba.shape == (200, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)


def test_classifier_with_char_ngrams_separates_scripts() -> None:
    # Character n-grams alone (no word features) must still carry the signal.
    train_x, train_y = domain_dataset(0, 0, n=6)
    test_x, test_y = domain_dataset(1, 1, n=6)
    clf = TextClassifier(word_ngrams=0, char_ngrams=(3,)).fit(train_x, train_y)
    accuracy = np.mean([p == y for p, y in zip(clf.predict(test_x), test_y, strict=True)])
    assert accuracy >= 0.9, accuracy


def test_fit_is_deterministic() -> None:
    x, y = topic_dataset(0, 80)
    a, b = TextClassifier(char_ngrams=(3,)).fit(x, y), TextClassifier(char_ngrams=(3,)).fit(x, y)
    assert np.array_equal(a._table, b._table) and np.array_equal(a._bias, b._bias)
    assert np.array_equal(a.predict_proba(x), b.predict_proba(x))


def test_save_load_round_trip_gives_identical_probabilities(tmp_path: Path) -> None:
    x, y = topic_dataset(0, 80)
    clf = TextClassifier(num_buckets=1 << 16, char_ngrams=(2, 4), l2=1e-3).fit(x, [int(v == "car") for v in y])
    path = tmp_path / "clf.npz"
    clf.save(path)
    loaded = TextClassifier.load(path)
    assert loaded.labels == [0, 1] and isinstance(loaded.labels[0], int)
    assert loaded.featurizer == clf.featurizer and loaded.l2 == clf.l2
    texts = [*x, "", "unseen words only", "ünïcödé テキスト"]
    assert np.array_equal(loaded.predict_proba(texts), clf.predict_proba(texts))
    assert [p.name for p in tmp_path.iterdir()] == ["clf.npz"]  # no temp file left behind


def test_features_do_not_depend_on_python_hash_seed() -> None:
    # crc32 + a fixed mixer: these bucket ids are the same in every process; a salted hash would change them.
    # Unigrams {hello: 2, world: 1} and bigrams {hello hello, hello world}, each group L2-normalized then / sqrt(2).
    buckets, values = Featurizer(num_buckets=1000).features("Hello hello world")
    assert buckets.tolist() == [276, 592, 408, 746] and values.dtype == np.float32
    np.testing.assert_allclose(values, [0.2**0.5 / 2**0.5 * k for k in (1, 2)] + [0.5, 0.5], rtol=1e-6)


def test_bad_inputs_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="two distinct labels"):
        TextClassifier().fit(["a", "b"], [1, 1])
    with pytest.raises(DataError, match="mix ints and strings"):
        TextClassifier().fit(["a", "b"], [1, "x"])
    with pytest.raises(DataError, match="not trained"):
        TextClassifier().predict(["a"])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"bad\.npz"):
        TextClassifier.load(bad)
    with pytest.raises(DataError, match=r"missing\.npz"):
        TextClassifier.load(tmp_path / "missing.npz")


def test_prediction_speed_is_thousands_of_docs_per_second() -> None:
    x, y = topic_dataset(0, 40)
    clf = TextClassifier().fit(x, y)
    docs = [" ".join(PROSE[i % 24 :] + PROSE[: i % 24]) for i in range(1000)]  # ~1.6 KB each
    start = time.perf_counter()
    clf.predict_proba(docs)
    rate = len(docs) / (time.perf_counter() - start)
    assert rate > 1000, f"{rate:.0f} docs/s"


# ---------------------------------------------------------------------------------------------------------------------
# Quality: labels from a judge, the classifier, the scoring step


def heuristic_judge(texts: list[str]) -> list[int]:
    """A stand-in judge: 1 when at least 8% of the words are English function words (prose)."""
    function_words = {"the", "a", "of", "and", "to", "in", "is", "it", "that", "for", "on", "from", "their", "with"}
    return [int(sum(w in function_words for w in t.lower().split()) >= 0.08 * len(t.split())) for t in texts]


def test_label_and_train_quality_agrees_with_the_judge_on_heldout_docs() -> None:
    texts, truth = quality_dataset(0, 60)
    assert heuristic_judge(texts) == truth
    clf, report = label_and_train_quality(texts, heuristic_judge, sample_size=100, heldout_fraction=0.3, seed=1)
    assert report.num_labeled == 100 and report.num_train + report.num_heldout == 100
    assert sum(report.label_counts.values()) == 100
    assert report.agreement >= 0.95 and report.precision >= 0.95 and report.recall >= 0.95, report
    assert clf.labels == [0, 1]


def test_judge_quality_checks_the_judge_output() -> None:
    with pytest.raises(DataError, match="returned 1 labels for 2 texts"):
        judge_quality(["a", "b"], lambda texts: [1])
    with pytest.raises(DataError, match="integer labels"):
        judge_quality(["a"], lambda texts: [0.5])
    with pytest.raises(DataError, match="fewer than two classes"):
        label_and_train_quality(["a b c"] * 10, lambda texts: [1] * len(texts))


def test_quality_scorer_drops_low_quality_docs_with_reason(tmp_path: Path) -> None:
    texts, labels = quality_dataset(0, 40)
    path = tmp_path / "quality.npz"
    TextClassifier().fit(texts, labels).save(path)
    test_texts, test_labels = quality_dataset(1, 30)
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(test_texts)]

    scorer = QualityScorer(path, threshold=0.5, batch_size=16)
    kept = list(scorer.run(iter(docs)))
    kept_ids = {d.id for d in kept}
    dropped_truth = [i for i, y in enumerate(test_labels) if y == 0]
    dropped = [i for i in range(len(docs)) if str(i) not in kept_ids]
    tp = len(set(dropped) & set(dropped_truth))
    precision, recall = tp / max(1, len(dropped)), tp / len(dropped_truth)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert all(0 <= d.metadata["quality_score"] <= 1 for d in docs)
    assert all(d.metadata["quality_score"] >= 0.5 for d in kept)
    assert scorer.stats["dropped_low_quality"].total == len(dropped)
    assert scorer.stats["total"].total == len(docs)

    # Without a threshold every document is kept and scored.
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(test_texts)]
    assert len(list(QualityScorer(path).run(iter(docs)))) == len(docs)


def test_quality_scorer_needs_positive_label_for_string_labels(tmp_path: Path) -> None:
    texts, labels = quality_dataset(0, 10)
    path = tmp_path / "q.npz"
    TextClassifier().fit(texts, ["high" if y else "low" for y in labels]).save(path)
    with pytest.raises(DataError, match="positive_label"):
        QualityScorer(path)
    docs = [Document(text=texts[0], id="good"), Document(text=texts[1], id="bad")]
    list(QualityScorer(path, positive_label="high").run(iter(docs)))
    assert docs[0].metadata["quality_score"] > 0.5 > docs[1].metadata["quality_score"]


# ---------------------------------------------------------------------------------------------------------------------
# Domains


def test_seed_domain_label_precision_and_recall_on_generated_domains() -> None:
    texts, truth = domain_dataset(0, 0, n=12)
    metrics = per_class([seed_domain_label(t) for t in texts], truth)
    for domain, (precision, recall) in metrics.items():
        assert precision >= 0.9 and recall >= 0.9, (domain, precision, recall)
    assert seed_domain_label("Ceci est un texte.", "fr") == "multilingual"
    assert seed_domain_label(PROSE[0], "en") == "general"


def test_domain_tagger_accuracy_on_heldout_docs(tmp_path: Path) -> None:
    train_x, _ = domain_dataset(0, 0, n=12)
    test_x, test_y = domain_dataset(1, 1, n=10)
    path = tmp_path / "domain.npz"
    clf = train_domain_classifier(train_x)  # seed labels only: no ground truth seen
    assert sorted(clf.labels) == sorted(DOMAINS)
    clf.save(path)
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(test_x)]
    tagger = DomainTagger(path)
    out = list(tagger.run(iter(docs)))
    predicted = [d.metadata["domain"] for d in out]
    accuracy = np.mean([p == y for p, y in zip(predicted, test_y, strict=True)])
    assert accuracy >= 0.95, (accuracy, per_class(predicted, test_y))
    assert all(0 < d.metadata["domain_score"] <= 1 for d in out)
    assert sum(tagger.stats[f"domain_{d}"].total for d in DOMAINS) == len(docs)


def test_domain_tagger_trusts_a_non_english_language_tag(tmp_path: Path) -> None:
    train_x, train_y = domain_dataset(0, 0, n=4)
    path = tmp_path / "domain.npz"
    train_domain_classifier(train_x, train_y).save(path)
    docs = [
        Document(text=PROSE[0], id="tagged", metadata={"language": "fr", "language_score": 0.8}),
        Document(text=PROSE[0], id="english", metadata={"language": "en"}),
    ]
    out = {d.id: d.metadata for d in DomainTagger(path).run(iter(docs))}
    assert out["tagged"]["domain"] == "multilingual" and out["tagged"]["domain_score"] == 0.8
    assert out["english"]["domain"] == "general"


@pytest.mark.slow
def test_domain_tagger_on_the_embedded_corpus(embedded_corpus, tmp_path: Path) -> None:
    """Real text (stdlib code and docs, sympy docs, spaCy's example sentences): train on seed labels of half the
    clean documents, without language tags, and measure the tagger on the other half against the corpus truth."""
    import orjson

    docs = [orjson.loads(line) for f in sorted(embedded_corpus.path.glob("*.jsonl")) for line in f.open("rb")]
    docs = sorted((d for d in docs if d["truth"]["kind"] == "clean"), key=lambda d: d["id"])
    train, test = docs[0::2], docs[1::2]
    path = tmp_path / "domain.npz"
    train_domain_classifier([d["text"] for d in train]).save(path)
    out = list(DomainTagger(path).run(Document(text=d["text"], id=d["id"]) for d in test))
    predicted, truth = [d.metadata["domain"] for d in out], [d["truth"]["domain"] for d in test]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    seed_accuracy = np.mean([seed_domain_label(d["text"]) == d["truth"]["domain"] for d in test])
    # Measured: tagger 0.96, seed heuristic alone 0.94.
    assert accuracy >= 0.92 and seed_accuracy >= 0.9, (accuracy, seed_accuracy, per_class(predicted, truth))


def test_train_domain_classifier_rejects_unknown_labels() -> None:
    with pytest.raises(DataError, match="unknown domain labels"):
        train_domain_classifier(["a", "b"], ["code", "poetry"])


# ---------------------------------------------------------------------------------------------------------------------
# The LLM judge (embedded SmolLM2-135M-Instruct)

GOOD = [
    "The water cycle describes how water moves between the oceans, the atmosphere and the land. Heat from the sun "
    "evaporates water from lakes and seas; the vapour rises, cools and condenses into clouds. When the droplets grow "
    "heavy enough they fall as rain or snow, which feeds rivers and groundwater and eventually returns to the sea.",
    "Photosynthesis is the process by which green plants turn light into chemical energy. Inside the chloroplasts, "
    "chlorophyll absorbs sunlight and uses its energy to split water molecules. The hydrogen is combined with carbon "
    "dioxide from the air to build glucose, and oxygen is released as a by-product.",
    "A binary search finds an item in a sorted list by repeatedly halving the range that could contain it. It "
    "compares the target with the middle element: if they are equal the search ends, otherwise it continues in the "
    "left or right half, so it needs about log2(n) comparisons for a list of n items.",
    "The French Revolution began in 1789, when a financial crisis forced King Louis XVI to summon the "
    "Estates-General. Representatives of the Third Estate declared themselves a National Assembly and vowed to write "
    "a constitution. Over the following decade the monarchy was abolished.",
    "To keep bread fresh for longer, store it at room temperature in a paper bag or a bread box rather than in the "
    "refrigerator. Cold temperatures speed up staling because the starch recrystallises faster. If you will not eat "
    "a loaf within a few days, slice it and freeze it.",
    "Vaccines train the immune system to recognise a pathogen without causing the disease. They contain a weakened "
    "or inactivated form of the microbe, or a piece of it such as a protein. The body responds by producing "
    "antibodies and memory cells, so that a later infection is met by a faster defence.",
    "Plate tectonics explains why earthquakes and volcanoes cluster along certain lines on the map. The Earth's "
    "outer shell is broken into large plates that move a few centimetres each year. Where plates collide, one may "
    "sink beneath the other and melt; where they slide past each other, stress builds up.",
    "When you write a function, give it a name that says what it returns or what it does, keep it short enough to "
    "read on one screen, and make its inputs explicit. Functions that depend on hidden global state are hard to "
    "test, because the same call can give different results depending on what ran before it.",
    "Compound interest means that interest is earned on previously earned interest as well as on the original "
    "deposit. If you invest 1,000 dollars at 5 percent a year, you have 1,050 dollars after one year and 1,102.50 "
    "after two. Over long periods this effect dominates, which is why starting to save early matters.",
    "The human heart has four chambers. The right atrium receives blood returning from the body and passes it to "
    "the right ventricle, which pumps it to the lungs. Oxygen-rich blood comes back to the left atrium, and the "
    "thick-walled left ventricle pumps it out through the aorta to the rest of the body.",
    "Shakespeare's Hamlet follows a Danish prince who learns from his father's ghost that his uncle murdered the "
    "king to take the throne. Hamlet's hesitation to act, his feigned madness and his long reflections on life and "
    "death have made the play one of the most studied works in the English language.",
    "Newton's first law states that an object stays at rest or keeps moving in a straight line at constant speed "
    "unless a net force acts on it. This property is called inertia. A passenger in a car that brakes suddenly "
    "lurches forward because their body tends to keep moving while the car slows down.",
]


def bad_documents(seed: int = 0) -> list[str]:
    """Twelve clearly bad documents: gibberish, keyword spam, link spam, menus, product lists, symbol soup."""
    rng = random.Random(seed)
    spam = [*SPAM, "casino", "loans", "bonus", "pills"]
    menu = ["Home", "Login", "Sign up", "Cart", "Contact us", "FAQ", "Privacy", "Terms", "Sitemap", "Next »", "Share"]
    out = []
    for k in range(12):
        kind = k % 6
        if kind == 0:
            words = ("".join(rng.choice("qwrtzpsdfghjklxcvbnm") for _ in range(rng.randint(3, 10))) for _ in range(60))
            out.append(" ".join(words))
        elif kind == 1:
            out.append(" ".join(rng.choice(spam) for _ in range(60)) + " !!!")
        elif kind == 2:
            links = (f"{rng.choice(spam)} {rng.choice(spam)}!!! www.{rng.choice(spam)}{k}.biz" for _ in range(12))
            out.append("CLICK HERE!!! " + " ".join(links))
        elif kind == 3:
            out.append(" | ".join(rng.choice(menu) for _ in range(40)))
        elif kind == 4:
            items = ["shoes", "watches", "pills", "phones", "bags", "tickets"]
            ads = (f"{rng.choice(spam)} {rng.choice(items)} {rng.randint(2010, 2024)}" for _ in range(25))
            out.append(", ".join(ads))
        else:
            out.append(" ".join("".join(rng.choice("#$%&*@^~|<>{}=+0123456789") for _ in range(6)) for _ in range(50)))
    return out


def test_llm_judge_scores_with_int8_weights_on_a_decode_model(tiny_chat_model) -> None:
    """curate.quality.judge_quant: the judge only scores (one forward per batch, no generation), so int8/int4 apply
    to that forward. Two few-shot examples keep the prompt within the tiny model's 512-token context."""
    import torch

    from herd.inference.decode_model import DecodeModel
    from herd.model import Transformer

    model, tok = load_judge(tiny_chat_model, dtype="float32", quant="int8")
    assert isinstance(model, DecodeModel) and model.quant == "int8" and model.layers[0].wqkv.packed.kind == "int8"
    plain = load_judge(tiny_chat_model, dtype="float32")[0]
    assert isinstance(plain, Transformer)  # judge_quant=none: as before
    for m in (model, plain):
        judge = LLMJudge((m, tok), examples=QUALITY_EXAMPLES[:2], max_doc_tokens=64, batch_size=4)
        # The shared prefix copied through the model's cache gives what one plain forward over the prompt gives.
        doc = tok.encode(" " + GOOD[0]) + judge.suffix
        with torch.inference_mode():
            full = m(torch.tensor([judge.prefix + doc]))[0, -1].log_softmax(-1)
        shared = judge._next_token_logprobs([doc, tok.encode(" spam spam") + judge.suffix])[0]
        torch.testing.assert_close(shared, full, atol=1e-4, rtol=0)
    judge = LLMJudge((model, tok), examples=QUALITY_EXAMPLES[:2], max_doc_tokens=64)
    scores = judge.scores(GOOD[:3] + bad_documents()[:3])
    assert scores.shape == (6,) and np.all((scores >= 0) & (scores <= 3))


@pytest.mark.slow
def test_llm_judge_separates_clearly_good_from_clearly_bad_documents(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    judge = LLMJudge()  # the embedded SmolLM2-135M-Instruct, bf16

    # The shared-prefix batch equals one plain forward over the whole prompt (checked in fp32: bf16 rounding differs
    # between the two shapes; bf16 -> fp32 -> bf16 restores the weights exactly).
    judge.model.float()
    doc = judge.tokenizer.encode(" " + GOOD[0]) + judge.suffix
    with torch.inference_mode():
        full = judge.model(torch.tensor([judge.prefix + doc]))[0, -1].log_softmax(-1)
    shared = judge._next_token_logprobs([doc, judge.tokenizer.encode(" spam spam") + judge.suffix])[0]
    torch.testing.assert_close(shared, full, atol=1e-4, rtol=0)
    judge.model.to(torch.bfloat16)

    bad = bad_documents()
    start = time.perf_counter()
    scores = judge.scores(GOOD + bad)
    seconds = time.perf_counter() - start
    good_s, bad_s = scores[:12], scores[12:]
    auc = np.mean([(g > b) + 0.5 * (g == b) for g in good_s for b in bad_s])
    labels = (scores >= judge.threshold).astype(int)
    accuracy = np.mean(labels == np.array([1] * 12 + [0] * 12))
    with capsys.disabled():
        print(f"\nLLM judge (SmolLM2-135M, bf16): AUC {auc:.3f}, accuracy at {judge.threshold} {accuracy:.3f}, "
              f"mean score good {good_s.mean():.2f} / bad {bad_s.mean():.2f}, {seconds / 24:.2f} s/doc")  # fmt: skip
    assert np.all((scores >= 0) & (scores <= 3))
    # Measured: AUC 1.0, accuracy 0.875 (3 of 24 wrong). The bounds leave room for other CPUs' bf16 kernels.
    assert auc >= 0.9 and accuracy >= 0.8

    # Deterministic, and it plugs into the labeling recipe like any callable judge.
    sub = GOOD[:2] + bad[:2]
    sub_scores = judge.scores(sub)
    assert np.array_equal(judge.scores(sub), sub_scores)
    assert judge_quality(sub, judge) == (sub_scores >= judge.threshold).astype(int).tolist()
