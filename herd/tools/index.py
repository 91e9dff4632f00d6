"""The offline search engine of agents: an SQLite FTS5 index over curated documents.

`herd index build` reads the jsonl documents `herd data curate` keeps ({"text", "id", "metadata"}; any jsonl with a
text field works) and writes one SQLite file; `FtsIndex.search` ranks with FTS5's built-in BM25 and returns the
same {"title", "snippet", "url"} results as the Brave backend. The file is written under a temporary name and
renamed when complete, so a failed build never leaves a half index behind.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from herd.errors import ToolError

_WORD = re.compile(r"\w+")
_SCHEMA = "CREATE VIRTUAL TABLE docs USING fts5(title, body, url UNINDEXED, tokenize='unicode61')"


def _files(inputs: list[Path]) -> Iterator[Path]:
    for path in inputs:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise ToolError(f"{path}: no such file or directory")


def _records(path: Path, text_field: str) -> Iterator[tuple[str, str, str]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise ToolError(f"{path}:{n}: not JSON ({e.msg})") from None
            text = doc.get(text_field) if isinstance(doc, dict) else None
            if not isinstance(text, str):
                raise ToolError(f"{path}:{n}: no string field {text_field!r}")
            meta: dict[str, Any] = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
            url = str(doc.get("url") or meta.get("url") or "")
            title = str(doc.get("title") or meta.get("title") or url or doc.get("id") or f"{path.name}:{n}")
            yield title, text, url


def build_index(inputs: list[Path], out: Path, *, text_field: str = "text") -> int:
    """Index every document of the jsonl files (directories are searched for *.jsonl) into `out`; returns the
    number of documents."""
    files = list(_files(inputs))
    if not files:
        raise ToolError(f"no .jsonl files in {', '.join(map(str, inputs))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    count = 0
    try:
        with sqlite3.connect(tmp) as db:
            db.execute(_SCHEMA)
            for path in files:
                rows = list(_records(path, text_field))
                db.executemany("INSERT INTO docs (title, body, url) VALUES (?, ?, ?)", rows)
                count += len(rows)
            db.execute("INSERT INTO docs(docs) VALUES ('optimize')")
        db.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return count


class FtsIndex:
    """Search an index `build_index` wrote."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ToolError(f"search index {self.path} does not exist; build one with `herd index build`")
        self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        try:
            self.size = self._db.execute("SELECT count(*) FROM docs").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise ToolError(f"{self.path} is not a herd search index ({e})") from None

    def search(self, query: str, k: int = 3) -> list[dict[str, str]]:
        """The `k` best documents sharing a word with `query`, best first. Query words are quoted, so FTS5's
        operators typed in a query are plain words."""
        words = _WORD.findall(query.lower())
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
        rows = self._db.execute(
            "SELECT title, snippet(docs, 1, '', '', ' ... ', 48), url FROM docs WHERE docs MATCH ? "
            "ORDER BY bm25(docs) LIMIT ?",
            (match, k),
        ).fetchall()
        return [{"title": t, "snippet": s, "url": u} for t, s, u in rows]
