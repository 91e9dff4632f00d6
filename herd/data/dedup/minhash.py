"""Document-level near-duplicate removal by MinHash LSH over word 5-gram shingles (Broder, 1997), with a check of
each candidate pair's estimated Jaccard similarity. Drop reason "near_duplicate".

`MinHashSignature` records each document's minima, `MinHashMerge` turns band collisions into checked pairs and the
pairs into groups, `MinHashDedup` sets the defaults (25 bands x 4 rows, J >= 0.5; see its docstring for why).

Why herd's own MinHash and not datatrove's four stages (`MinhashDedupSignature`, `...Buckets`, `...Cluster`,
`...Filter`; datatrove 0.10.1, `datatrove/pipeline/dedup/minhash.py`):
- Fewer stages and files. datatrove's signature step writes one file per band per task
  (`bucket_<band>/<rank>.minhash.sig`) and reads each back to sort it; its bucket stage needs a task count divisible
  by the number of bands and writes `.dups` pair files; one cluster task unions them. Here MinHash is one more kind
  on the stages of stages.py (one .npz per task, one merge task, the shared `DedupFilter`), so `dedup_stages`
  chains it with the other kinds.
- No spaCy. datatrove splits `simplify_text(text)` with its English word tokenizer (spaCy) and hashes each n-gram
  string with xxhash64; here words are `\\w+` runs and n-gram hashes are combined from word hashes in numpy.
- A similarity check: a band collision only proposes a pair, which must also show an estimated J >= min_jaccard;
  datatrove makes every collision a duplicate.
- Ids, not positions. datatrove's union-find runs over (task rank, position in the task) and keeps each group's
  root, so the surviving copy follows the task layout; its filter drops by position without checking ids and, for a
  task with no .remove file, warns and keeps everything. Here the keep-rule decides for any task count, and the
  filter checks each id and refuses a missing file.
- Measured (benchmarks/README.md from benchmarks/results/data.json; 1,500 documents of the embedded corpus, 2 tasks,
  both at word 5-grams and 25 bands x 4 rows, 2-core CPU): herd 1,233 docs/s vs datatrove 137 with 1 worker, 994 vs
  177 with 2. Both removed all 140 planted duplicates; datatrove also removed 18 generated low-quality documents
  that herd kept.
The price: the merge holds every signature in one process (4 bytes per permutation per document), where datatrove's
bucket stage spreads the bands over tasks; at billions of documents it would need sharding by band.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
from datatrove.data import Document
from datatrove.io import DataFolderLike
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.disk_base import DiskWriter

from herd.data.dedup.normalize import _WORD, _hash64
from herd.data.dedup.stages import (
    DedupKind,
    DedupMerge,
    DedupSignature,
    Stage,
    _candidate_pairs,
    _drop_all_but_first,
)
from herd.data.hashing import mix64
from herd.errors import DataError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class MinHashSignature(DedupSignature):
    """Record = a document's MinHash signature over its word n-gram shingles (Broder, 1997).

    Words are `\\w+` runs of the NFKC, lower-cased text, so punctuation and line wrapping do not matter. Each
    shingle is hashed to 64 bits and each "permutation" is a seeded 64-bit mixer; two documents agree on one
    permutation's minimum with probability J, the Jaccard similarity of their shingle sets. Documents shorter than
    n_grams words form one shingle.
    """

    name = "minhash signature"

    def __init__(self, folder: DataFolderLike, *, n_grams: int = 5, num_permutations: int = 100, seed: int = 1) -> None:
        super().__init__(folder)
        if min(n_grams, num_permutations) < 1:
            raise DataError(f"minhash: n_grams={n_grams} and num_permutations={num_permutations} must be >= 1")
        self.n_grams = n_grams
        offsets = np.full(num_permutations, seed, dtype=np.uint64) * _GOLDEN  # arrays wrap silently, scalars warn
        self.seeds = mix64(np.arange(num_permutations, dtype=np.uint64) + offsets)

    def shingles(self, text: str) -> np.ndarray:
        """Distinct 64-bit hashes of the word n-grams of text."""
        words = _WORD.findall(unicodedata.normalize("NFKC", text).lower())
        if not words:
            return np.zeros(0, dtype=np.uint64)
        table = {word: _hash64(word) for word in set(words)}
        hashes = np.fromiter((table[w] for w in words), dtype=np.uint64, count=len(words))
        n = min(self.n_grams, len(words))
        count = len(words) - n + 1
        shingle = np.zeros(count, dtype=np.uint64)
        for i in range(n):  # order-sensitive combination of n consecutive word hashes
            shingle = mix64((shingle ^ hashes[i : i + count]) * _GOLDEN)
        return np.unique(shingle)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """(num_bands * rows_per_band,) minima of the seeded hashes over the shingles."""
        minima = np.full(len(self.seeds), np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(shingles), 2048):  # bounds memory at 2048 x permutations for long documents
            block = mix64(shingles[start : start + 2048, None] ^ self.seeds[None, :])
            minima = np.minimum(minima, block.min(axis=0))
        return minima

    def rows(self, docs: list[Document]) -> list[np.ndarray | None]:
        # the low 32 bits of each minimum: halves the merge's memory; chance agreements (2**-32) are negligible
        return [
            self.signature(shingles).astype(np.uint32) if len(shingles := self.shingles(doc.text)) else None
            for doc in docs
        ]


class MinHashMerge(DedupMerge):
    """MinHash merge: LSH band collisions propose pairs; a pair is kept if its estimated Jaccard similarity, the
    share of equal minima over all permutations, is at least min_jaccard. The check stops pages that only share a
    template (J ~ 0.2-0.3, which collide in some band now and then) from chaining into large false groups."""

    name = "minhash merge"

    def __init__(self, folder: DataFolderLike, *, num_bands: int, rows_per_band: int, min_jaccard: float) -> None:
        super().__init__(folder)
        self.num_bands = num_bands
        self.rows_per_band = rows_per_band
        self.min_jaccard = min_jaccard

    def duplicates(self, rows: np.ndarray, place: np.ndarray) -> np.ndarray:
        if rows.shape[1] != self.num_bands * self.rows_per_band:
            raise DataError(f"{self.folder.path}: signatures of {rows.shape[1]} minima, expected the bands' product")
        bands = rows.astype(np.uint64).reshape(len(rows), self.num_bands, self.rows_per_band)
        keys = np.zeros(bands.shape[:2], dtype=np.uint64)
        for r in range(self.rows_per_band):
            keys = mix64((keys ^ bands[:, :, r]) * _GOLDEN)
        a, b = _candidate_pairs(keys, place)
        similar = np.zeros(len(a), dtype=bool)
        for start in range(0, len(a), 65536):  # bounds memory at 65536 x permutations
            chunk = slice(start, start + 65536)
            similar[chunk] = (rows[a[chunk]] == rows[b[chunk]]).mean(axis=1) >= self.min_jaccard
        self.stat_update("candidate_pairs", value=len(a))
        self.stat_update("similar_pairs", value=int(similar.sum()))
        return _drop_all_but_first(a[similar], b[similar], place)


class MinHashDedup(DedupKind):
    """Document-level near-duplicate removal by MinHash LSH with a similarity check; reason "near_duplicate".

    Near-duplicates here are documents whose word 5-gram sets have Jaccard similarity J >= 0.5 (they share about
    two thirds of their 5-grams). One edited word changes up to 5 shingles, so editing 3% of the words already brings
    J down to about 0.75, and 5-8% to 0.5-0.7. Default: 25 bands x 4 rows (100 permutations), whose S-curve
    1 - (1 - J**4)**25 has its midpoint at 0.45: a pair becomes a candidate with probability 0.80 at J=0.5, 0.97 at
    0.6, 0.999 at 0.7 (FineWeb's 14 x 8 gives 0.05, 0.21, 0.57: it targets J >= 0.8). Loose bands also propose pages
    that merely share a template (0.18 at J=0.3), so a candidate pair must then show an estimated J >= min_jaccard
    (std 0.05 with 100 permutations). Documents linked through any chain of pairs form one group; its first stays.
    """

    folder_name = "minhash"
    reason = "near_duplicate"

    def __init__(
        self,
        work_dir: str | Path,
        *,
        n_grams: int = 5,
        num_bands: int = 25,
        rows_per_band: int = 4,
        min_jaccard: float = 0.5,
        seed: int = 1,
        exclusion_writer: DiskWriter | None = None,
    ) -> None:
        super().__init__(work_dir, exclusion_writer=exclusion_writer)
        if min(n_grams, num_bands, rows_per_band) < 1 or not 0.0 <= min_jaccard <= 1.0:
            raise DataError(
                f"minhash: n_grams={n_grams}, num_bands={num_bands}, rows_per_band={rows_per_band} must be >= 1"
                f" and min_jaccard={min_jaccard} in [0, 1]"
            )
        self.n_grams = n_grams
        self.num_bands = num_bands
        self.rows_per_band = rows_per_band
        self.min_jaccard = min_jaccard
        self.seed = seed

    def signature_step(self) -> PipelineStep:
        return MinHashSignature(
            self.folder, n_grams=self.n_grams, num_permutations=self.num_bands * self.rows_per_band, seed=self.seed
        )

    def merge_stage(self) -> Stage:
        merge = MinHashMerge(
            self.folder, num_bands=self.num_bands, rows_per_band=self.rows_per_band, min_jaccard=self.min_jaccard
        )
        return Stage([merge], tasks=1)
