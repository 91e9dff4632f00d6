"""The values dedup compares: a 64-bit hash that every process agrees on, and the normalized forms of texts, lines,
URLs and dates.

Every kind reduces a document to keys before comparing anything, and a key must come out the same in every worker
process, so nothing here uses Python's per-process salted `hash`. Exact dedup keys `normalize_text`, line dedup
`normalize_line`, URL dedup `normalize_url` (with `_timestamp` for its dates); MinHash shingles and the
bag-of-words embedder split words with `_WORD`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import unicodedata
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from herd.errors import DataError


def _hash64(text: str) -> int:
    """A 64-bit hash that is the same in every process (Python's `hash` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_PUNCT = re.compile(r"[^\w\s]+")
_DIGIT = re.compile(r"\d")


def normalize_text(text: str) -> str:
    """Exact-dedup form of a text: NFKC, lower case, whitespace runs collapsed to one space."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def normalize_line(line: str) -> str:
    """Line-dedup form (ccNet's): lower case, digits to 0, punctuation dropped, whitespace collapsed.

    Digits and punctuation are folded so "© 2021 Acme." and "(c) 2023 Acme" count as one boilerplate line.
    """
    line = _PUNCT.sub(" ", unicodedata.normalize("NFKC", line).lower())
    return _WHITESPACE.sub(" ", _DIGIT.sub("0", line)).strip()


_DEFAULT_PORTS = {"http": 80, "https": 443}
_TRACKING_PARAMS = frozenset(
    {"fbclid", "gclid", "dclid", "msclkid", "yclid", "igshid", "mc_cid", "mc_eid", "_ga", "_gl", "phpsessid"}
)


def normalize_url(url: str) -> str:
    """Canonical form of a URL for URL dedup.

    Lower-cases scheme and host, drops the default port, the fragment, a trailing slash and tracking parameters
    (utm_*, fbclid, gclid, ...), and sorts the remaining query parameters. http and https map to the same key:
    crawls hold both copies of one page and URL dedup should keep only the newest.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        host, port = (parts.hostname or ""), parts.port
    except ValueError:  # a non-numeric port: keep the authority as written, lower-cased
        host, port = parts.netloc.lower(), None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal: hostname strips the brackets
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/") or "/"
    query = sorted(
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if not key.lower().startswith("utm_") and key.lower() not in _TRACKING_PARAMS
    )
    if scheme in _DEFAULT_PORTS:
        scheme = "http"
    return urlunsplit((scheme, host, path, urlencode(query), ""))


def _timestamp(value: object, doc_id: str, key: str) -> float | None:
    """Seconds since the epoch for a date given as a number, a datetime or an ISO 8601 string; None if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return float(text)
        with contextlib.suppress(ValueError):  # not ISO 8601: reported below
            value = datetime.fromisoformat(text)
    if not isinstance(value, datetime):
        raise DataError(f"document {doc_id!r}: metadata {key!r}={value!r} is not an ISO 8601 date or a timestamp")
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
