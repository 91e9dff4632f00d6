"""The embedded raw corpus: real text from installed packages plus planted defects with known ground truth.

Nothing is downloaded or copied into the repository; the corpus is assembled at run time from:
- Python standard library docstrings (English technical prose, domain "general") and source code ("code"),
- sympy docstrings (mathematics with formulas and doctests, "math"),
- spaCy's example sentences for ~60 languages ("multilingual"),
- licence texts that installed packages ship ("general").
The base documents are made mutually distinct (no pair shares more than a few percent of word 5-grams), so that
every duplicate in the corpus is one this module planted. Then it plants, in known places: exact and near
duplicates, HTML pages with boilerplate, personal data, lines repeated across many documents, low-quality text
(gibberish, keyword spam, symbol soup, lorem ipsum, number dumps, base64 blobs), adult-vocabulary spam and
blocked URLs. Every document carries `truth` (schema below); steps never read it, evaluation does.

truth = {
  "kind": "clean" | "exact_duplicate" | "near_duplicate" | "low_quality" | "adult" | "blocked_url",
  "dup_of": id of the original (duplicates),     "lang": ISO 639-1 code,
  "domain": "general" | "code" | "math" | "multilingual",
  "html": true when the text is an HTML page,    "main_text": the page's main text (HTML pages),
  "pii": [planted personal-data strings],        "boilerplate_lines": [planted repeated lines],
}
Evaluation sets (HumanEval and the like) are never read.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import html
import importlib.util
import itertools
import json
import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.fileio import atomic_file

CORPUS_VERSION = 1
# spaCy folder names that are not the ISO 639-1 code fastText's lid.176 uses.
_SPACY_TO_ISO = {"nb": "no", "xx": "", "grc": "", "hsb": "", "dsb": "", "lij": "", "kmr": "ku", "tn": "", "lg": ""}


@dataclass(frozen=True)
class CorpusStats:
    path: Path
    documents: int
    bytes: int
    kinds: dict[str, int]


# ---------------------------------------------------------------------------------------------
# Real text from installed packages


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def _docstrings(path: Path) -> tuple[str, str]:
    """(joined docstrings, source) of a Python file, parsed without importing it."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return "", ""
    docs = [ast.get_docstring(tree) or ""]
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 80:
                docs.append(doc)
    return "\n\n".join(d for d in docs if d), source


def _python_files(root: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if any(part in exclude or (part.startswith(("test", "_")) and part != "__init__.py") for part in rel):
            continue
        files.append(p)
    return files


def stdlib_documents() -> Iterator[dict[str, Any]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "idlelib", "lib2to3", "test", "tests", "turtledemo", "ensurepip", "pydoc_data")
    for path in _python_files(root, skip):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        docs, source = _docstrings(path)
        if len(docs) > 400:
            yield {"text": docs[:12000], "source": "stdlib-docs", "domain": "general", "name": name}
        if 1500 < len(source):
            yield {"text": source[:8000], "source": "stdlib-code", "domain": "code", "name": name}


def sympy_documents() -> Iterator[dict[str, Any]]:
    root = _package_dir("sympy")
    if root is None:
        return
    for path in _python_files(root, ("testing", "benchmarks", "tests", "sandbox", "external", "utilities")):
        docs, _ = _docstrings(path)
        # Keep docstrings that are mostly mathematics: doctests and formulas.
        if len(docs) > 1500 and docs.count(">>>") >= 5:
            name = "sympy." + ".".join(path.relative_to(root).with_suffix("").parts)
            yield {"text": docs[:10000], "source": "sympy-docs", "domain": "math", "name": name}


def spacy_documents() -> Iterator[dict[str, Any]]:
    root = _package_dir("spacy")
    if root is None:
        return
    for path in sorted((root / "lang").glob("*/examples.py")):
        code = path.parent.name
        lang = _SPACY_TO_ISO.get(code, code)
        if not lang or lang == "en":
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "sentences":
                try:
                    sentences = [s for s in ast.literal_eval(node.value) if isinstance(s, str)]
                except ValueError:
                    continue
                if len(" ".join(sentences)) > 200:
                    yield {"text": "\n".join(sentences), "source": "spacy-examples", "domain": "multilingual",
                           "name": code, "lang": lang}  # fmt: skip


def license_documents() -> Iterator[dict[str, Any]]:
    site = Path(sysconfig.get_paths()["purelib"])
    for path in sorted(site.glob("*.dist-info/**/LICEN[CS]E*")):
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) > 600:
            # One page per licence file: a package may ship several (torch ships a dozen).
            name = "/".join(path.relative_to(site).parts).replace(".dist-info", "")
            yield {"text": text[:12000], "source": "licenses", "domain": "general", "name": name}


