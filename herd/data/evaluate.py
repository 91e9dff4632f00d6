"""The run report of `herd data curate`, and each step's precision/recall against the corpus's ground truth.

Ground truth is `metadata["truth"]` as written by herd/data/corpus.py; steps never read it. Every dropped document
sits in <output>/removed/<step>/ with its reason, every kept one in <output>/kept/, so each check below is a set
comparison:
- a filter: precision = dropped documents that are truly bad / all it dropped; recall = truly bad documents it
  dropped / truly bad documents that reached it;
- dedup: a planted group (original + copies) should end with exactly one member; precision = dropped documents
  that belong to a group / all dedup dropped; recall = copies removed / copies planted (among those that reached it);
- transformations (PII, extraction, line dedup): planted items that are gone from the kept text, and collateral.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd.data.report import histograms, step_summaries

if TYPE_CHECKING:
    from herd.data.pipeline import Curator

BAD_KINDS = {"low_quality", "adult"}
QUALITY_STEPS = ("heuristics", "repetition", "token_kl", "quality", "dirty_words")
DEDUP_STEPS = ("dedup_url", "dedup_exact", "dedup_minhash", "dedup_semantic")
# Strings of the generated HTML page furniture (corpus._html_page) that extraction should remove.
HTML_FURNITURE = ("Home</a>", "Home | Docs", "We use cookies", "Related posts", "Privacy policy", "Weekly roundup")


def read_jsonl(folder: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(folder.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            docs += [json.loads(line) for line in f if line.strip()]
    return docs


def build_report(curator: Curator, files: list[Path]) -> dict[str, Any]:
    out = curator.out
    steps = step_summaries("clean", out / "logs" / "clean")
    dedup_logs = sorted(p for p in (out / "logs").glob("dedup_*") if p.is_dir())
    if dedup_logs:  # the last dedup stage holds every kind's filter
        steps += [s for s in step_summaries("dedup", dedup_logs[-1]) if "READER" not in s["step"].upper()]
    steps += step_summaries("quality", out / "logs" / "quality")
    reader = steps[0]
    kept = read_jsonl(curator.kept)
    removed = (
        {p.name: read_jsonl(p) for p in sorted(curator.removed.iterdir()) if p.is_dir()}
        if curator.removed.exists()
        else {}
    )
    report: dict[str, Any] = {
        "config": str(out / "config.toml"),
        "input": {
            "files": len(files),
            "documents": reader["docs_out"],
            "skipped": reader["skipped"],
            "errors": str(out / "errors"),
        },
        "steps": steps,
        "removed": {
            name: dict(Counter(d["metadata"].get("filter_reason", "?") for d in docs)) for name, docs in removed.items()
        },
        "output": {
            "path": str(curator.kept),
            "documents": len(kept),
            "chars": sum(len(d["text"]) for d in kept),
            **histograms(kept),
        },
        "timings_s": {k: round(v, 2) for k, v in curator.timings.items()},
    }
    if any("truth" in d.get("metadata", {}) for d in kept):
        model = Path(curator.cfg.quality.classifier or curator.models / "quality.npz")
        scores = None
        if curator.cfg.quality.enabled and model.exists():
            scores = score_before_filters(model, read_jsonl(curator.stage_dirs["dedup"]))
        report["ground_truth"] = ground_truth(kept, removed, scores)
    return report


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _pr(tp: int, fp: int, fn: int) -> dict[str, Any]:
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "tp": tp, "fp": fp, "fn": fn}


def ground_truth(
    kept: list[dict[str, Any]],
    removed: dict[str, list[dict[str, Any]]],
    quality_scores: list[tuple[float, dict[str, Any]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """`quality_scores`: (score, truth) of documents scored by the quality classifier before any quality filter."""
    truth = lambda d: d["metadata"].get("truth", {})  # noqa: E731
    kind = lambda d: truth(d).get("kind")  # noqa: E731
    checks: dict[str, dict[str, Any]] = {}

    def filter_check(name: str, steps: tuple[str, ...], bad: set[str], reached: list[dict[str, Any]]) -> None:
        dropped = [d for s in steps for d in removed.get(s, [])]
        tp = sum(kind(d) in bad for d in dropped)
        positives = sum(kind(d) in bad for d in reached)
        checks[name] = _pr(tp, len(dropped) - tp, positives - tp)

    every = kept + [d for docs in removed.values() for d in docs]
    after_clean = kept + [d for s, docs in removed.items() if s.startswith(("dedup", *QUALITY_STEPS)) for d in docs]
    after_dedup = kept + [d for s, docs in removed.items() if s in QUALITY_STEPS for d in docs]
    filter_check("url filter (blocked domains)", ("url",), {"blocked_url"}, every)
    filter_check("quality filters (low quality + adult)", QUALITY_STEPS, BAD_KINDS, after_dedup)
    filter_check("dirty words (adult)", ("dirty_words",), {"adult"}, after_dedup)

    # Dedup: groups are an original and its planted copies, among documents that reached dedup.
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in after_clean:
        groups[truth(d).get("dup_of") or d["id"]].append(d)
    dedup_dropped = {d["id"] for s in DEDUP_STEPS for d in removed.get(s, [])}
    tp = fp = copies = 0
    for members in groups.values():
        gone = sum(m["id"] in dedup_dropped for m in members)
        if len(members) > 1:
            copies += len(members) - 1
            tp += min(gone, len(members) - 1)
            fp += max(0, gone - (len(members) - 1))
        else:
            fp += gone
    checks["dedup (exact + near duplicates)"] = _pr(tp, fp, copies - tp)

    # Transformations, measured on the kept text.
    from herd.data.filters import PII_PLACEHOLDERS

    pii_items = [(item, d) for d in kept for item in truth(d).get("pii", [])]
    pii_left = sum(item in d["text"] for item, d in pii_items)
    placeholder = re.compile("|".join(re.escape(p) for p in set(PII_PLACEHOLDERS.values())))
    # The real sources hold real addresses (authors' emails in the standard library), which are not planted: count
    # them apart instead of calling them false positives.
    other = sum(len(placeholder.findall(d["text"])) for d in kept if not truth(d).get("pii"))
    checks["pii scrubbing (planted items)"] = {
        **_pr(len(pii_items) - pii_left, 0, pii_left),
        "precision": None,
        "replacements_in_documents_without_planted_pii": other,
    }

    lines = [(line, d) for d in kept for line in truth(d).get("boilerplate_lines", [])]
    lines_left = sum(line in d["text"] for line, d in lines)
    checks["line dedup (planted boilerplate lines)"] = _pr(len(lines) - lines_left, 0, lines_left)
    checks["line dedup (planted boilerplate lines)"]["precision"] = None  # collateral is not planted, not measured

    pages = [d for d in kept if truth(d).get("html")]
    # Compare with whitespace collapsed, as a browser shows HTML text.
    squash = lambda t: " ".join(t.split())  # noqa: E731
    main_lines = [(squash(ln), d) for d in pages for ln in truth(d)["main_text"].splitlines() if len(ln.strip()) > 30]
    kept_lines = sum(ln in squash(d["text"]) for ln, d in main_lines)
    furniture = sum(any(f in d["text"] for f in HTML_FURNITURE) for d in pages)
    checks["html extraction"] = {
        "main_text_line_recall": _ratio(kept_lines, len(main_lines)),
        "pages_with_boilerplate_left": furniture,
        "pages": len(pages),
    }

    lang_ok = [d["metadata"].get("language") == truth(d).get("lang") for d in kept if truth(d).get("lang")]
    checks["language id (kept documents)"] = {"accuracy": _ratio(sum(lang_ok), len(lang_ok)), "n": len(lang_ok)}
    dom = [(d["metadata"].get("domain"), truth(d).get("domain")) for d in kept if "domain" in d["metadata"]]
    checks["domain tagging (kept documents)"] = {
        "accuracy": _ratio(sum(a == b for a, b in dom), len(dom)),
        "n": len(dom),
        "confusion": {f"{b}->{a}": n for (a, b), n in sorted(Counter(dom).items()) if a != b},
    }
    if quality_scores is not None:
        checks["quality classifier (clean vs low quality)"] = {"auc": _auc(quality_scores), "n": len(quality_scores)}
    return checks


def _auc(scored: list[tuple[float, dict[str, Any]]]) -> float | None:
    """Probability that a clean English document scores above a planted low-quality or adult one."""
    good = [s for s, t in scored if t.get("kind") == "clean" and t.get("lang") == "en"]
    bad = [s for s, t in scored if t.get("kind") in BAD_KINDS]
    if not good or not bad:
        return None
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return round(wins / (len(good) * len(bad)), 4)


def score_before_filters(model_path: Path, docs: list[dict[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
    """The quality classifier's scores on the documents that entered the quality stage (junk included)."""
    from herd.data.quality import TextClassifier, scores_from_proba

    classifier = TextClassifier.load(model_path)
    proba = classifier.predict_proba([d["text"] for d in docs])
    scores = scores_from_proba(proba, classifier.labels)
    return [(float(s), d["metadata"].get("truth", {})) for s, d in zip(scores, docs, strict=True)]
