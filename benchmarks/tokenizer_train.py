"""BPE training: herd's pure-Python trainer vs HF `tokenizers` (Rust) on the same corpus, same vocabulary size.

The corpus is built at run time from text files that the installed packages ship: the Python standard library
and site-packages (`.py` sources, `.txt` / `.rst` / `.md` docs), read in a seeded random order with duplicate
files dropped. Nothing is downloaded or committed. The first --mb MB of files train both tokenizers; the next
--heldout-mb MB are held out to measure compression, in bytes of UTF-8 per token (higher is better), for both
trained tokenizers and Meta's 128K Llama 3 tokenizer.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/tokenizer_train.py
    .venv/bin/python benchmarks/tokenizer_train.py --mb 5 --vocab-size 4096

Both trainers use Llama 3's pre-tokenization regex and learn a byte-level BPE with vocab-size - 256 base tokens
(herd's vocab-size counts the 256 special tokens that follow them). HF's pre-tokenizer is the one of the published
Llama 3 tokenizer.json: Split on the regex (isolated), then ByteLevel without its own regex.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

SUFFIXES = (".py", ".txt", ".rst", ".md")
MAX_FILE_BYTES = 1 << 20  # keep a few huge generated files from dominating the corpus


def build_corpus(mb: float, heldout_mb: float, seed: int) -> tuple[list[str], list[str], dict[str, float]]:
    """(training texts, held-out texts, MB per suffix in training) from the files installed packages ship."""
    roots = {Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])}
    files = sorted({p.resolve() for root in roots for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file()})
    random.Random(seed).shuffle(files)
    seen: set[bytes] = set()
    train: list[str] = []
    heldout: list[str] = []
    train_bytes = heldout_bytes = 0
    by_suffix: dict[str, float] = {}
    for path in files:
        if heldout_bytes >= heldout_mb * 1e6:
            break
        data = path.read_bytes()
        digest = hashlib.sha1(data).digest()
        if not data.strip() or len(data) > MAX_FILE_BYTES or digest in seen:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        seen.add(digest)
        if train_bytes < mb * 1e6:
            train.append(text)
            train_bytes += len(data)
            by_suffix[path.suffix] = by_suffix.get(path.suffix, 0.0) + len(data) / 1e6
        else:
            heldout.append(text)
            heldout_bytes += len(data)
    if train_bytes < mb * 1e6 or heldout_bytes < heldout_mb * 1e6:
        sys.exit(f"only {train_bytes / 1e6:.1f} + {heldout_bytes / 1e6:.1f} MB of text found; lower --mb")
    return train, heldout, by_suffix


def timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process): CPU > wall means more than one thread worked."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def train_herd(texts: list[str], vocab_size: int) -> dict[bytes, int]:
    from herd.tokenizer.train import train_bpe

    return train_bpe(texts, vocab_size, progress=sys.stderr.isatty())


def train_hf(texts: list[str], num_base: int, threads: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from herd.tokenizer.llama3 import PATTERN

    # tokenizers reads this before each parallel section: "false" runs its trainer on one thread
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=num_base, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def hf_token_bytes(tok) -> set[bytes]:
    """The byte strings of a byte-level HF vocabulary. GPT-2's byte-level format shows each byte as one character:
    printable Latin-1 bytes as themselves, the other bytes as chr(256 + n) in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    others = [b for b in range(256) if b not in printable]
    char_to_byte = {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}
    return {bytes(char_to_byte[ch] for ch in token) for token in tok.get_vocab()}


