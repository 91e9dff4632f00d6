"""URL block/allow lists: drop pages on blocked domains or with banned URL substrings (Llama 3, "PII and safety
filtering": "websites that are known to contain adult content" are removed). Drop reasons "blocked_domain",
"banned_url_substring".
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter

from herd.data.filters.common import LISTS_DIR, read_list


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