# ---------------------------------------------------------------------------------------------
# Keeping the base set distinct


def _shingles(text: str, n: int = 5) -> set[int]:
    # str hashes vary between processes, but only a 64-bit collision could change which documents stay.
    words = text.lower().split()
    return {hash(" ".join(words[i : i + n])) for i in range(max(1, len(words) - n + 1))}


def distinct(docs: list[dict[str, Any]], max_overlap: float = 0.05) -> list[dict[str, Any]]:
    """Drop any document sharing more than `max_overlap` of its word 5-grams with an earlier one."""
    seen: dict[int, int] = {}
    kept: list[dict[str, Any]] = []
    for doc in docs:
        sh = _shingles(doc["text"])
        if sum(1 for s in sh if s in seen) > max_overlap * len(sh):
            continue
        for s in sh:
            seen.setdefault(s, len(kept))
        kept.append(doc)
    return kept


# ---------------------------------------------------------------------------------------------
# Planted defects

BOILERPLATE_LINES = [
    "Subscribe to our newsletter for weekly updates!",
    "This site uses cookies. By continuing to browse you agree to our use of cookies.",
    "Share this page: Twitter | Facebook | LinkedIn | Email",
    "All rights reserved. Unauthorized reproduction is prohibited.",
    "Click here to download the PDF version of this page.",
]
LOREM = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
]
SPAM_WORDS = [
    "cheap",
    "best",
    "buy",
    "discount",
    "free",
    "offer",
    "deal",
    "sale",
    "price",
    "online",
    "shop",
    "now",
    "click",
    "win",
]
# Adult-vocabulary spam is written with the dirty-word list the filters use, when present.
_FALLBACK_ADULT = ["xxx", "porn", "nude", "sex", "explicit", "camgirl", "hardcore", "escort"]


def _edit(text: str, rng: random.Random, rate: float) -> str:
    """A near duplicate: a few percent of words substituted, deleted or inserted, whitespace re-wrapped."""
    words = text.split()
    out = []
    for w in words:
        r = rng.random()
        if r < rate / 3:
            continue
        if r < 2 * rate / 3:
            out.append(rng.choice(words))
        else:
            out.append(w)
        if rng.random() < rate / 3:
            out.append(rng.choice(words))
    lines, line = [], []
    for w in out:
        line.append(w)
        if rng.random() < 0.08:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines)


def _pii(rng: random.Random) -> list[str]:
    user = rng.choice(["alice", "bob.smith", "j.doe", "maria_g", "chen.wei"])
    items = [
        f"{user}{rng.randint(1, 99)}@{rng.choice(['example.com', 'mail.example.org', 'corp.example.net'])}",
        f"+1 ({rng.randint(200, 989)}) {rng.randint(200, 989)}-{rng.randint(1000, 9999)}",
        f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
        "ghp_"
        + "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(36)),
    ]
    return rng.sample(items, rng.randint(1, 3))


def _plant_pii(text: str, items: list[str], rng: random.Random) -> str:
    templates = ["Contact: {}.", "Reach the maintainer at {} for details.", "Server address {} was used.",
                 "key = {}", "Call {} during office hours."]  # fmt: skip
    paragraphs = text.split("\n\n")
    for item in items:
        i = rng.randrange(len(paragraphs))
        paragraphs[i] = paragraphs[i] + "\n" + rng.choice(templates).format(item)
    return "\n\n".join(paragraphs)


