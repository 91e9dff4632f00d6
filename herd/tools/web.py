"""The online built-ins of Llama 3.1: Brave Search and Wolfram Alpha, over their HTTP APIs (stdlib urllib).

Keys come from BRAVE_API_KEY and WOLFRAM_API_KEY. HERD_BRAVE_URL / HERD_WOLFRAM_URL replace the endpoints (a proxy,
or a local stand-in in tests). Every failure is a ToolError that says what went wrong, and the model sees it as the
tool's result.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

from herd.errors import ToolError

BRAVE_URL = "https://api.search.brave.com/res/v1/web/search"
WOLFRAM_URL = "https://www.wolframalpha.com/api/v1/llm-api"
TIMEOUT_S = 15.0


def _get(url: str, headers: dict[str, str], what: str) -> bytes:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        raise ToolError(f"{what} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise ToolError(f"{what} is unreachable: {e}") from None


def brave_search(query: str, key: str, k: int = 3) -> list[dict[str, str]]:
    """The first `k` web results: {"title", "snippet", "url"}."""
    base = os.environ.get("HERD_BRAVE_URL", BRAVE_URL)
    url = f"{base}?{urllib.parse.urlencode({'q': query, 'count': k})}"
    body = _get(url, {"Accept": "application/json", "X-Subscription-Token": key}, "Brave Search")
    try:
        results = json.loads(body).get("web", {}).get("results", [])
        return [{"title": r["title"], "snippet": r.get("description", ""), "url": r["url"]} for r in results[:k]]
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as e:
        raise ToolError(f"Brave Search sent an unexpected answer ({type(e).__name__}: {e})") from None


def wolfram_alpha(query: str, key: str) -> str:
    """Wolfram Alpha's answer as text (its LLM API)."""
    base = os.environ.get("HERD_WOLFRAM_URL", WOLFRAM_URL)
    url = f"{base}?{urllib.parse.urlencode({'input': query, 'appid': key})}"
    return _get(url, {"Accept": "text/plain"}, "Wolfram Alpha").decode("utf-8", errors="replace")
