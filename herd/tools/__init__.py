"""Tools a model calls: the code interpreter (a resource-limited Python subprocess) and offline BM25 search."""

from herd.tools.sandbox import SandboxResult, run_python
from herd.tools.search import SearchIndex

__all__ = ["SandboxResult", "SearchIndex", "run_python"]
