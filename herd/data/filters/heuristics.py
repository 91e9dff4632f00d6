"""Rule-based quality heuristics: Gopher's repetition rules (`RepetitionFilter`) and Gopher's quality rules with
optional C4 rules (`QualityHeuristicsFilter`), both on whitespace words.

Llama 3 uses the "duplicated n-gram coverage ratio" against repeated content such as logging or error messages,
and heuristics like these against low-quality pages. The note below says why these are written here rather than
taken from datatrove.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from herd.data.filters.common import _skipped

# [Note: words] Gopher's rules count whitespace-separated words. datatrove's GopherQualityFilter and
# GopherRepetitionFilter split with spaCy instead, so every comma and period is a "word": on the Python stdlib
# docstrings of the embedded corpus its 80%-alphabetic-words rule dropped 181 of 272 prose documents, where the
# whitespace reading drops 3; and the spaCy tokenizer made the two filters ~10x slower. Both rule sets are short,
# so they are written here on whitespace words.

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_EDGE_PUNCT = "\"'()[]{}<>.,;:!?*`“”‘’«»…-–—"
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
_BULLETS = ("•", "-", "*", "‣", "◦", "·", "–")
_ELLIPSES = ("...", "…")


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number, characters) of the items that repeat an earlier one."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    """Characters (of words) in all occurrences of the most frequent n-gram, if it occurs more than once."""
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = max(grams.items(), key=lambda kv: (kv[1], kv[0]))
    return sum(map(len, gram)) * count if count > 1 else 0


def _duplicated_ngram_chars(words: list[str], n: int) -> int:
    """Characters (of words) covered by repeats of an earlier n-gram, each word counted once.

    The first occurrence is not a duplicate: a text quoting one phrase twice has one duplicated copy, as with
    duplicate lines.
    """
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            covered[i : i + n] = [True] * n
        else:
            seen.add(gram)
    return sum(len(w) for w, c in zip(words, covered, strict=True) if c)


class RepetitionFilter(BaseFilter):
    """Gopher's repetition rules (Rae et al., 2021, Table A1) on whitespace words (see [Note: words]).

    Drops a document when repeated paragraphs or lines make up more than 30% of its paragraphs/lines or 20% of its
    characters, when the most frequent 2/3/4-gram covers more than 20/18/16% of its word characters, or when
    repeated n-grams of 5..10 words cover more than 15..10% of them. Lines and paragraphs compare after stripping;
    words compare lower-cased. Llama 3 uses this "duplicated n-gram coverage ratio" against repeated content such
    as logging or error messages. Reasons, one per rule: "dup_para_frac", "dup_para_char_frac", "dup_line_frac",
    "dup_line_char_frac", "top_{n}_gram", "dup_{n}_gram", and "empty". Documents of `skip_domains` pass (default
    "code" and "math", which Llama 3 curates through their own pipelines: doctests repeat their import lines, and
    on the embedded corpus these rules dropped half of the sympy docstrings). Writes nothing to metadata.
    """

    name = "repetition"

    def __init__(
        self,
        *,
        dup_para_frac: float | None = 0.3,
        dup_para_char_frac: float | None = 0.2,
        dup_line_frac: float | None = 0.3,
        dup_line_char_frac: float | None = 0.2,
        top_ngram_fracs: Mapping[int, float] | None = None,
        dup_ngram_fracs: Mapping[int, float] | None = None,
        skip_domains: Iterable[str] = ("code", "math"),
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer)
        self.dup_para_frac = dup_para_frac
        self.dup_para_char_frac = dup_para_char_frac
        self.dup_line_frac = dup_line_frac
        self.dup_line_char_frac = dup_line_char_frac
        self.top_ngram_fracs = dict({2: 0.20, 3: 0.18, 4: 0.16} if top_ngram_fracs is None else top_ngram_fracs)
        default_dup = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
        self.dup_ngram_fracs = dict(default_dup if dup_ngram_fracs is None else dup_ngram_fracs)
        self.skip_domains = frozenset(skip_domains)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if _skipped(self, doc, self.skip_domains):
            return True
        text = doc.text.strip()
        if not text:
            return False, "empty"
        for unit, parts, frac, char_frac in (
            ("para", _PARAGRAPH_BREAK.split(text), self.dup_para_frac, self.dup_para_char_frac),
            ("line", text.split("\n"), self.dup_line_frac, self.dup_line_char_frac),
        ):
            parts = [p.strip() for p in parts if p.strip()]
            count, chars = _duplicates(parts)
            if frac is not None and count / len(parts) > frac:
                return False, f"dup_{unit}_frac"
            if char_frac is not None and chars / len(text) > char_frac:
                return False, f"dup_{unit}_char_frac"
        words = text.lower().split()
        total = sum(map(len, words))
        for n, frac in sorted(self.top_ngram_fracs.items()):
            if _top_ngram_chars(words, n) / total > frac:
                return False, f"top_{n}_gram"
        for n, frac in sorted(self.dup_ngram_fracs.items()):
            if _duplicated_ngram_chars(words, n) / total > frac:
                return False, f"dup_{n}_gram"
        return True


_C4_JAVASCRIPT = re.compile(r"javascript", re.IGNORECASE)


class QualityHeuristicsFilter(BaseFilter):
    """Gopher's quality rules (Rae et al., 2021, appendix A.1.1) plus optional C4 rules (Raffel et al., 2020).

    Gopher, on whitespace words (see [Note: words]); a word counts if it has a letter or digit:
    50..100,000 words ("gopher_short_doc", "gopher_long_doc"); mean word length, edge punctuation stripped, 3..10
    characters ("gopher_short_words", "gopher_long_words"); at most 0.1 '#' and 0.1 ellipses per word
    ("gopher_hash_ratio", "gopher_ellipsis_ratio"); at most 90% of lines starting with a bullet and 30% ending with
    an ellipsis ("gopher_bullet_lines", "gopher_ellipsis_lines"); at least 80% of whitespace tokens with a letter
    ("gopher_alpha_words"); at least 2 of the stop words the, be, to, of, and, that, have, with
    ("gopher_stop_words"). Any bound set to None is not checked. Text without a letter or digit: "empty".
    C4 options: `c4_lorem_ipsum` drops documents containing "lorem ipsum" ("c4_lorem_ipsum", on by default);
    `c4_curly_bracket` drops documents with a '{' ("c4_curly_bracket", off: it removes code, math and JSON);
    `c4_javascript` removes the lines that mention JavaScript (counted as "c4_javascript_lines"; off: it guts
    articles about JavaScript).

    Exemptions. Documents whose `metadata["domain"]` is in `skip_domains` pass untouched (default "code" and "math":
    source code and formulas fail the word-length, symbol and stop-word rules; Llama 3 curates both through their
    own pipelines). The rules on whitespace words (word count, mean word length, '#' and ellipsis per word, stop
    words) are English calibrations: a document whose `metadata["language"]` (from `LanguageId`) is set and not
    in `languages` gets only the script-neutral rules (C4, bullet and ellipsis lines, alphabetic tokens), so a
    number table tagged "und" or a Latin lorem-ipsum page is still caught.
    """

    name = "quality heuristics"

    def __init__(
        self,
        *,
        min_words: int | None = 50,
        max_words: int | None = 100_000,
        min_mean_word_length: float | None = 3,
        max_mean_word_length: float | None = 10,
        max_hash_ratio: float | None = 0.1,
        max_ellipsis_ratio: float | None = 0.1,
        max_bullet_lines: float | None = 0.9,
        max_ellipsis_lines: float | None = 0.3,
        min_alpha_words: float | None = 0.8,
        min_stop_words: int | None = 2,
        stop_words: Iterable[str] = GOPHER_STOP_WORDS,
        c4_lorem_ipsum: bool = True,
        c4_curly_bracket: bool = False,
        c4_javascript: bool = False,
        skip_domains: Iterable[str] = ("code", "math"),
        languages: Iterable[str] = ("en",),
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer)
        self.min_words, self.max_words = min_words, max_words
        self.min_mean_word_length, self.max_mean_word_length = min_mean_word_length, max_mean_word_length
        self.max_hash_ratio, self.max_ellipsis_ratio = max_hash_ratio, max_ellipsis_ratio
        self.max_bullet_lines, self.max_ellipsis_lines = max_bullet_lines, max_ellipsis_lines
        self.min_alpha_words = min_alpha_words
        self.min_stop_words = min_stop_words
        self.stop_words = frozenset(w.lower() for w in stop_words)
        self.c4_lorem_ipsum = c4_lorem_ipsum
        self.c4_curly_bracket = c4_curly_bracket
        self.c4_javascript = c4_javascript
        self.skip_domains = frozenset(skip_domains)
        self.languages = frozenset(languages)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if _skipped(self, doc, self.skip_domains):
            return True
        if self.c4_javascript and _C4_JAVASCRIPT.search(doc.text):
            lines = doc.text.split("\n")
            kept = [line for line in lines if not _C4_JAVASCRIPT.search(line)]
            self.stat_update("c4_javascript_lines", value=len(lines) - len(kept))
            doc.text = "\n".join(kept)
        text = doc.text
        if self.c4_lorem_ipsum and "lorem ipsum" in text.lower():
            return False, "c4_lorem_ipsum"
        if self.c4_curly_bracket and "{" in text:
            return False, "c4_curly_bracket"
        tokens = text.split()
        words = [w for w in tokens if any(c.isalnum() for c in w)]
        if not words:
            return False, "empty"
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        if self.max_bullet_lines is not None and sum(s.startswith(_BULLETS) for s in lines) / len(lines) > (
            self.max_bullet_lines
        ):
            return False, "gopher_bullet_lines"
        if self.max_ellipsis_lines is not None and sum(s.endswith(_ELLIPSES) for s in lines) / len(lines) > (
            self.max_ellipsis_lines
        ):
            return False, "gopher_ellipsis_lines"
        alpha = sum(any(c.isalpha() for c in w) for w in tokens) / len(tokens)
        if self.min_alpha_words is not None and alpha < self.min_alpha_words:
            return False, "gopher_alpha_words"
        language = doc.metadata.get("language")
        if language is not None and language not in self.languages:
            self.stat_update("skipped_language_rules")
            return True
        return self._word_rules(text, words)

    def _word_rules(self, text: str, words: list[str]) -> bool | tuple[bool, str]:
        """The rules calibrated on English words: counts, lengths, per-word symbol ratios, stop words."""
        n = len(words)
        if self.min_words is not None and n < self.min_words:
            return False, "gopher_short_doc"
        if self.max_words is not None and n > self.max_words:
            return False, "gopher_long_doc"
        mean_length = sum(len(w.strip(_EDGE_PUNCT)) for w in words) / n
        if self.min_mean_word_length is not None and mean_length < self.min_mean_word_length:
            return False, "gopher_short_words"
        if self.max_mean_word_length is not None and mean_length > self.max_mean_word_length:
            return False, "gopher_long_words"
        if self.max_hash_ratio is not None and text.count("#") / n > self.max_hash_ratio:
            return False, "gopher_hash_ratio"
        ellipses = text.count("...") + text.count("…")
        if self.max_ellipsis_ratio is not None and ellipses / n > self.max_ellipsis_ratio:
            return False, "gopher_ellipsis_ratio"
        if self.min_stop_words is not None:
            present = {w.strip(_EDGE_PUNCT).lower() for w in words} & self.stop_words
            if len(present) < self.min_stop_words:
                return False, "gopher_stop_words"
        return True
