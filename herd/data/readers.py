"""Reading raw input: jsonl, HTML and text files -> datatrove Documents, never crashing on bad input.

Files are sorted and dealt to tasks round-robin (task r of W reads files r, r+W, ...), so what each task reads
does not depend on how many worker processes run the tasks. A record that cannot be read (bad UTF-8, broken
JSON, no text, a document over the size limit) or an empty file is counted by reason and logged with its
location in `<errors_dir>/<rank>.jsonl`; the run goes on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from herd.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
HTML_SUFFIXES = (".html", ".htm")
TEXT_SUFFIXES = (".txt", ".md")
_CANONICAL = re.compile(r"""<link[^>]+rel=["']canonical["'][^>]*href=["']([^"']+)""", re.I)


def input_files(inputs: list[str]) -> list[Path]:
    """Every readable file under `inputs`, sorted; unknown suffixes are an error naming the file."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            found = [path]
        else:
            raise DataError(f"{path}: no such file or directory")
        for p in found:
            if p.suffix.lower() not in JSONL_SUFFIXES + HTML_SUFFIXES + TEXT_SUFFIXES:
                if path.is_dir() and p.name in ("corpus.json", "manifest.json"):
                    continue  # descriptions written beside the data
                raise DataError(f"{p}: unsupported input file type; expected .jsonl, .html or .txt files")
            files.append(p)
    if not files:
        raise DataError(f"no input files under {', '.join(inputs)}")
    return sorted(set(files))


class RawReader(PipelineStep):
    """Reads this task's share of the input files into Documents (id, text, metadata = the other fields)."""

    name = "📖 raw reader"
    type = "READER"

    def __init__(
        self,
        files: Sequence[str | Path],
        *,
        text_field: str = "text",
        id_field: str = "id",
        max_doc_bytes: int = 1 << 21,
        errors_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.files = [Path(f) for f in files]
        self.text_field, self.id_field = text_field, id_field
        self.max_doc_bytes = max_doc_bytes
        self.errors_dir = Path(errors_dir) if errors_dir is not None else None

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        errors: list[dict[str, str]] = []
        try:
            for path in self.files[rank::world_size]:
                for doc in self._read(path, errors):
                    self.stat_update("documents")
                    self.update_doc_stats(doc)
                    yield doc
        finally:
            if self.errors_dir is not None:
                self.errors_dir.mkdir(parents=True, exist_ok=True)
                with open(self.errors_dir / f"{rank:05d}.jsonl", "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(e) + "\n" for e in errors)

    def _skip(self, errors: list[dict[str, str]], where: str, reason: str) -> None:
        self.stat_update(f"skipped_{reason}")
        errors.append({"where": where, "reason": reason})

    def _read(self, path: Path, errors: list[dict[str, str]]) -> Iterator[Document]:
        try:
            raw = path.read_bytes()
        except OSError as e:
            self._skip(errors, str(path), f"unreadable ({e.strerror})")
            return
        if not raw.strip():
            self._skip(errors, str(path), "empty_file")
            return
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            yield from self._read_jsonl(path, raw, errors)
            return
        if len(raw) > self.max_doc_bytes:
            self._skip(errors, str(path), "too_large")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self._skip(errors, f"{path}@{e.start}", "bad_utf8")
            return
        metadata: dict[str, Any] = {"file": str(path)}
        if suffix in HTML_SUFFIXES:
            metadata["format"] = "html"
            if m := _CANONICAL.search(text):
                metadata["url"] = m.group(1)
        yield Document(text=text, id=str(path), metadata=metadata)

    def _read_jsonl(self, path: Path, raw: bytes, errors: list[dict[str, str]]) -> Iterator[Document]:
        for lineno, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            if len(line) > self.max_doc_bytes:
                self._skip(errors, where, "too_large")
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                self._skip(errors, where, "bad_utf8")
                continue
            except json.JSONDecodeError:
                self._skip(errors, where, "bad_json")
                continue
            if not isinstance(record, dict) or not isinstance(record.get(self.text_field), str):
                self._skip(errors, where, "no_text")
                continue
            text = record.pop(self.text_field)
            doc_id = str(record.pop(self.id_field, where))
            metadata = record.pop("metadata", {}) if isinstance(record.get("metadata"), dict) else {}
            yield Document(text=text, id=doc_id, metadata={**metadata, **record})