def _html_page(title: str, text: str, rng: random.Random) -> str:
    paragraphs = "\n".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n") if p.strip())
    nav = " | ".join(f'<a href="/{w.lower()}">{w}</a>' for w in ["Home", "Docs", "Blog", "About", "Contact"])
    return (
        f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title></head><body>\n"
        f"<header><nav>{nav}</nav></header>\n"
        f'<div class="cookie-banner">We use cookies to improve your experience. <button>Accept</button></div>\n'
        f"<main><article><h1>{html.escape(title)}</h1>\n{paragraphs}\n</article></main>\n"
        f'<aside class="sidebar"><h3>Related posts</h3><ul><li><a href="/a">Ten tips</a></li>'
        f'<li><a href="/b">Weekly roundup #{rng.randint(1, 99)}</a></li></ul></aside>\n'
        f"<footer>Copyright {rng.randint(2001, 2024)} Example Media. Privacy policy | Terms of use</footer>\n"
        f"</body></html>"
    )


def _low_quality(rng: random.Random, kind: str) -> str:
    if kind == "gibberish":
        return " ".join(
            "".join(rng.choice("qwrtzpsdfghjklxcvbnm") for _ in range(rng.randint(3, 12))) for _ in range(300)
        )
    if kind == "keyword_spam":
        return "\n".join(" ".join(rng.choice(SPAM_WORDS) for _ in range(8)) + "!!!" for _ in range(60))
    if kind == "symbols":
        return "\n".join("".join(rng.choice("#$%&*@^~|<>{}[]=+") for _ in range(60)) for _ in range(40))
    if kind == "lorem":
        return " ".join(rng.choice(LOREM) for _ in range(400))
    if kind == "numbers":
        return "\n".join(", ".join(str(rng.randint(0, 10**6)) for _ in range(12)) for _ in range(50))
    return base64.b64encode(rng.randbytes(3000)).decode()  # "base64"


def _list_file(name: str, fallback: list[str]) -> list[str]:
    """Entries of one of the filters' list files (one per line, # comments), or `fallback` if it is absent."""
    path = Path(__file__).parent / "lists" / name
    if path.is_file():
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        if entries := [line for line in lines if line and not line.startswith("#")]:
            return entries
    return fallback


# ---------------------------------------------------------------------------------------------
# Assembly


