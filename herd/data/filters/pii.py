"""PII scrubbing: personal data and credentials become typed placeholders (`<EMAIL>`, `<PHONE>`, ...); nothing is
dropped (Llama 3 removes "data from websites [that] are likely to contain large amounts of personally identifiable
information").

Top to bottom: the patterns of each kind, the checks that reject look-alikes (Luhn and issuer prefixes for cards,
version-number context for IPv4, readable words for credentials), then `PiiScrubber`, whose docstring lists what is
replaced and what is left alone on purpose.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.utils.typeshelper import StatHints

from herd.errors import DataError


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
