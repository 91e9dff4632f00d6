"""Deduplication at every level Llama 3 uses (paper section 3.1.1), as datatrove steps that work across tasks.

Kinds, in the order a curation pipeline usually runs them, one module each:
- `UrlDedup` (url.py): one document per normalized URL, the most recent crawl kept (Llama 3: "URL-level
  de-duplication ... we keep the most recent version for pages corresponding to each URL").
- `ExactDedup` (exact.py): one document per whitespace/case-normalized text.
- `MinHashDedup` (minhash.py): document-level near-duplicates by MinHash LSH over word 5-gram shingles (Broder, 1997).
- `LineDedup` (line.py): lines seen in more than 6 documents of a bucket are removed everywhere (Llama 3, after ccNet).
- `SemanticDedup` (semantic.py): SemDeDup (Abbas et al., 2023): embed, cluster, drop documents too close to a kept one.
Shared by the kinds: normalize.py (the hashes and normalized forms they compare), stages.py (the three stages and
the files between them), run.py (chaining kinds into executor stages and running them).

Global dedup cannot keep its state inside one process: the pipeline runs as `tasks` shards spread over any number
of workers (or Slurm/Ray jobs). So each kind runs as three stages, one after another, with files in between under
`<work_dir>/<kind>/`:
  1. signature, every task: read the task's documents, write one record per document (its position in the task,
     its id, a priority, and its keys or embedding) to `signatures/<rank>.npz`.
  2. merge, one task (line dedup: one per bucket): read all records, decide which documents go, write
     `remove/<rank>.npz` (position and id of each document to drop) for every task.
  3. filter, every task: read the same documents again and drop the listed ones (checking the ids match).
`dedup_stages` chains several kinds: the signature stage of one kind reads the documents through the filters of
the kinds before it, so no intermediate copy of the corpus is written. `run_local` runs the stages under datatrove's
LocalPipelineExecutor, `run_in_process` runs them here, task by task, for small runs and tests.

Keep-rule: in every duplicate group the kept document is the first by (priority, document id in natural order,
e.g. `a.jsonl/2` before `a.jsonl/10`); the priority is 0 except for URL dedup, where newer dates come first.
Decisions depend only on document ids and contents, never on ranks or on which worker ran a task, so the output is
the same for any number of workers, and the kept set is the same for any number of tasks as long as ids are unique
(datatrove readers give `<file>/<line>` ids). Memory: a merge holds every record of its kind in one process
(MinHash: 4 bytes per permutation per document; semantic: 4 bytes per embedding dimension per document; line:
8 bytes per distinct line per document of the bucket). Line counts are sharded by bucket, as Llama 3 does; at
billions of documents the MinHash and semantic merges would need the same treatment (by band, by k-means cluster).
"""

from herd.data.dedup.exact import ExactDedup, ExactSignature
from herd.data.dedup.line import LineCount, LineDedup, LineDedupFilter, LineSignature
from herd.data.dedup.minhash import MinHashDedup, MinHashMerge, MinHashSignature
from herd.data.dedup.normalize import normalize_line, normalize_text, normalize_url
from herd.data.dedup.run import DocumentList, dedup_documents, dedup_stages, run_in_process, run_local
from herd.data.dedup.semantic import (
    Embedder,
    EmbedDocuments,
    HashedBagOfWords,
    MiniLMEmbedder,
    SemanticDedup,
    SemanticMerge,
)
from herd.data.dedup.stages import DedupFilter, DedupKind, DedupMerge, DedupSignature, KeyMerge, Stage
from herd.data.dedup.url import UrlDedup, UrlSignature

__all__ = [
    "DedupFilter",
    "DedupKind",
    "DedupMerge",
    "DedupSignature",
    "DocumentList",
    "EmbedDocuments",
    "Embedder",
    "ExactDedup",
    "ExactSignature",
    "HashedBagOfWords",
    "KeyMerge",
    "LineCount",
    "LineDedup",
    "LineDedupFilter",
    "LineSignature",
    "MinHashDedup",
    "MinHashMerge",
    "MinHashSignature",
    "MiniLMEmbedder",
    "SemanticDedup",
    "SemanticMerge",
    "Stage",
    "UrlDedup",
    "UrlSignature",
    "dedup_documents",
    "dedup_stages",
    "normalize_line",
    "normalize_text",
    "normalize_url",
    "run_in_process",
    "run_local",
]
