"""A synthetic corpus with learnable structure, its BPE tokenizer and packed shards, built once per test process.

Each document is a walk through a chain of 40 words in which every word is followed by its successor 90% of the
time: the unigram distribution is broad (about ln 40 nats per word) while the next word is nearly determined,
so a model that learns anything beyond token frequencies scores far below the unigram entropy.
"""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from herd.config import JobConfig, PackSection, load
from herd.data.pack import pack
from herd.data.shards import Shard
from herd.tokenizer.train import read_corpus, save_ranks, train_bpe

WORDS = [
    "amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper", "kelp", "lumen",
    "maple", "nectar", "onyx", "pebble", "quartz", "raven", "sage", "tundra", "umber", "violet", "willow", "xenon",
    "yarrow", "zephyr", "acorn", "birch", "coral", "dune", "elm", "flint", "garnet", "heath", "ivy", "jade",
    "krill", "loam", "moss", "nimbus",
]  # fmt: skip


def markov_document(rng: random.Random, words: int) -> str:
    successor = {w: WORDS[(i + 7) % len(WORDS)] for i, w in enumerate(WORDS)}
    word, out = rng.choice(WORDS), []
    for _ in range(words):
        out.append(word)
        word = successor[word] if rng.random() < 0.9 else rng.choice(WORDS)
    return " ".join(out) + "."


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> Path:
    """Pack directory with two sources ("north", "south") of Markov documents of varied lengths."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = random.Random(0)
    records = [
        {"text": markov_document(rng, rng.randint(5, 300)), "source": "north" if i % 3 else "south"} for i in range(400)
    ]
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    save_ranks(train_bpe(read_corpus([corpus]), 640), root / "tok" / "tokenizer.model")
    out = root / "shards"
    pack(PackSection(input=[str(corpus)], tokenizer=str(root / "tok" / "tokenizer.model"), shard_tokens=20_000), out)
    return out


def _unigram_entropy(pack_dir: Path) -> float:
    counts = np.zeros(1, dtype=np.int64)
    for shard in pack_dir.rglob("*.bin"):
        c = np.bincount(np.asarray(Shard(shard).tokens), minlength=len(counts))
        counts = np.pad(counts, (0, len(c) - len(counts))) + c
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _train_config(run_dir: Path, shards: Path, *overrides: str) -> JobConfig:
    """A model small enough for a step in a few milliseconds, through the same loader `herd train` uses."""
    base = [
        f"job.dump_folder={json.dumps(str(run_dir))}",
        f"data.shards=[{json.dumps(str(shards))}]",
        "model.dim=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
        "training.steps=30", "training.seq_len=64", "training.batch_tokens=512", "training.micro_batch_tokens=256",
        "optim.lr=0.01", "lr_schedule.warmup_steps=5", "checkpoint.interval=10",
        "metrics.tensorboard=false", "metrics.peak_tflops=1.0", "metrics.log_interval=0",
    ]  # fmt: skip
    return load("train", None, [*base, *overrides])


@pytest.fixture
def train_config():
    return _train_config


@pytest.fixture
def unigram_entropy():
    return _unigram_entropy
