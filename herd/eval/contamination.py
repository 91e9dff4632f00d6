"""`herd eval contamination`: which eval items overlap the pre-training data, and what the overlap is worth.

The method of the Llama 3 paper (section 5.1.4), on token 8-grams: a token of an eval item is contaminated when it
lies inside an 8-gram that occurs at least once in the training shards; an item is contaminated when the share of
its contaminated tokens exceeds a threshold T. The paper picks T per benchmark; here every benchmark is reported at
several thresholds (0.2, 0.5 and 0.8 by default), and scores are split at a headline one (0.5 by default).

Per benchmark and threshold: the share of contaminated items, the mean item score on the clean and on the
contaminated subset, and the estimated performance gain: the score on all items minus the score on the clean ones
(what the overlap may have added to the reported number), besides the plain contaminated-minus-clean difference.

The training side is a sorted array of unique uint64 hashes of every 8-gram inside a document (never across a
boundary), built chunk by chunk from memory-mapped shards; lookups are binary searches. The array is cached in the
output directory, keyed by the shard files' names, sizes and modification times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd.errors import EvalError, HerdError
from herd.eval.results import BenchmarkResult, read_result

if TYPE_CHECKING:
    import numpy as np

    from herd.data.shards import Shard
    from herd.tokenizer import Tokenizer

FORMAT_VERSION = 1
HASH_VERSION = 1
"""Bump when `ngram_hashes` changes, so an old cached index is never read."""
DEFAULT_THRESHOLDS = (0.2, 0.5, 0.8)
DEFAULT_THRESHOLD = 0.5
"""The headline threshold: the one the printed table and the report card split scores at."""
OUTPUT = "contamination.json"
CACHE_DIR = "ngram-index"
"""Beside contamination.json; a folder, so the index's own JSON is never taken for a result file."""
SKIP = ("eval.json", OUTPUT)
"""JSON files of a run directory that are not result files (as read_results skips them)."""
_CHUNK = 1 << 22
"""Tokens hashed at a time: bounds the temporary arrays to a few hundred MB."""
_MERGE = 1 << 25
"""Hashes held in unmerged parts before they are merged into one sorted array."""


# ---------------------------------------------------------------------------------------------
# Hashing n-grams


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise (uint64 arithmetic wraps): spreads every input bit over the output."""
    import numpy as np

    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """uint64 hashes of every n-gram of `tokens` (len - n + 1 of them; none when shorter than n).

    Each token id is mixed first, then the n-gram combines them as a polynomial with an odd multiplier (mod 2^64)
    and is mixed again. Two different n-grams share a hash with probability about 2^-64.
    """
    import numpy as np

    count = len(tokens) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    mixed = _mix(np.asarray(tokens).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    h = mixed[:count].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            h *= np.uint64(0x100000001B3)
            h += mixed[j : j + count]
    return _mix(h)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique of a uint64 array that the caller gives up (it is sorted in place): numpy 2.4's np.unique takes
    about 50x longer on 64-bit integers, and a copy would double the peak memory."""
    import numpy as np

    values.sort()
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def shard_ngrams(tokens: np.ndarray, doc_offsets: np.ndarray, n: int, start: int, stop: int) -> np.ndarray:
    """Hashes of the n-grams starting at token positions [start, stop) of a shard that lie inside one document."""
    import numpy as np

    stop = min(stop, len(tokens) - n + 1)
    if stop <= start:
        return np.zeros(0, dtype=np.uint64)
    h = ngram_hashes(np.asarray(tokens[start : stop + n - 1]), n)
    starts = np.arange(start, stop, dtype=np.int64)
    offsets = np.asarray(doc_offsets, dtype=np.int64)  # no copy when the caller converted them once
    # The end of the document holding each start: the first offset past it (side="right" skips empty documents).
    ends = offsets[np.searchsorted(offsets, starts, side="right")]
    return h[starts + n <= ends]


# ---------------------------------------------------------------------------------------------
# The training side: an index of every n-gram of the shards