def bytes_per_token(texts: list[str], encode) -> tuple[float, int]:
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(encode(t)) for t in texts)
    return n_bytes / n_tokens, n_tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=50.0, help="training corpus size in MB")
    p.add_argument("--heldout-mb", type=float, default=2.0)
    p.add_argument("--vocab-size", type=int, default=8192, help="ids in all, the 256 special tokens included")
    p.add_argument("--rounds", type=int, default=3, help="trainings per trainer; the table shows medians")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tokenizer_train.json")
    a = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from herd.tokenizer import Llama3Tokenizer
    from herd.tokenizer.train import save_ranks

    t0 = time.perf_counter()
    train, heldout, by_suffix = build_corpus(a.mb, a.heldout_mb, a.seed)
    mb = sum(by_suffix.values())
    mix = ", ".join(f"{k} {v:.1f}" for k, v in sorted(by_suffix.items()))
    log(f"corpus: {len(train)} files to train ({mb:.1f} MB: {mix}), {len(heldout)} held out")
    log(f"corpus built in {time.perf_counter() - t0:.1f} s")
    num_base = a.vocab_size - 256

    trainers = {
        "herd (pure Python, 1 thread)": lambda: train_herd(train, a.vocab_size),
        "HF tokenizers (Rust, 2 threads)": lambda: train_hf(train, num_base, threads=2),
        "HF tokenizers (Rust, 1 thread)": lambda: train_hf(train, num_base, threads=1),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in trainers}
    trained = {}
    for r in range(a.rounds):
        for name, fn in trainers.items():
            trained[name], wall, cpu = timed(fn)
            runs[name].append((wall, cpu))
            log(f"round {r + 1}: {name}: {wall:.1f} s ({cpu:.1f} s CPU)")

    herd_ranks, hf_tok = trained["herd (pure Python, 1 thread)"], trained["HF tokenizers (Rust, 2 threads)"]
    if len(herd_ranks) < num_base:
        log(f"herd: the corpus ran out of pairs after {len(herd_ranks)} base tokens")
    with tempfile.TemporaryDirectory() as tmp:
        save_ranks(herd_ranks, Path(tmp) / "tokenizer.model")
        herd_tok = Llama3Tokenizer(Path(tmp) / "tokenizer.model")
    meta = Llama3Tokenizer()
    encoders = {
        "herd (pure Python, 1 thread)": (herd_tok.encode, len(herd_ranks)),
        "HF tokenizers (Rust, 2 threads)": (
            lambda t: hf_tok.encode(t, add_special_tokens=False).ids,
            hf_tok.get_vocab_size(),
        ),
        "HF tokenizers (Rust, 1 thread)": None,  # the same tokenizer as with 2 threads
        "Meta Llama 3 (128K, not trained here)": (meta.encode, meta.vocab_size - 256),
    }
    rows = []
    for name, enc in encoders.items():
        row: dict = {"tokenizer": name}
        if name in runs:
            row["train_s"] = statistics.median(w for w, _ in runs[name])
            row["train_cpu_s"] = statistics.median(c for _, c in runs[name])
            row["runs"] = runs[name]
        if enc is not None:
            encode, row["base_tokens"] = enc
            row["bytes_per_token"], row["heldout_tokens"] = bytes_per_token(heldout, encode)
        rows.append(row)
    shared = len(set(herd_ranks) & hf_token_bytes(hf_tok))

    result = {
        "benchmark": "tokenizer_train",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "corpus": {
            "train_files": len(train),
            "train_mb_by_suffix": by_suffix,
            "heldout_files": len(heldout),
            "heldout_bytes": sum(len(t.encode("utf-8")) for t in heldout),
        },
        "rows": rows,
        "base_tokens_shared_by_herd_and_hf": shared,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{mb:.0f} MB training text, vocab size {a.vocab_size} ({num_base} base + 256 special)\n")
    print("| tokenizer | base tokens | train s (median) | CPU s | held-out bytes/token |")
    print("|---|---|---|---|---|")
    for row in rows:
        cells = [
            row["tokenizer"],
            f"{row['base_tokens']:,}" if "base_tokens" in row else "same",
            f"{row['train_s']:.1f}" if "train_s" in row else "-",
            f"{row['train_cpu_s']:.1f}" if "train_cpu_s" in row else "-",
            f"{row['bytes_per_token']:.3f}" if "bytes_per_token" in row else "same",
        ]
        print("| " + " | ".join(cells) + " |")
    print(f"\nherd and HF share {shared:,} of their {num_base:,} base tokens")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
