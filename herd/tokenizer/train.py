"""Train a byte-level BPE with Llama 3's pre-tokenization and write it as a tiktoken rank file.

A tiny model trained from scratch cannot afford Meta's 128K vocabulary. `train_bpe` learns a smaller one on a
corpus; `save_ranks` writes it in the format of Meta's `tokenizer.model` (`base64(token) rank` per line), so
`Llama3Tokenizer(path)` loads it with the 256 special tokens after the base tokens.

The algorithm is the classic one (Sennrich et al. 2016, byte-level as in GPT-2): cut the text into pieces with
the pre-tokenization regex, count the distinct pieces, then repeatedly merge the most frequent adjacent pair of
tokens inside pieces. Pair counts are updated only where a merge changes a piece, and a heap with lazy
invalidation finds the best pair, so each merge costs time in proportion to the pieces it touches.

[Note: training merges vs tiktoken encoding] tiktoken does not replay the merge list: it repeatedly joins the
adjacent pair whose concatenated bytes has the lowest rank, whatever pair produced that token in training. When
the same bytes are reachable by two splits (training merged "ab"+"c" but "a"+"bc" also exist), tiktoken can
segment a piece differently from the training-time merges. That is harmless: the ids still decode to the input,
because every single byte is a token, and the difference in compression is tiny.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import regex
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from herd.errors import TokenizerError
from herd.fileio import atomic_file
from herd.tokenizer.llama3 import NUM_SPECIAL_TOKENS, PATTERN

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl",)

# Long texts reach the regex in chunks of about this many characters, so memory stays bounded.
CHUNK_CHARS = 1 << 20

# A pair (a, b) of token ids is the int a << _SHIFT | b: cheaper to hash than a tuple, and ordered like (a, b).
_SHIFT = 32
_LOW = (1 << _SHIFT) - 1

_PATTERN = regex.compile(PATTERN)


# ---------------------------------------------------------------------------------------------
# corpus


def read_corpus(inputs: Sequence[str | Path], *, text_field: str = "text") -> Iterator[str]:
    """The texts of `inputs`, in order: `.txt`/`.md` files whole, `.jsonl` files one document per line (its
    `text_field`). A directory contributes its files of those types recursively, sorted by path (others, such as
    a corpus's own metadata, are passed over); a named file of another type is an error."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            suffixes = TEXT_SUFFIXES + JSONL_SUFFIXES
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        elif path.is_file():
            files = [path]
        else:
            raise TokenizerError(f"corpus input not found: {path}")
        for file in files:
            yield from _read_file(file, text_field)


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES + JSONL_SUFFIXES:
        known = ", ".join(TEXT_SUFFIXES + JSONL_SUFFIXES)
        raise TokenizerError(f"{path}: unsupported corpus file type {suffix or '(none)'!r}; expected one of {known}")
    try:
        if suffix in TEXT_SUFFIXES:
            yield path.read_text(encoding="utf-8")
            return
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield _jsonl_text(line, text_field, f"{path}:{lineno}")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _jsonl_text(line: str, text_field: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{where}: not valid JSON ({e.msg})") from None
    text = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise TokenizerError(f"{where}: expected a JSON object with a string field {text_field!r}")
    return text


# ---------------------------------------------------------------------------------------------
# pre-tokenization


def text_chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Cut `text` into chunks of at most about `size` characters, only after a newline that is followed by a
    non-space character. No regex piece spans such a place, so the chunks give the same pieces as the whole text.
    (A text with no such place for `size` characters is cut there anyway.)"""
    start = 0
    while len(text) - start > size:
        cut = text.rfind("\n", start, start + size)
        while cut > start and text[cut + 1].isspace():
            cut = text.rfind("\n", start, cut)
        end = cut + 1 if cut > start else start + size
        yield text[start:end]
        start = end
    if start < len(text):
        yield text[start:]


# ---------------------------------------------------------------------------------------------
# training


def train_bpe(texts: Iterable[str], vocab_size: int, *, progress: bool = False) -> dict[bytes, int]:
    """Learn the ranks of a byte-level BPE with `vocab_size` ids in all, the 256 special tokens included.

    Ranks 0..255 are the single bytes (rank = byte value); then each merge adds the next rank. Ties in pair
    frequency go to the pair of smallest ids, so the same corpus always gives the same ranks. When the corpus runs
    out of pairs to merge first, fewer than `vocab_size - 256` ranks come back: check the length.
    """
    num_base = vocab_size - NUM_SPECIAL_TOKENS
    if num_base < 256:
        raise TokenizerError(
            f"vocab_size {vocab_size} leaves {num_base} base tokens; need at least 256 + {NUM_SPECIAL_TOKENS} "
            f"special tokens = {256 + NUM_SPECIAL_TOKENS}"
        )
    with _progress(progress) as bar:
        task = bar.add_task("pre-tokenizing", total=None) if bar else None
        piece_counts: Counter[str] = Counter()
        for text in texts:
            for chunk in text_chunks(text):
                piece_counts.update(_PATTERN.findall(chunk))
            if bar and task is not None:
                bar.advance(task)
        if not piece_counts:
            raise TokenizerError("the corpus is empty: no text to train the tokenizer on")
        vocab = [bytes([i]) for i in range(256)]
        if bar and task is not None:
            bar.update(task, visible=False)
        merging = bar.add_task("merging", total=num_base - 256) if bar else None
        tick = (lambda: bar.advance(merging)) if bar and merging is not None else (lambda: None)
        return _merge(piece_counts, vocab, num_base, tick)


def _merge(
    piece_counts: Counter[str], vocab: list[bytes], num_base: int, tick: Callable[[], object]
) -> dict[bytes, int]:
    ranks = {token: rank for rank, token in enumerate(vocab)}
    # Pieces of one byte hold no pair and can never change: leave them out.
    words = [list(p.encode("utf-8")) for p in piece_counts]
    freqs = list(piece_counts.values())
    keep = [i for i, w in enumerate(words) if len(w) > 1]
    words, freqs = [words[i] for i in keep], [freqs[i] for i in keep]

    pair_counts: defaultdict[int, int] = defaultdict(int)
    where: defaultdict[int, set[int]] = defaultdict(set)  # pair -> words that contained it (may be stale)
    for w, (word, freq) in enumerate(zip(words, freqs, strict=True)):
        for x, y in itertools.pairwise(word):
            key = x << _SHIFT | y
            pair_counts[key] += freq
            where[key].add(w)
    # Max-heap on count, then smallest pair. Entries go stale instead of being updated: every pair a merge creates
    # or grows gets a fresh entry, and the others only shrink, so each live pair has an entry whose count is at
    # least its true count. A popped entry is taken only if its count is still true; a shrunk one goes back in.
    heap = [(-count, key) for key, count in pair_counts.items()]
    heapq.heapify(heap)

    while len(vocab) < num_base and heap:
        neg, key = heapq.heappop(heap)
        count = pair_counts.get(key, 0)
        if count != -neg:
            if 0 < count < -neg:
                heapq.heappush(heap, (-count, key))
            continue  # (count > -neg: a fresher entry for this pair is already in the heap)
        a, b = key >> _SHIFT, key & _LOW
        token = vocab[a] + vocab[b]
        # Two different pairs spelling the same bytes would give tiktoken a duplicate token; reuse the id instead
        # (as HF's trainer does). Not seen in practice with left-to-right merging, but cheap to rule out.
        c = ranks.get(token)
        if c is None:
            c = ranks[token] = len(vocab)
            vocab.append(token)
            tick()
        grown = _apply_merge(a, b, c, where.pop(key), words, freqs, pair_counts, where)
        del pair_counts[key]
        for k in grown:
            if pair_counts[k] > 0:
                heapq.heappush(heap, (-pair_counts[k], k))
    return ranks


def _apply_merge(
    a: int,
    b: int,
    c: int,
    word_ids: set[int],
    words: list[list[int]],
    freqs: list[int],
    pair_counts: defaultdict[int, int],
    where: defaultdict[int, set[int]],
) -> set[int]:
    """Replace every (a, b) by c in the words listed, left to right, and update the counts of the pairs around
    each replacement. Returns the pairs whose count grew."""
    grown: set[int] = set()
    for w in word_ids:
        word = words[w]
        n = len(word)
        if n < 2:
            continue
        freq = freqs[w]
        out: list[int] = []
        i = 0
        merged_last = False
        while i < n:
            t = word[i]
            if t == a and i + 1 < n and word[i + 1] == b:
                if out:
                    # old pair (left, a) -> new pair (left', c), where left' is c if the left token was merged too
                    pair_counts[word[i - 1] << _SHIFT | a] -= freq
                    k = out[-1] << _SHIFT | c
                    pair_counts[k] += freq
                    where[k].add(w)
                    grown.add(k)
                out.append(c)
                i += 2
                merged_last = True
            else:
                if merged_last:
                    # old pair (b, t) -> new pair (c, t)
                    pair_counts[b << _SHIFT | t] -= freq
                    k = c << _SHIFT | t
                    pair_counts[k] += freq
                    where[k].add(w)
                    grown.add(k)
                out.append(t)
                i += 1
                merged_last = False
        if len(out) != n:
            words[w] = out
    return grown


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as bar:
        yield bar


# ---------------------------------------------------------------------------------------------
# output


def save_ranks(ranks: dict[bytes, int], path: str | Path) -> None:
    """Write `ranks` as a tiktoken rank file, sorted by rank, atomically (temp file, fsync, rename)."""
    path = Path(path)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks must be 0..{len(ranks) - 1} with no gaps or repeats")
    lines = [base64.b64encode(token) + b" %d\n" % rank for token, rank in sorted(ranks.items(), key=lambda x: x[1])]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.writelines(lines)


def format_trained(ranks: dict[bytes, int], vocab_size: int, seconds: float, path: str | Path) -> str:
    """What `herd tokenizer train` prints once `ranks` (trained for `vocab_size`) are saved at `path`."""
    base = vocab_size - NUM_SPECIAL_TOKENS
    short = f" (the corpus ran out of pairs before {base})" if len(ranks) < base else ""
    return (
        f"trained {len(ranks)} BPE tokens + {NUM_SPECIAL_TOKENS} special tokens{short} in {seconds:.1f}s -> {path}\n"
        f"load it with: herd tokenize --tokenizer {path} --text '...'"
    )