def shard_files(specs: Sequence[str]) -> list[Path]:
    """The shard files named by `specs`: files, or directories searched for `herd data pack`'s *.bin shards."""
    if not specs:
        raise EvalError("no training shards given: pass --shards DIR_OR_FILE (a `herd data pack` output)")
    files: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.bin") if p.is_file())
            if not found:
                raise EvalError(f"--shards {path}: no *.bin token shards in this directory")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise EvalError(f"--shards {path}: no such file or directory")
    return sorted(set(files), key=files.index)


def open_shard(path: Path) -> Shard:
    """A memory-mapped shard, checked (magic, version, sizes); a bad one is an EvalError naming the file."""
    from herd.data.shards import Shard

    try:
        return Shard(path)
    except HerdError as e:
        raise EvalError(str(e)) from None


def build_index(files: Sequence[Path], n: int, *, progress: bool = False) -> tuple[np.ndarray, dict[str, int]]:
    """The sorted unique hashes of every within-document n-gram of the shards, and {tokens, docs, ngrams}."""
    import numpy as np
    from rich.console import Console
    from rich.progress import Progress

    shards = [open_shard(path) for path in files]
    parts: list[np.ndarray] = []
    held = 0
    with Progress(console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task(f"{n}-grams of {len(shards)} shards", total=sum(s.num_tokens for s in shards))
        for shard in shards:
            offsets = np.asarray(shard.doc_offsets, dtype=np.int64)
            for start in range(0, shard.num_tokens, _CHUNK):
                parts.append(sorted_unique(shard_ngrams(shard.tokens, offsets, n, start, start + _CHUNK)))
                held += len(parts[-1])
                if held > _MERGE and len(parts) > 1:
                    parts = [_merge(parts)]
                    held = len(parts[0])
                bar.advance(task, min(_CHUNK, shard.num_tokens - start))
    index = _merge(parts) if parts else np.zeros(0, dtype=np.uint64)
    stats = {"tokens": sum(s.num_tokens for s in shards), "docs": sum(s.num_docs for s in shards), "ngrams": len(index)}
    return index, stats


def _merge(parts: list[np.ndarray]) -> np.ndarray:
    """The sorted unique union of `parts`, which it empties: the parts are freed before the result is made."""
    import numpy as np

    merged = np.concatenate(parts)
    parts.clear()
    return sorted_unique(merged)


def index_key(files: Sequence[Path], n: int) -> str:
    """What a cached index depends on: the hash function, n, and each shard's name, size and mtime."""
    parts = [f"hash{HASH_VERSION}", f"n{n}"]
    for path in files:
        st = path.stat()
        parts.append(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def cached_index(
    files: Sequence[Path], n: int, cache_dir: Path | None, *, progress: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """`build_index`, read from or saved to `cache_dir`/KEY.npy (memory-mapped when read) with KEY.json beside it;
    an index of other shards in `cache_dir` is replaced."""
    import numpy as np

    from herd.fileio import atomic_file

    key = index_key(files, n)
    cache, meta = (cache_dir / f"{key}.npy", cache_dir / f"{key}.json") if cache_dir is not None else (None, None)
    if cache is not None and meta is not None and cache.is_file() and meta.is_file():
        try:
            stats = json.loads(meta.read_text())
            index = np.load(cache, mmap_mode="r")
            if index.dtype == np.uint64 and index.ndim == 1 and len(index) == stats["ngrams"]:
                return index, {**stats, "cache": str(cache), "cached": True, "seconds": 0.0}
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache is rebuilt
    t0 = time.perf_counter()
    index, stats = build_index(files, n, progress=progress)
    seconds = round(time.perf_counter() - t0, 2)
    if cache is not None and meta is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        for old in [*cache.parent.glob("*.npy"), *cache.parent.glob("*.json")]:
            if old.stem != key:
                old.unlink(missing_ok=True)
        with atomic_file(cache) as f:
            np.save(f, index)
        with atomic_file(meta, "w") as f:
            json.dump(stats, f)
    return index, {**stats, "cache": str(cache) if cache else None, "cached": False, "seconds": seconds}


def contains(index: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Which of `hashes` are in the sorted array `index` (binary search; `index` may be memory-mapped)."""
    import numpy as np

    if len(index) == 0 or len(hashes) == 0:
        return np.zeros(len(hashes), dtype=bool)
    # Sorted queries walk the index in order: about 10x faster than random probes into a large index.
    order = np.argsort(hashes, kind="stable")
    pos = np.searchsorted(index, hashes[order])
    found = np.empty(len(hashes), dtype=bool)
    found[order] = (pos < len(index)) & (np.asarray(index[np.minimum(pos, len(index) - 1)]) == hashes[order])
    return found


# ---------------------------------------------------------------------------------------------
# The eval side: contaminated tokens of each item


def covered_tokens(length: int, found: np.ndarray, n: int) -> int:
    """How many of `length` tokens lie inside at least one n-gram whose start is marked in `found`."""
    import numpy as np

    starts = np.flatnonzero(found)
    if len(starts) == 0:
        return 0
    # An n-gram starting at s covers tokens [s, s + n): +1 at s and -1 at s + n (starts are unique), then count the
    # positions with a positive running sum.
    edges = np.zeros(length + 1, dtype=np.int64)
    edges[starts] += 1
    edges[starts + n] -= 1
    return int(np.count_nonzero(np.cumsum(edges[:-1]) > 0))


def contaminated_tokens(ids: Sequence[int] | np.ndarray, index: np.ndarray, n: int) -> int:
    """How many tokens of `ids` lie inside an n-gram found in `index` (0 when shorter than n)."""
    import numpy as np

    return covered_tokens(len(ids), contains(index, ngram_hashes(np.asarray(ids, dtype=np.int64), n)), n)


def _mean(scores: list[float]) -> float | None:
    return sum(scores) / len(scores) if scores else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def split_scores(fractions: Sequence[float], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """Clean vs contaminated (fraction > threshold) items: counts, mean scores, and the estimated gain."""
    dirty = [s for f, s in zip(fractions, scores, strict=True) if f > threshold]
    clean = [s for f, s in zip(fractions, scores, strict=True) if f <= threshold]
    every, clean_score, dirty_score = _mean(list(scores)), _mean(clean), _mean(dirty)
    return {
        "contaminated": len(dirty),
        "clean": len(clean),
        "contaminated_share": len(dirty) / len(scores) if scores else None,
        "score_all": every,
        "score_clean": clean_score,
        "score_contaminated": dirty_score,
        "estimated_gain": _diff(every, clean_score),
        "contaminated_minus_clean": _diff(dirty_score, clean_score),
    }


def analyse(
    results: Sequence[tuple[str, BenchmarkResult]],
    tokenizer: Tokenizer,
    index: np.ndarray,
    *,
    n: int,
    thresholds: Sequence[float],
) -> list[dict[str, Any]]:
    """One entry per (source file, result): its items' contaminated-token fractions and the split at each T."""
    import numpy as np

    out = []
    for source, result in results:
        # One lookup per benchmark: the items' n-grams together, then split back per item.
        encoded = [tokenizer.encode(item.text) for item in result.items]  # no BOS/EOS: they sit at the edges only
        hashes = [ngram_hashes(np.asarray(ids, dtype=np.int64), n) for ids in encoded]
        found = contains(index, np.concatenate(hashes)) if hashes else np.zeros(0, dtype=bool)
        per_item = np.split(found, np.cumsum([len(h) for h in hashes], dtype=np.int64)[:-1]) if hashes else []
        items, fractions = [], []
        for item, ids, hit in zip(result.items, encoded, per_item, strict=True):
            covered = covered_tokens(len(ids), hit, n)
            fractions.append(covered / len(ids) if ids else 0.0)
            items.append({"id": item.id, "tokens": len(ids), "contaminated_tokens": covered,
                          "fraction": fractions[-1], "score": item.score})  # fmt: skip
        scores = [item.score for item in result.items]
        out.append({
            "benchmark": result.benchmark,
            "model": result.model,
            "kind": result.kind,
            "source": source,
            "items": len(items),
            "mean_fraction": _mean(fractions),
            "thresholds": {f"{t:g}": split_scores(fractions, scores, t) for t in thresholds},
            "item_fractions": items,
        })  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Inputs, the command


def read_result_specs(specs: Sequence[str]) -> list[tuple[str, BenchmarkResult]]:
    """(file, result) for every result file named by `specs`: files, or run directories of result files."""
    if not specs:
        raise EvalError("no eval results given: pass --results DIR_OR_FILE (the --out of a `herd eval` command)")
    out: list[tuple[str, BenchmarkResult]] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            # read_results' files, each with its name (the report says where every benchmark came from)
            out += [(str(p), read_result(p)) for p in sorted(path.glob("*.json")) if p.name not in SKIP]
        elif path.exists():
            out.append((str(path), read_result(path)))
        else:
            raise EvalError(f"--results {path}: no such file or directory")
    if not out:
        raise EvalError(f"no result files in {', '.join(specs)}")
    if not any(r.items for _, r in out):
        raise EvalError(f"the result files in {', '.join(specs)} hold no items to check")
    return out


def pack_manifest(shards: Sequence[str]) -> tuple[Path, dict[str, Any]] | None:
    """The folder and manifest of the `herd data pack` output holding the shards (looked for in the shards' folder
    and the one above, where a source's shards sit), or None."""
    for item in shards:
        folder = Path(item) if Path(item).is_dir() else Path(item).parent
        for d in (folder, folder.parent):
            try:
                manifest = json.loads((d / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(manifest, dict) and isinstance(manifest.get("tokenizer"), dict):
                return d, manifest
    return None


def load_shard_tokenizer(spec: str | None, shards: Sequence[str]) -> tuple[Tokenizer, str]:
    """The tokenizer `spec` names (an embedded model's name too), by default the one the shards were packed with:
    pack's copy beside them, else the one its manifest names. Checked against the manifest's vocabulary size."""
    from herd.tokenizer import load_tokenizer

    packed = pack_manifest(shards)
    if spec is None and packed is not None:
        folder, manifest = packed
        spec = str(folder / "tokenizer") if (folder / "tokenizer").is_dir() else manifest["tokenizer"].get("spec")
    if spec is None:
        raise EvalError("no `herd data pack` manifest beside the shards: pass --tokenizer (the one they were packed "
                        "with)")  # fmt: skip
    try:
        if spec == "llama3" or Path(spec).exists():
            tok = load_tokenizer(None if spec == "llama3" else spec)
        else:
            from herd.formats.load import resolve_model_path  # imports torch: only for an embedded model's name

            tok = load_tokenizer(resolve_model_path(spec))
    except HerdError as e:
        raise EvalError(f"--tokenizer {spec}: {e}") from None
    if packed is not None and (vocab := packed[1]["tokenizer"].get("vocab_size")) not in (None, tok.vocab_size):
        raise EvalError(f"--tokenizer {spec}: {tok.vocab_size} tokens, but the shards were packed with a tokenizer of "
                        f"{vocab} ({packed[0] / 'manifest.json'}); token ids would not match")  # fmt: skip
    return tok, spec


def run_contamination(
    results: Sequence[str],
    shards: Sequence[str],
    *,
    tokenizer: str | None = None,
    n: int = 8,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    default_threshold: float = DEFAULT_THRESHOLD,
    out: str | Path | None = None,
    cache: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Check every item of the result files against the shards; returns (and writes to out/contamination.json)
    the report."""
    if n < 1:
        raise EvalError(f"--n {n}: the n-gram length must be at least 1")
    thresholds = sorted({float(t) for t in [*thresholds, default_threshold]})
    for t in thresholds:
        if not 0 <= t < 1:
            raise EvalError(f"--threshold {t}: must be in [0, 1) (an item is contaminated above it)")
    t0 = time.perf_counter()
    found = read_result_specs(results)
    files = shard_files(shards)
    tok, spec = load_shard_tokenizer(tokenizer, shards)
    widest = max(open_shard(p).tokens.dtype.itemsize for p in files)
    if tok.vocab_size > 1 << (8 * widest):
        raise EvalError(f"--tokenizer {spec}: {tok.vocab_size} tokens do not fit the shards' {widest}-byte ids; "
                        "the shards were packed with another tokenizer")  # fmt: skip
    out_dir = Path(out) if out is not None else None
    cache_dir = out_dir / CACHE_DIR if cache and out_dir is not None else None
    index, stats = cached_index(files, n, cache_dir, progress=progress)
    report = {
        "version": FORMAT_VERSION,
        "method": f"token {n}-grams (Llama 3, sec. 5.1.4): a token is contaminated when an {n}-gram holding it "
        "occurs in a training document; an item when its share of contaminated tokens exceeds T. estimated_gain = "
        "score on all items - score on the clean ones",
        "n": n,
        "thresholds": thresholds,
        "default_threshold": float(default_threshold),
        "tokenizer": spec,
        "shards": {"files": [str(p) for p in files], **stats},
        "benchmarks": analyse(found, tok, index, n=n, thresholds=thresholds),
    }
    report["seconds"] = round(time.perf_counter() - t0, 2)
    if out_dir is not None:
        from herd.fileio import atomic_file

        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(out_dir / OUTPUT, "w") as f:
            json.dump(report, f, indent=1, allow_nan=False)
            f.write("\n")
    return report


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: dict[str, Any]) -> str:
    """The printed table: per benchmark the contaminated share at each T, then clean and contaminated scores and
    the estimated gain at the default T."""
    t0 = f"{report['default_threshold']:g}"
    s = report["shards"]
    where = "cached" if s.get("cached") else f"built in {s.get('seconds', 0):.1f}s"
    lines = [f"{report['n']}-gram index of {len(s['files'])} shard(s) ({s['tokens']:,} tokens, {s['docs']:,} "
             f"documents): {s['ngrams']:,} n-grams, {where}; tokenizer {report['tokenizer']}"]  # fmt: skip
    keys = [f"{t:g}" for t in report["thresholds"]]
    head = "".join(f"{'dirty>' + k:>11}" for k in keys)
    lines.append(f"{'model':<24} {'benchmark':<22} {'items':>6}{head} {'clean@' + t0:>10} {'dirty@' + t0:>10} "
                 f"{'gain@' + t0:>10}")  # fmt: skip
    for b in report["benchmarks"]:
        split = b["thresholds"]
        shares = "".join(f"{_fmt(split[k]['contaminated_share'], '.1%'):>11}" for k in keys)
        d = split[t0]
        lines.append(f"{b['model'][:24]:<24} {b['benchmark'][:22]:<22} {b['items']:>6}{shares} "
                     f"{_fmt(d['score_clean']):>10} {_fmt(d['score_contaminated']):>10} "
                     f"{_fmt(d['estimated_gain'], '+.3f'):>10}")  # fmt: skip
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", action="append", default=[], metavar="DIR_OR_FILE", required=True,
                   help="a `herd eval` --out directory or a result file (repeatable)")  # fmt: skip
    p.add_argument("--shards", action="append", default=[], metavar="DIR_OR_FILE", required=True,
                   help="training token shards: a `herd data pack` output or .bin files (repeatable)")  # fmt: skip
    p.add_argument("--tokenizer", default=None,
                   help="the shards' tokenizer (llama3, a tokenizer file or directory, a model directory, .gguf or "
                        "embedded model name); default: the one beside the shards or in their manifest")  # fmt: skip
    p.add_argument("--n", type=int, default=8, help="n-gram length in tokens (default 8, as Llama 3)")
    p.add_argument("--threshold", type=float, action="append", default=None, metavar="T",
                   help="an item is contaminated when more than T of its tokens are (repeatable; scores are split "
                        "at the first; default 0.5, and 0.2 and 0.8 reported too)")  # fmt: skip
    p.add_argument("--out", required=True, help="directory for contamination.json and the n-gram index cache")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cached n-gram index")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def command(a: argparse.Namespace) -> None:
    report = run_contamination(a.results, a.shards, tokenizer=a.tokenizer, n=a.n,
                               thresholds=a.threshold or DEFAULT_THRESHOLDS,
                               default_threshold=a.threshold[0] if a.threshold else DEFAULT_THRESHOLD,
                               out=a.out, cache=not a.no_cache,
                               progress=not a.quiet and sys.stderr.isatty())  # fmt: skip
    print(format_report(report))
    print(f"-> {Path(a.out) / OUTPUT} ({report['seconds']:.1f}s)")