def build_corpus(out_dir: str | Path, *, seed: int = 0, max_base: int | None = 600, num_files: int = 8) -> CorpusStats:
    """Write the corpus as `num_files` jsonl files under `out_dir` (one document per line, with `truth`)."""
    rng = random.Random(seed)
    stdlib = list(stdlib_documents())
    pools = [
        [d for d in stdlib if d["domain"] == "general"] + list(license_documents()),
        [d for d in stdlib if d["domain"] == "code"],
        list(sympy_documents()),
    ]
    for pool in pools:
        rng.shuffle(pool)
    # Prose is the scarcest source here; no domain gets more documents than it.
    pools = [pool[: len(pools[0])] for pool in pools]
    # Multilingual documents first (they are few), then the domains round-robin, so a cap keeps them balanced.
    mixed = [d for group in itertools.zip_longest(*pools) for d in group if d is not None]
    base = distinct(list(spacy_documents()) + mixed)
    if max_base is not None:
        base = base[:max_base]

    docs: list[dict[str, Any]] = []

    def add(text: str, kind: str, src: dict[str, Any], **truth: Any) -> dict[str, Any]:
        doc_id = f"doc-{len(docs):05d}"
        lang = src.get("lang", "en")
        domain = src.get("domain", "general")
        url = (
            truth.pop("url", None) or f"https://{src.get('source', 'generated')}.example.org/{src.get('name', doc_id)}"
        )
        doc = {"id": doc_id, "text": text, "url": url, "source": src.get("source", "generated"),
               "truth": {"kind": kind, "lang": lang, "domain": domain, **truth}}  # fmt: skip
        docs.append(doc)
        return doc

    n = len(base)
    order = list(range(n))
    rng.shuffle(order)
    html_ids = set(order[: n // 10])
    pii_ids = set(order[n // 10 : n // 10 + n // 20])
    blocked_ids = set(order[n // 10 + n // 20 : n // 10 + n // 20 + 20])
    # Each boilerplate line goes into 16 English documents (line dedup removes lines seen in more than 6).
    english = [i for i in order if base[i].get("lang", "en") == "en" and base[i]["domain"] != "code"]
    # Plain-text hosts only: HTML extraction already strips such lines from pages, which would leave too few copies.
    boiler_hosts = [i for i in english if i not in blocked_ids | html_ids][: 16 * len(BOILERPLATE_LINES)]
    originals: list[dict[str, Any]] = []
    blocked = _list_file("url_blocklist.txt", ["adult.example", "spam.example"])
    for i, src in enumerate(base):
        text = src["text"]
        truth: dict[str, Any] = {}
        if i in boiler_hosts:
            line = BOILERPLATE_LINES[boiler_hosts.index(i) % len(BOILERPLATE_LINES)]
            text = f"{text}\n\n{line}"  # its own paragraph, so an HTML page keeps it as its own line
            truth["boilerplate_lines"] = [line]
        if i in pii_ids:
            items = _pii(rng)
            text = _plant_pii(text, items, rng)
            truth["pii"] = items
        if i in blocked_ids:
            add(text, "blocked_url", src, url=f"https://www.{rng.choice(blocked)}/{src.get('name', i)}", **truth)
            continue
        if i in html_ids and src["domain"] != "code":
            truth |= {"html": True, "main_text": text}
            text = _html_page(src.get("name", "Page"), text, rng)
        originals.append(add(text, "clean", src, **truth))

    clean_plain = [d for d in originals if not d["truth"].get("html")]
    for d in rng.sample(clean_plain, max(1, len(clean_plain) // 20)):
        src = {"source": d["source"], "domain": d["truth"]["domain"], "lang": d["truth"]["lang"]}
        add(d["text"], "exact_duplicate", src, dup_of=d["id"], **_inherit(d))
    for d in rng.sample(clean_plain, max(1, len(clean_plain) // 12)):
        src = {"source": d["source"], "domain": d["truth"]["domain"], "lang": d["truth"]["lang"]}
        add(_edit(d["text"], rng, rate=rng.uniform(0.01, 0.05)), "near_duplicate", src, dup_of=d["id"])
    for k in range(60):
        kind = ["gibberish", "keyword_spam", "symbols", "lorem", "numbers", "base64"][k % 6]
        add(_low_quality(rng, kind), "low_quality", {"source": "generated", "name": f"{kind}-{k}"}, quality=kind)
    adult, filler = (
        _list_file("dirty_words.txt", _FALLBACK_ADULT),
        LOREM + SPAM_WORDS + ["the", "and", "you", "we", "hot", "new", "video"],
    )
    for k in range(20):
        text = " ".join(rng.choice(adult) if rng.random() < 0.3 else rng.choice(filler) for _ in range(250))
        add(text, "adult", {"source": "generated", "name": f"adult-{k}"})

    rng.shuffle(docs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for f in range(num_files):
        with atomic_file(out / f"part-{f:03d}.jsonl", "w") as fh:
            for doc in docs[f::num_files]:
                line = json.dumps(doc, ensure_ascii=False)
                total += len(line.encode())
                fh.write(line + "\n")
    kinds: dict[str, int] = {}
    for d in docs:
        kinds[d["truth"]["kind"]] = kinds.get(d["truth"]["kind"], 0) + 1
    manifest = {"version": CORPUS_VERSION, "seed": seed, "documents": len(docs), "bytes": total, "kinds": kinds,
                "digest": hashlib.sha256("".join(d["id"] + d["text"] for d in docs).encode()).hexdigest()}  # fmt: skip
    with atomic_file(out / "corpus.json", "w") as fh:
        json.dump(manifest, fh, indent=2)
    return CorpusStats(path=out, documents=len(docs), bytes=total, kinds=kinds)


def format_corpus(stats: CorpusStats, seconds: float) -> str:
    """What `herd data corpus` prints: documents, size, where, and the count of each kind."""
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.kinds.items()))
    return f"wrote {stats.documents} documents ({stats.bytes / 1e6:.1f} MB) to {stats.path} in {seconds:.1f}s: {kinds}"


def _inherit(doc: dict[str, Any]) -> dict[str, Any]:
    """Truth fields an exact copy shares with its original (its planted PII and boilerplate are the same text)."""
    return {k: doc["truth"][k] for k in ("pii", "boilerplate_lines") if k in doc["truth"]}
