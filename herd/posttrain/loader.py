"""Dialogs -> packed, document-masked batches for the trainer (the post-training counterpart of MixLoader).

Each dialog is encoded with its loss mask (herd/posttrain/data.py) and packed whole, several per row, each with its
own document id so attention stays within the dialog; a dialog longer than a row is cut (and counted), and the
rest of a row that no next dialog fits into is padding with no targets. Dialogs are visited in a seeded order that
changes every epoch, and the position is `state_dict()`, so runs resume exactly as pretraining does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from herd.data.loader import Batch
from herd.data.pack import tokenizer_identity
from herd.errors import DataError
from herd.posttrain.data import read_jsonl, sft_example
from herd.posttrain.losses import IGNORE_INDEX
from herd.tokenizer import HFTokenizer, Llama3Tokenizer, Tokenizer


class DialogLoader:
    def __init__(self, files: list[str], tokenizer: Tokenizer, *, seed: int, on_error: str, work_dir: Path) -> None:
        self.names, self.weights = ["dialogs"], {"dialogs": 1.0}  # one source: the trainer's mix does not apply
        self.examples: list[tuple[list[int], list[int]]] = []
        self.problems: list[str] = []
        for file in files:
            result = read_jsonl(file, kind="sft", on_error=on_error)
            self.problems += result.problems
            self.examples += [sft_example(tokenizer, r["messages"]) for r in result.records]
        if not self.examples:
            raise DataError(f"no usable dialogs in {', '.join(files)}" + (f" ({self.problems[0]})" if self.problems
                                                                          else ""))  # fmt: skip
        self.seed, self.vocab_size = seed, tokenizer.vocab_size
        self.epoch = self.pos = self.batches = self.truncated = 0
        self.tokenizer_dir = work_dir / "tokenizer"
        self.chat_tokenizer = tokenizer
        self.tokenizer = save_tokenizer(tokenizer, self.tokenizer_dir)

    def set_weights(self, weights: dict[str, float]) -> None:
        """One source: mix weights do not apply."""

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.examples))

    def next_batch(self, rows: int, seq_len: int) -> Batch:
        tokens = torch.zeros(rows, seq_len, dtype=torch.long)
        targets = torch.full((rows, seq_len), IGNORE_INDEX, dtype=torch.long)
        doc_ids = torch.zeros(rows, seq_len, dtype=torch.long)
        order = self._order()
        for r in range(rows):
            filled, doc = 0, 0
            while True:
                inputs, labels = self.examples[int(order[self.pos])]
                if len(inputs) > seq_len:
                    inputs, labels = inputs[:seq_len], labels[:seq_len]
                    self.truncated += filled == 0
                if filled + len(inputs) > seq_len:
                    break  # the next dialog starts the next row
                tokens[r, filled : filled + len(inputs)] = torch.tensor(inputs)
                targets[r, filled : filled + len(inputs)] = torch.tensor(labels)
                doc_ids[r, filled : filled + len(inputs)] = doc
                filled, doc = filled + len(inputs), doc + 1
                self.pos += 1
                if self.pos == len(order):
                    self.epoch, self.pos = self.epoch + 1, 0
                    order = self._order()
            doc_ids[r, filled:] = doc  # padding is its own document, with no targets
        batch = Batch(tokens, targets, doc_ids, self.batches)
        self.batches += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "batches": self.batches, "truncated": self.truncated,
                "dialogs": len(self.examples)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["dialogs"] != len(self.examples):
            raise DataError(f"the checkpoint was trained on {state['dialogs']} dialogs; these files hold "
                            f"{len(self.examples)}")  # fmt: skip
        self.epoch, self.pos, self.batches = state["epoch"], state["pos"], state["batches"]
        self.truncated = state["truncated"]


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> dict[str, Any]:
    """Write the tokenizer beside the run (checkpoints copy it from there); its identity, as pack manifests hold."""
    directory.mkdir(parents=True, exist_ok=True)
    # Under torchrun every rank writes the same files: each goes to a private directory first and is renamed into
    # place, so a reader never sees half a file whichever rank wins.
    private = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=directory.parent))
    try:
        if isinstance(tokenizer, HFTokenizer):
            tokenizer.save(private)
        elif isinstance(tokenizer, Llama3Tokenizer):
            shutil.copyfile(tokenizer.path, private / "tokenizer.model")
        else:
            raise DataError(f"cannot save a {type(tokenizer).__name__} beside the run")
        for path in private.iterdir():
            os.replace(path, directory / path.name)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return tokenizer_identity(str(directory), tokenizer)
