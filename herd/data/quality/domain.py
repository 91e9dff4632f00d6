"""Domain labels for the data mix (Llama 3 section 3.1.2): heuristic seed labels and the classifier trained on them.

`code_score` and `math_score` measure syntax evidence, `seed_domain_label` turns them (and the language tag) into
one of `DOMAINS`, and `train_domain_classifier` generalizes the seed labels with a `TextClassifier`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from herd.data.quality.classifier import TextClassifier
from herd.errors import DataError

DOMAINS = ("code", "math", "general", "multilingual")


_CODE_LINE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |return\b|elif |else\s*:|try\s*:|except\b|with .*:\s*$|"
    r"for .* in .*:\s*$|while .*:\s*$|if .*:\s*$|raise |yield\b|async |await |@\w+|"
    r"#include|#define|public |private |protected |static |const |let |var |fn |func |function\b|package |using |"
    r"struct |enum |impl |SELECT |INSERT |CREATE |[}\]{)]+;?\s*$)"
    r"|[;{]\s*(?://.*)?$|^\s*[\w.\[\]]+\s*(?:[+\-*/|&]?=|:=)\s*[^=\s]|->|=>|::|\w\(.*\)\s*:?\s*$"
)
_LATEX = re.compile(
    r"\\(?:frac|sum|int|prod|lim|sqrt|alpha|beta|gamma|delta|epsilon|theta|lambda|mu|sigma|pi|phi|omega|infty|"
    r"partial|nabla|cdot|times|leq|geq|neq|approx|mathbb|mathrm|mathcal|left|right|begin|end|sin|cos|log|exp|in|"
    r"forall|exists|rightarrow|mapsto|binom|over|hat|bar|vec|dots|ldots)\b|\$\$?|\^\{|_\{"
)
_MATH_EXPR = re.compile(
    r"\b(?:sin|cos|tan|exp|log|ln|sqrt|det|lim|max|min|gcd|mod|Integral|Derivative|Matrix|Rational|symbols|"
    r"integrate|diff|solve|simplify|factor|expand|series|Poly)\(|\*\*\s*\w|\w\^\w|[=<>≤≥≠±×÷∫∑∏√∞∂∇∈]"
    r"|\b\d+\s*[+\-*/]\s*\d+\b|\b[a-z]\s*[+\-*/]\s*[a-z0-9]\b"
)
_MATH_WORD = re.compile(
    r"\b(?:theorem|lemma|proof|corollary|equation|polynomials?|integrals?|derivatives?|matri(?:x|ces)|vectors?|"
    r"eigen\w*|primes?|integers?|rational|real numbers?|complex|coefficients?|roots?|variables?|functions?|series|"
    r"limits?|converge\w*|symmetric|algebra\w*|geometr\w*|topolog\w*|probability|expectation|variance|"
    r"distribution|differential|modulo|divisible|sets?|subsets?|field|group|ring|isomorphi\w*|denominator|"
    r"numerator|exponent|logarithm|factorial|determinant|linear|quadratic|symbolic|expression)\b"
)
_NEUTRAL_LINE = re.compile(r"\s*(?:>>>|\.\.\.|#(?!include|define)|//|/\*|\*)")
_MARKUP = re.compile(r"</?[a-zA-Z][^>]*>")
_ENGLISH_WORDS = (
    "the of and to a in is that for it as was with be by on not this are or from at which an have has but can "
    "if will all their there been one would were more also its into other these than when"
)
_ENGLISH = frozenset(_ENGLISH_WORDS.split())
_WORDS = re.compile(r"[^\W\d_]+")


def code_score(text: str) -> float:
    """Fraction of non-empty lines that look like source code (keywords, assignments, braces, calls).

    Comment lines and doctest prompts (">>>", common in math and library docs) count neither way.
    """
    lines = [ln for ln in text[:20_000].splitlines() if ln.strip() and not _NEUTRAL_LINE.match(ln)]
    if not lines:
        return 0.0
    return sum(1 for ln in lines if _CODE_LINE.search(ln)) / len(lines)


def math_score(text: str) -> float:
    """Formula density: LaTeX commands, math operators and calls, and math vocabulary, per 10 words."""
    text = _MARKUP.sub(" ", text[:20_000])  # tag syntax (<a href="...">) is not arithmetic
    words = max(1, len(text.split()))
    latex = len(_LATEX.findall(text))
    marks = 2 * latex + len(_MATH_EXPR.findall(text)) + len(_MATH_WORD.findall(text.lower()))
    return 10 * marks / words


def _non_english_score(text: str) -> float:
    """Share of letters outside ASCII, or of words that are not English function words, whichever says more."""
    words = _WORDS.findall(text[:5000].lower())
    if not words:
        return 0.0
    letters = "".join(words)
    non_ascii = sum(1 for c in letters if ord(c) > 127) / len(letters)
    english = sum(1 for w in words if w in _ENGLISH) / len(words)
    return max(non_ascii, 1.0 - english / 0.25) if len(words) >= 8 else non_ascii


def seed_domain_label(text: str, language: str | None = None) -> str:
    """Heuristic domain of a document, to seed the domain classifier (no large model needed).

    multilingual: the language tag (e.g. from lid.176) is not English; without a tag, mostly non-ASCII letters or
    almost no English function words in prose. math: formula density (LaTeX, operators, math calls and words) of
    at least 1.5 per 10 words, and more math than code. code: at least 35% of lines look like code. Else general.
    """
    if language is not None and language.split("_")[0].lower() not in ("en", "eng"):
        return "multilingual"
    code, maths = code_score(text), math_score(text)
    if maths >= 1.5 and maths / 1.5 >= code / 0.35:
        return "math"
    if code >= 0.35:
        return "code"
    if language is None and _non_english_score(text) > 0.6 and code < 0.1:
        return "multilingual"
    return "general"


def train_domain_classifier(
    texts: Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    languages: Sequence[str | None] | None = None,
    **classifier_kwargs: Any,
) -> TextClassifier:
    """Fit a domain classifier on `labels`, or on `seed_domain_label` of each text (with its language, if given).

    Defaults add character 3- and 4-grams to the word features: they carry script and syntax (code, LaTeX).
    """
    if languages is not None and len(languages) != len(texts):
        raise DataError(f"got {len(texts)} texts but {len(languages)} languages")
    if labels is None:
        langs = languages if languages is not None else [None] * len(texts)
        labels = [seed_domain_label(t, lang) for t, lang in zip(texts, langs, strict=True)]
    if bad := sorted(set(labels) - set(DOMAINS)):
        raise DataError(f"unknown domain labels {bad}; use {DOMAINS}")
    classifier_kwargs.setdefault("char_ngrams", (3, 4))
    return TextClassifier(**classifier_kwargs).fit(texts, list(labels))
