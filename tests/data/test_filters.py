"""Tests for herd.data.filters on documents generated here, whose ground truth is known.

Every filter is measured the same way: a set of documents that should pass and a set that should be dropped (or,
for the PII scrubber, planted items that must go and tricky clean strings that must stay), then precision and
recall of the drops. `_prose` writes English-like documents from sentence templates with a few hundred slot words,
so no two documents share a sentence and 5-grams rarely repeat, as in real prose.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import os
import pickle
import random
import re
import string
from pathlib import Path

import pytest
from datatrove.data import Document

from herd.data.filters import (
    LISTS_DIR,
    PII_PLACEHOLDERS,
    DirtyWordFilter,
    LanguageId,
    PiiScrubber,
    QualityHeuristicsFilter,
    RepetitionFilter,
    TokenDistributionFilter,
    TokenReference,
    UrlFilter,
    luhn_valid,
    read_list,
    token_pieces,
    url_host,
)
from herd.errors import DataError

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# ---------------------------------------------------------------------------------------------------------------------
# Generated English-like prose

NOUNS = ("river", "farmer", "village", "bridge", "library", "committee", "budget", "school", "roof", "winter",
         "bread", "museum", "sailor", "map", "coast", "engineer", "tower", "storm", "report", "floor", "teacher",
         "student", "program", "railway", "path", "cyclist", "shop", "glacier", "ocean", "orchestra", "critic",
         "volunteer", "tree", "park", "garden", "doctor", "patient", "study", "survey", "market", "harbor",
         "island", "mountain", "forest", "valley", "city", "council", "road", "station", "train", "ship",
         "captain", "author", "novel", "chapter", "kitchen", "recipe", "festival", "painter", "gallery",
         "scientist", "experiment", "laboratory", "satellite", "planet", "telescope")  # fmt: skip
ADJS = ("old", "new", "small", "large", "quiet", "busy", "narrow", "wide", "ancient", "modern", "careful",
        "bright", "dark", "northern", "southern", "local", "famous", "simple", "heavy", "light", "early", "late",
        "rare", "common", "wooden", "stone", "green", "golden", "patient", "curious")  # fmt: skip
VERBS = ("repaired", "visited", "described", "measured", "painted", "studied", "opened", "closed", "crossed",
         "built", "moved", "found", "carried", "watched", "reported", "changed", "followed", "planned", "launched",
         "questioned", "praised", "planted", "cleaned", "tested", "mapped")  # fmt: skip
NAMES = ("Maria", "Ahmed", "Chen", "Olga", "Kwame", "Lucia", "Hiro", "Priya", "Tomas", "Ingrid", "Samuel",
         "Fatima", "Diego", "Anna", "Yusuf", "Elena")  # fmt: skip
TEMPLATES = (
    "The {a} {n} {v} the {n2} near the {n3}.",
    "{N} said that the {n} had {v} a {a} {n2} before spring.",
    "In {y}, a {a} {n} {v} {k} {n2}s along the {n3}.",
    "Because the {n} was {a}, {N} {v} the {n2} with great care.",
    "Nobody expected that the {n} would be {v} by a {a} {n2}.",
    "After the {n} {v} the {a} {n2}, {N} wrote to the {n3}.",
    "It is {a} for a {n} to have {v} so many {n2}s in one year.",
    "Most of the {n}s in the {a} {n2} were {v} during {y}.",
    "{N} and {N2} {v} the {n} and then asked about the {a} {n2}.",
    "When the {a} {n} arrived, the {n2} and the {n3} were already {v}.",
)


def _sentence(rng: random.Random) -> str:
    return rng.choice(TEMPLATES).format(
        a=rng.choice(ADJS), n=rng.choice(NOUNS), n2=rng.choice(NOUNS), n3=rng.choice(NOUNS), v=rng.choice(VERBS),
        N=rng.choice(NAMES), N2=rng.choice(NAMES), y=rng.randint(1850, 2024), k=rng.randint(2, 900),
    )  # fmt: skip


def _prose(rng: random.Random, sentences: int = 40) -> str:
    """Paragraphs of 3-6 generated sentences; documents of ~400 words by default."""
    paragraphs, left = [], sentences
    while left > 0:
        k = min(left, rng.randint(3, 6))
        paragraphs.append(" ".join(_sentence(rng) for _ in range(k)))
        left -= k
    return "\n\n".join(paragraphs)


# Real prose written for these tests, with vocabulary the generator never uses (for held-out checks).
REAL_PROSE = [
    "Photosynthesis converts light energy into chemical energy. Plants absorb carbon dioxide through small pores "
    "in their leaves and release oxygen as a by-product. The process depends on chlorophyll, which gives leaves "
    "their colour, and it slows down when temperatures drop or when water is scarce. Farmers have long known that "
    "crops grown in poor light yield less grain, even when the soil is rich and well watered.",
    "The printing press changed how ideas travelled across Europe. Before it, books were copied by hand, which made "
    "them expensive and rare. Within fifty years of its invention, millions of volumes had been printed, and "
    "pamphlets could spread an argument from one city to another in a matter of weeks. Historians still debate how "
    "much of the Reformation would have happened without it.",
    "To make a simple tomato sauce, warm olive oil in a pan and soften a chopped onion for ten minutes. Add garlic, "
    "cook for one more minute, then pour in a tin of tomatoes with a pinch of salt. Let it bubble gently for about "
    "twenty minutes, stirring now and then, until it thickens. Taste it before serving and adjust the seasoning; a "
    "little butter at the end makes it richer.",
    "Volcanoes form where molten rock reaches the surface of the earth. Some erupt explosively, throwing ash high "
    "into the atmosphere, while others release slow rivers of lava that can flow for kilometres. Scientists watch "
    "for small earthquakes, changes in ground level and gas emissions, which often signal that magma is rising "
    "beneath a mountain that has been quiet for centuries.",
    "Learning a second language as an adult takes patience. Vocabulary comes first for most learners, but grammar "
    "and pronunciation need regular practice with native speakers. Short daily sessions work better than long "
    "weekly ones, and reading books that are slightly too hard, with a dictionary nearby, is one of the most "
    "reliable ways to improve both comprehension and confidence over time.",
    "The tides are caused mainly by the gravitational pull of the moon, with a smaller contribution from the sun. "
    "When the sun and moon line up, their effects add together and produce spring tides, which rise higher and fall "
    "lower than usual. Harbour masters publish tables that predict the height of the water for every hour of the "
    "year, and sailors rely on them to avoid running aground in shallow channels.",
]


def _precision_recall(dropped: set[str], should_drop: set[str]) -> tuple[float, float]:
    true_pos = len(dropped & should_drop)
    precision = true_pos / len(dropped) if dropped else 1.0
    recall = true_pos / len(should_drop) if should_drop else 1.0
    return precision, recall


def _dropped(step, docs: list[Document]) -> set[str]:
    kept = {d.id for d in step.run(iter(docs))}
    return {d.id for d in docs} - kept


# ---------------------------------------------------------------------------------------------------------------------
# UrlFilter


def test_url_filter_blocks_listed_domains_and_subdomains_only() -> None:
    rng = random.Random(0)
    blocked = read_list(LISTS_DIR / "url_blocklist.txt")
    docs, should_drop = [], set()
    for i in range(200):
        sub = rng.choice(["", "www.", "m.", "cdn.img.", "WWW."])
        path = "/" + "".join(rng.choice(string.ascii_lowercase) for _ in range(8))
        if i % 2:
            url = f"https://{sub}{rng.choice(blocked)}{path}"
            should_drop.add(f"d{i}")
        else:  # look-alikes that share a suffix or a label but are different domains
            host = rng.choice(["not" + rng.choice(blocked), rng.choice(blocked) + ".com", "news.example.org",
                               "adultexample.org", "example.com"])  # fmt: skip
            url = f"http://{sub}{host}{path}"
        docs.append(Document(text="x", id=f"d{i}", metadata={"url": url}))
    step = UrlFilter()
    precision, recall = _precision_recall(_dropped(step, docs), should_drop)
    assert (precision, recall) == (1.0, 1.0)
    assert step.stats["dropped_blocked_domain"].total == len(should_drop)


def test_url_filter_allowlist_wins_and_banned_substrings_drop() -> None:
    step = UrlFilter(
        blocked_domains=["blocked.example"], allowed_domains=["ok.blocked.example"], banned_substrings=["casino"]
    )
    urls = {
        "a": ("https://ok.blocked.example/page", True),
        "b": ("https://deep.ok.blocked.example/page", True),
        "c": ("https://other.blocked.example/page", False),
        "d": ("https://news.example.org/best-casino-2024", False),
        "e": ("news.example.org/plain", True),
        "f": ("HTTPS://BLOCKED.EXAMPLE.:8080/x", False),
        "g": ("http://[::1", True),  # unparseable: passes, the URL is not a listed domain
    }
    docs = [Document(text="x", id=k, metadata={"url": u}) for k, (u, _) in urls.items()]
    docs.append(Document(text="no url", id="h"))
    kept = {d.id for d in step.run(iter(docs))}
    assert kept == {k for k, (_, keep) in urls.items() if keep} | {"h"}
    assert step.stats["no_url"].total == 1 and step.stats["allowed"].total == 2
    assert step.stats["dropped_banned_url_substring"].total == 1


def test_url_host_normalizes_case_port_and_missing_scheme() -> None:
    assert url_host("HTTP://WWW.Example.ORG:8080/a?b") == "www.example.org"
    assert url_host("www.example.org/a") == "www.example.org"
    assert url_host("https://example.org./") == "example.org"
    assert url_host("") is None


def test_default_lists_load_and_stay_small() -> None:
    assert "adult.example" in UrlFilter().blocked
    assert 10 <= len(read_list(LISTS_DIR / "dirty_words.txt")) <= 100
    with pytest.raises(DataError, match=r"missing\.txt"):
        read_list(LISTS_DIR / "missing.txt")


# ---------------------------------------------------------------------------------------------------------------------
# PiiScrubber

_ALNUM = string.ascii_letters + string.digits


def _rand(rng: random.Random, n: int, alphabet: str = _ALNUM) -> str:
    """Random string that contains at least one digit, one upper and one lower case letter when alphabet has them."""
    while True:
        s = "".join(rng.choice(alphabet) for _ in range(n))
        if all(any(c in cls for c in s) for cls in (string.digits, string.ascii_uppercase, string.ascii_lowercase)
               if any(c in cls for c in alphabet)):  # fmt: skip
            return s


def _card_number(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return next(body + d for d in string.digits if luhn_valid(body + d))


def _pii_items(rng: random.Random) -> dict[str, list[str]]:
    """Planted personal data, by the kind the scrubber should report."""
    first, last = rng.choice(["alice", "Bob", "j", "maria", "chen"]), rng.choice(["smith", "o-neil", "Doe", "wei"])
    domain = rng.choice(["example.com", "mail.example.org", "uni-bonn.de", "corp.example.co.uk"])
    area, exch = rng.randint(201, 989), rng.randint(200, 999)
    v4 = ".".join(str(rng.randint(11, 223) if i == 0 else rng.randint(0, 255)) for i in range(4))
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    card = rng.choice([("4", 16), ("51", 16), ("55", 16), ("34", 15), ("37", 15), ("6011", 16), ("4", 13)])
    digits = _card_number(rng, *card)
    if len(digits) == 15:
        shown = rng.choice([digits, f"{digits[:4]} {digits[4:10]} {digits[10:]}"])
    else:
        sep = rng.choice(["", " ", "-"])
        shown = sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))
    pem = "\n".join(base64.b64encode(rng.randbytes(48)).decode() for _ in range(4))
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    payload = base64.urlsafe_b64encode(json.dumps({"sub": rng.randint(1, 10**6)}).encode()).decode().rstrip("=")
    return {
        "email": [f"{first}.{last}{rng.randint(1, 99)}@{domain}", f"{first}+news@{domain}".upper()],
        "phone": [
            f"+1 ({area}) {exch}-{rng.randint(1000, 9999)}",
            f"+44 20 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
            f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
            f"+49-30-{rng.randint(100000, 999999)}",
            f"({area}) {exch}-{rng.randint(1000, 9999)}",
            f"{area}-{exch}-{rng.randint(1000, 9999)}",
            f"{area}.{exch}.{rng.randint(1000, 9999)}",
            f"1-800-{exch}-{rng.randint(1000, 9999)}",
        ],
        "ipv4": [v4],
        "ipv6": [
            ":".join(groups),
            f"2001:db8::{groups[0]}:{groups[1]}",
            f"fe80::{groups[2]}:{rng.randint(1, 0xFFF):x}",
        ],
        "credit_card": [shown],
        "aws_key": ["AKIA" + "".join(rng.choice(string.ascii_uppercase + "234567") for _ in range(16))],
        "github_token": ["ghp_" + _rand(rng, 36)],
        "openai_key": ["sk-" + _rand(rng, 48), "sk-proj-" + _rand(rng, 40) + "_" + _rand(rng, 20)],
        "jwt": [f"{header}.{payload}.{_rand(rng, 43, _ALNUM + '-_')}"],
        "private_key": [f"-----BEGIN RSA PRIVATE KEY-----\n{pem}\n-----END RSA PRIVATE KEY-----"],
    }


# Generic credentials: (the text, the secret value inside it that must go).
def _assigned_secrets(rng: random.Random) -> list[tuple[str, str]]:
    hex40 = "".join(rng.choice("0123456789abcdef") for _ in range(40))
    b64 = base64.b64encode(rng.randbytes(24)).decode()
    tok, pwd, bearer = _rand(rng, 32), _rand(rng, 20), _rand(rng, 40, _ALNUM + "-._")
    return [
        (f'api_key = "{hex40}"', hex40),
        (f"SECRET_KEY='{b64}'", b64),
        (f'{{"auth_token": "{tok}"}}', tok),
        (f"DB_PASSWORD={pwd}", pwd),
        (f"Authorization: Bearer {bearer}", bearer),
    ]


TEMPLATES_PII = ("Contact {} for details.", "The server at {} answered.", "Write to {} or call later.",
                 "Config line: {}", "The value {} was leaked in the log.")  # fmt: skip


def test_pii_every_planted_item_is_replaced_by_its_placeholder() -> None:
    rng = random.Random(1)
    scrubber = PiiScrubber()
    planted = replaced = 0
    for _ in range(40):
        items = _pii_items(rng)
        for kind, values in items.items():
            for value in values:
                text = _prose(rng, 4) + "\n" + rng.choice(TEMPLATES_PII).format(value) + "\n" + _prose(rng, 3)
                out, counts = scrubber.scrub(text)
                planted += 1
                assert value not in out, (kind, value, out)
                assert counts == {kind: 1}, (kind, value, counts)
                assert PII_PLACEHOLDERS[kind] in out
                replaced += 1
        for text, secret in _assigned_secrets(rng):
            out, counts = scrubber.scrub(f"Settings follow.\n{text}\nDone.")
            assert secret not in out and counts == {"secret": 1}, (text, out, counts)
            assert "<SECRET>" in out
            planted += 1
            replaced += 1
    assert replaced / planted == 1.0 and planted > 500


TRICKY_CLEAN = [
    "Released on 2024-03-15 at 12:30:45 UTC, or 15/03/2024 in Europe and 03.15.2024 elsewhere.",
    "Version 1.2.3 fixes a bug; see v2.10.1, v1.2.3.4 and version 10.0.0.1 for details.",
    "Upgrade Python to 3.11.4.1 or later; section 4.2.1.3 describes the protocol.",
    "The price is $1,299.99 or 5.000.000 EUR in total, with a 12.5% discount.",
    "The population grew to 1,234,567,890 people; pi is about 3.14159265358979323846.",
    "Use #ff00aa for the border and #FFF for text in the stylesheet.",
    "commit 3f2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a fixed the crash in the parser.",
    "UUID 550e8400-e29b-41d4-a716-446655440000 identifies the row.",
    "sha256 = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "ISBN 978-0-306-40615-7 is printed on the back cover.",
    "Slice with a[::2], call std::vector<int>::size, and meet at 10:30 or 23:59:59.",
    "The MAC address field reads 00:1a:2b:3c:4d:5e in the example.",
    "Coordinates 48.8584, 2.2945 mark the tower; the ratio is 16:9.",
    "Decorate with @dataclass(frozen=True) and install lodash@4.17.21 with npm.",
    "tokenizer_file = 'tokenizer_v2_final_1024.json' and max_tokens = 4096",
    "password = os.environ['DB_PASSWORD'] and token = get_token_from_environment()",
    "SECRET_KEY = 'your-secret-key-goes-here' is only a placeholder.",
    "The card 4111 1111 1111 1112 fails the checksum; order 1234567890123 shipped.",
    "Timestamps like 1700000000000 and zip code 90210 are ordinary numbers.",
    "The sk-learn-compatible-estimator-interface is documented; ask-me-anything-session-notes too.",
    "Growth was +12.5% in 2023 and x^2+1234567 is a polynomial.",
    "Room 101-202-3030 and the range 1990-2000 are not phone numbers.",
    "Email us at name [at] example [dot] com through the contact form.",
    "The loopback address ::1 and the route fe80:: are short forms.",
]


def test_pii_leaves_tricky_clean_strings_alone() -> None:
    scrubber = PiiScrubber()
    false = {s: scrubber.scrub(s)[0] for s in TRICKY_CLEAN if scrubber.scrub(s)[1]}
    assert not false, false


def test_pii_no_replacements_in_generated_prose() -> None:
    rng = random.Random(2)
    scrubber = PiiScrubber()
    assert sum(sum(scrubber.scrub(_prose(rng))[1].values()) for _ in range(50)) == 0


def test_pii_step_writes_counts_and_never_drops() -> None:
    docs = [
        Document(text="Mail bob.smith@example.com or alice@example.org from 10.20.30.40.", id="a"),
        Document(text="Nothing to see here.", id="b"),
    ]
    step = PiiScrubber()
    out = list(step.run(iter(docs)))
    assert [d.id for d in out] == ["a", "b"]
    assert out[0].text == "Mail <EMAIL> or <EMAIL> from <IP_ADDRESS>."
    assert out[0].metadata["pii_replaced"] == {"email": 2, "ipv4": 1} and "pii_replaced" not in out[1].metadata
    assert step.stats["pii_email"].total == 2
    only_email = PiiScrubber(kinds=["email"], placeholders={"email": "[email]"})
    assert only_email.format("a.b@example.com at 10.20.30.40") == "[email] at 10.20.30.40"
    with pytest.raises(DataError, match="unknown PII kinds"):
        PiiScrubber(kinds=["ssn"])


def test_pii_scrubbing_is_fast_on_adversarial_runs() -> None:
    import time

    text = "a" * 50_000 + " " + "1-" * 20_000 + " " + "key=" + "ab" * 20_000 + " " + ":" * 10_000
    start = time.perf_counter()
    PiiScrubber().scrub(text)
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------------------------------------------------------------
# DirtyWordFilter


def test_dirty_word_filter_precision_recall() -> None:
    rng = random.Random(3)
    words = read_list(LISTS_DIR / "dirty_words.txt")
    filler = ("the", "and", "you", "we", "hot", "new", "video", "free", "click", "now", "watch", "best", "live")
    docs, should_drop = [], set()
    for i in range(60):  # adult spam at 5-40% listed words
        density = rng.choice([0.05, 0.1, 0.2, 0.4])
        text = " ".join(rng.choice(words) if rng.random() < density else rng.choice(filler) for _ in range(250))
        docs.append(Document(text=text, id=f"adult{i}"))
        should_drop.add(f"adult{i}")
    mentions = ["The survey recorded the age and sex of every participant.",
                "The court ruled on a case about online porn and the duties of hosting companies.",
                "Artists have painted the nude figure since antiquity."]  # fmt: skip
    for i in range(120):  # clean prose, some with one or two clinical/news mentions
        text = _prose(rng, 20)
        if i % 3 == 0:
            text += "\n\n" + " ".join(rng.sample(mentions, rng.randint(1, 2)))
        docs.append(Document(text=text, id=f"clean{i}"))
    step = DirtyWordFilter()
    precision, recall = _precision_recall(_dropped(step, docs), should_drop)
    assert precision == 1.0 and recall >= 0.95, (precision, recall)
    assert 0 < docs[0].metadata["dirty_word_fraction"] <= 1


# ---------------------------------------------------------------------------------------------------------------------
# TokenDistributionFilter


def _rand_word(rng: random.Random, n: int, letters: str = string.ascii_lowercase) -> str:
    return "".join(rng.choice(letters) for _ in range(n))


def _outliers(rng: random.Random) -> dict[str, list[str]]:
    consonants = "qwrtzpsdfghjklxcvbnm"
    soup = [" ".join(_rand_word(rng, rng.randint(3, 10), consonants) for _ in range(300)) for _ in range(10)]
    return {
        "char_soup": soup,
        "repeated_tokens": [" ".join(rng.choice(["buy", "now", "cheap"]) for _ in range(300)) for _ in range(10)],
        "base64": [base64.b64encode(rng.randbytes(1500)).decode() for _ in range(10)],
        "numbers": [
            "\n".join(", ".join(str(rng.randint(0, 10**6)) for _ in range(12)) for _ in range(40)) for _ in range(10)
        ],
        "prose_plus_blob": [_prose(rng, 10) + "\n" + base64.b64encode(rng.randbytes(3000)).decode() for _ in range(10)],
    }


# Real English for the reference sample and held-out checks: docstrings of standard-library modules (read with ast,
# not imported), grouped into documents of ~300 words.
FIT_MODULES = ("argparse", "subprocess", "threading", "pathlib", "functools", "inspect", "tarfile", "shutil",
               "random", "textwrap", "dataclasses", "enum", "fractions", "configparser", "difflib", "ftplib",
               "mailbox", "optparse", "pickle", "smtplib", "tempfile", "warnings", "zipfile", "calendar")  # fmt: skip
HELD_OUT_MODULES = ("imaplib", "socket", "statistics", "heapq", "gettext", "uuid", "string", "weakref", "bisect",
                    "csv", "pdb", "tokenize")  # fmt: skip


def _docstring_documents(modules: tuple[str, ...], words: int = 300) -> list[str]:
    docs = []
    for name in modules:
        tree = ast.parse(Path(importlib.util.find_spec(name).origin).read_text(encoding="utf-8"))
        strings = [ast.get_docstring(n) or "" for n in ast.walk(tree)
                   if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)]  # fmt: skip
        current: list[str] = []
        for s in strings:
            if len(s) > 80:
                current.append(s)
            if sum(len(c.split()) for c in current) >= words:
                docs.append("\n\n".join(current))
                current = []
    return docs


@pytest.fixture(scope="module")
def kl_filter() -> TokenDistributionFilter:
    rng = random.Random(4)
    sample = [_prose(rng, rng.randint(15, 60)) for _ in range(100)] + _docstring_documents(FIT_MODULES)
    return TokenDistributionFilter().fit(sample, quantile=0.99)


def test_token_kl_separates_outliers_from_prose(kl_filter: TokenDistributionFilter) -> None:
    rng = random.Random(5)
    docs = [Document(text=_prose(rng, rng.randint(15, 60)), id=f"gen{i}") for i in range(100)]
    docs += [Document(text=t, id=f"doc{i}") for i, t in enumerate(_docstring_documents(HELD_OUT_MODULES))]
    should_drop = set()
    for kind, texts in _outliers(rng).items():
        for i, text in enumerate(texts):
            docs.append(Document(text=text, id=f"{kind}{i}"))
            should_drop.add(f"{kind}{i}")
    dropped = _dropped(kl_filter, docs)
    precision, recall = _precision_recall(dropped, should_drop)
    # Measured on Python 3.11's stdlib: recall 1.0, precision 0.94: 3 false drops of 24 held-out docstring
    # documents, the number-heavy ones of uuid and statistics (modules the sample never saw); no generated prose.
    assert recall == 1.0 and precision >= 0.85, (precision, recall)
    assert not {d for d in dropped if d.startswith("gen")}
    held_out = sum(d.id.startswith("doc") for d in docs)
    assert len({d for d in dropped if d.startswith("doc")}) <= 0.2 * held_out
    scores = {d.id: d.metadata["token_kl"] for d in docs if "token_kl" in d.metadata}
    assert min(scores[k] for k in should_drop) > 2 * max(v for k, v in scores.items() if k.startswith("gen"))


def test_token_kl_real_prose_on_unseen_topics_scores_below_outliers(kl_filter: TokenDistributionFilter) -> None:
    # Prose on topics the sample never covered sits above the fitted threshold (see the class docstring) but still
    # clearly below every outlier.
    real = [kl_filter.divergence(a + "\n\n" + b) for a in REAL_PROSE for b in REAL_PROSE if a != b]
    outliers = [kl_filter.divergence(t) for texts in _outliers(random.Random(6)).values() for t in texts]
    assert max(real) < min(outliers)


def test_token_kl_reference_round_trips_through_json(kl_filter: TokenDistributionFilter, tmp_path) -> None:
    path = tmp_path / "ref.json"
    kl_filter.save(path)
    loaded = TokenDistributionFilter.load(path)
    assert loaded.threshold == kl_filter.threshold
    text = _prose(random.Random(7), 30)
    assert loaded.divergence(text) == kl_filter.divergence(text)
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="version 99"):
        TokenDistributionFilter(path)


def test_token_kl_short_docs_pass_and_errors_are_clear(kl_filter: TokenDistributionFilter) -> None:
    assert kl_filter.filter(Document(text="Too short to judge.", id="s")) is True
    assert kl_filter.stats["too_short_to_score"].total == 1
    assert TokenDistributionFilter(kl_filter.reference, max_divergence=0.0).filter(
        Document(text=_prose(random.Random(8)), id="p")
    ) == (False, "token_kl_outlier")
    with pytest.raises(DataError, match="fit"):
        TokenDistributionFilter().divergence("anything")
    with pytest.raises(DataError, match="at least 2"):
        TokenDistributionFilter().fit(["only one"])


def test_token_pieces_split_numbers_punctuation_and_cjk() -> None:
    assert token_pieces("Price: 1234567 USD!") == ["price", ":", "123", "456", "7", "usd", "!"]
    assert token_pieces("東京abc") == ["東", "京", "abc"]


def test_token_reference_fit_is_deterministic() -> None:
    texts = [_prose(random.Random(i), 20) for i in range(20)]
    a = TokenDistributionFilter().fit(texts).reference
    b = TokenDistributionFilter().fit(texts).reference
    assert isinstance(a, TokenReference) and a.to_json() == b.to_json()


# ---------------------------------------------------------------------------------------------------------------------
# RepetitionFilter


def _repetitive(rng: random.Random) -> dict[str, list[str]]:
    log = lambda: "\n".join(f"ERROR connection to {rng.choice(NOUNS[:3])} refused, retrying" for _ in range(30))  # noqa: E731
    return {
        "dup_line": [_prose(rng, 10) + "\n" + log() for _ in range(10)],
        "dup_para": [(lambda p: "\n\n".join([p, _prose(rng, 5), p, p]))(_prose(rng, 5)) for _ in range(10)],
        "top_ngram": [" ".join(_sentence(rng) + " Subscribe immediately!" for _ in range(30)) for _ in range(10)],
        "copied_half": [(lambda p: p + " " + p.replace("\n\n", " "))(_prose(rng, 20)) for _ in range(10)],
    }


def test_repetition_filter_precision_recall_and_reasons() -> None:
    rng = random.Random(9)
    docs = [Document(text=_prose(rng, rng.randint(10, 60)), id=f"prose{i}") for i in range(100)]
    docs += [Document(text=t, id=f"real{i}") for i, t in enumerate(REAL_PROSE)]
    should_drop = set()
    for kind, texts in _repetitive(rng).items():
        for i, text in enumerate(texts):
            docs.append(Document(text=text, id=f"{kind}{i}"))
            should_drop.add(f"{kind}{i}")
    step = RepetitionFilter()
    precision, recall = _precision_recall(_dropped(step, docs), should_drop)
    assert (precision, recall) == (1.0, 1.0)
    reasons = {k.removeprefix("dropped_") for k in step.stats.stats if k.startswith("dropped_")}
    assert {"dup_line_frac", "dup_para_frac"} <= reasons and any(r.startswith("top_") for r in reasons)


def test_repetition_filter_rules_one_by_one() -> None:
    step = RepetitionFilter()
    assert step.filter(Document(text="  \n ", id="e")) == (False, "empty")
    lines = "\n".join(["same line here"] * 5 + ["other line"] * 2 + [f"unique line {i}" for i in range(5)])
    assert step.filter(Document(text=lines, id="l")) == (False, "dup_line_frac")
    words = " ".join(["alpha beta"] * 10 + [f"w{i}x" for i in range(60)])
    assert step.filter(Document(text=words, id="t")) == (False, "top_2_gram")
    code = "\n".join(["    }"] * 20 + ["x = 1"])
    assert RepetitionFilter(skip_domains=["code"]).filter(Document(text=code, id="c", metadata={"domain": "code"}))


# ---------------------------------------------------------------------------------------------------------------------
# QualityHeuristicsFilter


def _low_quality(rng: random.Random) -> dict[str, list[str]]:
    return {
        "too_short": ["Buy now. Great deals on everything."],
        "hashes": [" ".join(f"#{rng.choice(NOUNS)} #{rng.choice(ADJS)}" for _ in range(40)) + " the and to"],
        "ellipsis_lines": ["\n".join(_sentence(rng)[:-1] + "..." for _ in range(30))],
        "bullets": ["\n".join(f"- {rng.choice(ADJS)} {rng.choice(NOUNS)} of {rng.choice(NOUNS)}" for _ in range(60))],
        "no_stop_words": [" ".join(rng.choice(NOUNS + ADJS) for _ in range(200))],
        "numbers": [" ".join(str(rng.randint(0, 10**5)) for _ in range(200)) + " the and of the to be with"],
        "long_words": [" ".join(_rand_word(rng, 14) for _ in range(100)) + " the and of"],
        "lorem": ["Lorem ipsum dolor sit amet. " + _prose(rng, 10)],
    }


def test_quality_heuristics_precision_recall() -> None:
    rng = random.Random(10)
    docs = [Document(text=_prose(rng, rng.randint(8, 60)), id=f"prose{i}") for i in range(100)]
    docs += [Document(text=t, id=f"real{i}") for i, t in enumerate(REAL_PROSE)]
    should_drop = set()
    for kind, texts in _low_quality(rng).items():
        for i, text in enumerate(texts * 3):
            docs.append(Document(text=text, id=f"{kind}{i}"))
            should_drop.add(f"{kind}{i}")
    step = QualityHeuristicsFilter()
    precision, recall = _precision_recall(_dropped(step, docs), should_drop)
    assert (precision, recall) == (1.0, 1.0)
    reasons = {k.removeprefix("dropped_") for k in step.stats.stats if k.startswith("dropped_")}
    assert reasons == {"gopher_short_doc", "gopher_hash_ratio", "gopher_ellipsis_lines", "gopher_bullet_lines",
                       "gopher_stop_words", "gopher_alpha_words", "gopher_long_words", "c4_lorem_ipsum"}  # fmt: skip


CODE_DOC = "\n".join(
    ["import os", "", "def walk(root):", "    for d, _, fs in os.walk(root):", "        for f in fs:",
     "            yield os.path.join(d, f)", "", "# main", "if __name__ == '__main__':",
     "    print(list(walk('.')))"] * 8
)  # fmt: skip


def test_quality_heuristics_exempts_code_and_other_languages() -> None:
    step = QualityHeuristicsFilter()
    assert step.filter(Document(text=CODE_DOC, id="c")) != True  # noqa: E712  (prose rules would drop it)
    assert step.filter(Document(text=CODE_DOC, id="c", metadata={"domain": "code"})) is True
    french = "Le chat dort sur le canapé pendant que la pluie tombe. " * 10
    assert step.filter(Document(text=french, id="f")) == (False, "gopher_stop_words")
    assert step.filter(Document(text=french, id="f", metadata={"language": "fr"})) is True
    assert step.stats["skipped_domain"].total == 1 and step.stats["skipped_language_rules"].total == 1
    numbers = " ".join(str(i * 7919 % 100003) for i in range(200))
    assert step.filter(Document(text=numbers, id="n", metadata={"language": "und"})) == (False, "gopher_alpha_words")


def test_quality_heuristics_c4_options() -> None:
    text = _prose(random.Random(11), 10) + "\nPlease enable JavaScript to view the comments.\nconfig = {a: 1}"
    assert QualityHeuristicsFilter().filter(Document(text=text, id="a")) is True
    curly = QualityHeuristicsFilter(c4_curly_bracket=True)
    assert curly.filter(Document(text=text, id="a")) == (False, "c4_curly_bracket")
    doc = Document(text=text, id="a")
    js = QualityHeuristicsFilter(c4_javascript=True)
    assert js.filter(doc) is True and "JavaScript" not in doc.text and "config" in doc.text
    assert js.stats["c4_javascript_lines"].total == 1


# ---------------------------------------------------------------------------------------------------------------------
# LanguageId

LANGUAGE_SAMPLES = {
    "en": ["The weather was cold this morning, so we stayed inside and read our books by the fire.",
           "Please send the report to the whole team before the meeting on Thursday afternoon."],
    "fr": ["Le train de Paris est arrivé en retard à cause de la neige tombée pendant la nuit.",
           "Nous avons visité le marché du village et acheté du fromage et des légumes frais."],
    "de": ["Der Zug nach Berlin hatte wegen des Schnees eine Stunde Verspätung.",
           "Wir haben am Wochenende einen langen Spaziergang durch den Wald gemacht."],
    "es": ["El tren a Madrid llegó tarde por culpa de la nieve que cayó durante la noche.",
           "Mañana vamos a visitar a mis abuelos que viven en un pueblo cerca del mar."],
    "pt": ["O comboio para Lisboa chegou atrasado por causa da chuva forte desta manhã.",
           "Ontem fomos ao mercado comprar frutas, legumes e pão fresco para o jantar."],
    "it": ["Il treno per Roma è arrivato in ritardo a causa della neve caduta durante la notte.",
           "Domani andiamo al mare con i nostri amici e pranziamo in una piccola trattoria."],
    "ru": ["Поезд в Москву опоздал на час из-за сильного снегопада этой ночью.",
           "Вчера мы гуляли в парке и долго разговаривали о новых книгах."],
    "zh": ["今天早上天气很冷，所以我们待在家里看书。", "请在星期四下午开会之前把报告发给整个团队。"],
    "ja": ["今朝はとても寒かったので、私たちは家で本を読みました。",
           "木曜日の会議の前に報告書をチーム全員に送ってください。"],
    "ar": ["وصل القطار إلى القاهرة متأخرا بسبب العاصفة الرملية هذا الصباح.",
           "ذهبنا أمس إلى السوق واشترينا الخضروات والفواكه الطازجة."],
    "hi": ["आज सुबह बहुत ठंड थी, इसलिए हम घर पर रहे और किताबें पढ़ीं।",
           "कृपया गुरुवार की बैठक से पहले पूरी टीम को रिपोर्ट भेज दें।"],
    "ko": ["오늘 아침은 너무 추워서 우리는 집에서 책을 읽었습니다.",
           "목요일 회의 전에 보고서를 팀 전체에 보내 주세요."],
    "tr": ["Bu sabah hava çok soğuktu, bu yüzden evde kalıp kitap okuduk.",
           "Lütfen raporu perşembe günkü toplantıdan önce tüm ekibe gönderin."],
}  # fmt: skip


@pytest.fixture(scope="module")
def lid() -> LanguageId:
    return LanguageId()


def test_language_id_accuracy_on_written_sentences(lid: LanguageId) -> None:
    docs = [Document(text=s, id=f"{lang}{i}") for lang, ss in LANGUAGE_SAMPLES.items() for i, s in enumerate(ss)]
    out = list(lid.run(iter(docs)))
    assert len(out) == len(docs)  # tagging only: nothing dropped
    correct = sum(d.metadata["language"] == d.id[:2] for d in out)
    assert correct / len(docs) == 1.0, [
        (d.id, d.metadata["language"]) for d in out if d.metadata["language"] != d.id[:2]
    ]
    assert all(0 < d.metadata["language_score"] <= 1 for d in out)


def test_language_id_drops_by_allowed_set_and_thresholds(lid: LanguageId) -> None:
    docs = [Document(text=s, id=f"{lang}{i}") for lang, ss in LANGUAGE_SAMPLES.items() for i, s in enumerate(ss)]
    docs.append(Document(text="12345 67890 ++ --", id="xx"))
    step = LanguageId(languages=["en", "fr", "de"])
    kept = {d.id for d in step.run(iter([Document(text=d.text, id=d.id) for d in docs]))}
    assert kept == {"en0", "en1", "fr0", "fr1", "de0", "de1"}
    assert step.stats["dropped_language_not_allowed"].total == len(docs) - 6
    strict = LanguageId(thresholds={"en": 1.01}, min_score=0.0)
    kept = {d.id for d in strict.run(iter([Document(text=d.text, id=d.id) for d in docs]))}
    assert not kept & {"en0", "en1"} and {"fr0", "de0"} <= kept
    assert lid.predict("12345 67890") == ("und", 0.0)


def test_language_id_pickles_without_its_model(lid: LanguageId) -> None:
    lid.predict("hello world, this loads the model")
    clone = pickle.loads(pickle.dumps(lid))
    assert clone._model is None and clone.predict("Bonjour à tous, comment allez-vous ?")[0] == "fr"
    with pytest.raises(DataError, match="not found"):
        LanguageId(model_path="/nonexistent/lid.176.ftz")


# ---------------------------------------------------------------------------------------------------------------------
# All steps together


def test_steps_chain_as_one_pipeline(kl_filter: TokenDistributionFilter) -> None:
    rng = random.Random(12)
    docs = [Document(text=_prose(rng, 30), id=f"p{i}", metadata={"url": f"https://news.example.org/{i}"})
            for i in range(20)]  # fmt: skip
    docs[0].metadata["url"] = "https://www.adult.example/x"
    docs[1].text += "\nWrite to jane.doe@example.com today."
    docs[2].text = base64.b64encode(rng.randbytes(2000)).decode()
    docs[3].text = "Le train de Paris est arrivé en retard à cause de la neige tombée pendant la nuit. " * 10
    pipeline = [UrlFilter(), LanguageId(languages=["en"], min_score=0.5), PiiScrubber(), RepetitionFilter(),
                QualityHeuristicsFilter(), DirtyWordFilter(), kl_filter]  # fmt: skip
    stream = iter(docs)
    for step in pipeline:
        stream = step.run(stream)
    out = {d.id: d for d in stream}
    assert set(out) == {f"p{i}" for i in range(4, 20)} | {"p1"}
    assert "<EMAIL>" in out["p1"].text and out["p1"].metadata["language"] == "en"
    assert re.fullmatch(r"[a-z ]+", " ".join(s.name for s in pipeline))


def test_steps_run_under_datatrove_local_executor(kl_filter: TokenDistributionFilter, tmp_path: Path) -> None:
    # Two worker processes: every step (and the fastText model) must survive pickling to a worker.
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from herd.data.extract import HtmlExtractor

    rng = random.Random(13)
    (tmp_path / "in").mkdir()
    rows = []
    for i in range(12):
        text = _prose(rng, 30) + ("\nMail jane.doe@example.com." if i == 1 else "")
        if i == 2:
            text = f"<!DOCTYPE html><html><body><nav><a href='/'>Home</a></nav><main><p>{text}</p></main></body></html>"
        url = "https://www.adult.example/x" if i == 0 else f"https://news.example.org/{i}"
        rows.append(json.dumps({"text": text, "id": f"p{i}", "metadata": {"url": url}}))
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(rows) + "\n")
    kl_filter.save(tmp_path / "ref.json")
    steps = [HtmlExtractor(), UrlFilter(), LanguageId(languages=["en"]), PiiScrubber(), RepetitionFilter(),
             QualityHeuristicsFilter(), DirtyWordFilter(), TokenDistributionFilter(tmp_path / "ref.json")]  # fmt: skip
    writer = JsonlWriter(str(tmp_path / "out"), compression=None)
    pipeline = [JsonlReader(str(tmp_path / "in")), *steps, writer]
    LocalPipelineExecutor(pipeline=pipeline, tasks=2, workers=2, logging_dir=str(tmp_path / "logs")).run()
    out = [json.loads(line) for f in sorted((tmp_path / "out").glob("*.jsonl")) for line in f.read_text().splitlines()]
    by_id = {d["id"]: d for d in out}
    assert set(by_id) == {f"p{i}" for i in range(1, 12)}
    assert "<EMAIL>" in by_id["p1"]["text"] and "Home" not in by_id["p2"]["text"]
    assert all(d["metadata"]["language"] == "en" and "token_kl" in d["metadata"] for d in out)
