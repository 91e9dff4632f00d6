"""What several filters share: the default list files in herd/data/lists/ and the exemption by domain.

`read_list` reads a list file (the URL lists, the dirty words). `_skipped` lets a document whose
`metadata["domain"]` is in a filter's `skip_domains` pass untouched, counted as "skipped_domain": the filters that
judge prose (repetition, Gopher/C4 rules, language ID, token KL) use it so code and math can share the pipeline.
"""

from __future__ import annotations

from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from herd.errors import DataError

LISTS_DIR = Path(__file__).parents[1] / "lists"


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
