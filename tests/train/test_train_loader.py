import json
from collections import Counter

import numpy as np
import pytest
import torch

from herd.data.loader import IGNORE_INDEX, MixLoader
from herd.errors import DataError


def test_same_seed_same_batches_and_other_seed_differs(synthetic_shards) -> None:
    a, b, c = (MixLoader([str(synthetic_shards)], seed=s, chunk_tokens=65) for s in (0, 0, 1))
    for _ in range(5):
        x, y, z = a.next_batch(4, 64), b.next_batch(4, 64), c.next_batch(4, 64)
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.doc_ids, y.doc_ids)
    assert not torch.equal(x.tokens, z.tokens)


def test_resumed_loader_draws_the_batches_an_uninterrupted_one_would(synthetic_shards) -> None:
    ref = MixLoader([str(synthetic_shards)], seed=3, weights={"north": 1, "south": 3}, chunk_tokens=40)
    for _ in range(7):
        ref.next_batch(3, 48)
    state = json.loads(json.dumps(ref.state_dict()))  # it is saved as JSON in checkpoints
    resumed = MixLoader([str(synthetic_shards)], seed=3, chunk_tokens=40)
    resumed.load_state_dict(state)
    for _ in range(40):  # well past an epoch of the smaller source
        x, y = ref.next_batch(3, 48), resumed.next_batch(3, 48)
        assert x.index == y.index
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.targets, y.targets)


def test_targets_are_next_tokens_within_a_piece_and_ignored_across_pieces(synthetic_shards) -> None:
    loader = MixLoader([str(synthetic_shards)], seed=0, chunk_tokens=30)
    batch = loader.next_batch(8, 64)
    same_piece = batch.doc_ids[:, 1:] == batch.doc_ids[:, :-1]
    assert torch.equal(batch.targets[:, :-1][same_piece], batch.tokens[:, 1:][same_piece])
    assert (batch.targets[:, :-1][~same_piece] == IGNORE_INDEX).all()
    assert (batch.doc_ids.diff(dim=1) >= 0).all() and (batch.doc_ids[:, 0] == 0).all()
    assert int(batch.doc_ids.max()) >= 2  # short chunks: several pieces per row


def test_one_epoch_makes_every_token_but_a_documents_first_a_target_once(synthetic_shards) -> None:
    """Chunks of a document overlap by one token, and pieces split across rows too, so nothing is lost."""
    loader = MixLoader([str(synthetic_shards)], seed=0, weights={"south": 1.0}, chunk_tokens=17)
    shards = loader.sources["south"].shards
    expected = Counter()
    for shard in shards:
        for i in range(shard.num_docs):
            doc = np.asarray(shard.document(i))
            expected.update(zip(doc[:-1].tolist(), doc[1:].tolist(), strict=True))
    seen = Counter()
    while loader.sources["south"].epoch == 0:
        batch = loader.next_batch(2, 24)
        valid = batch.targets != IGNORE_INDEX
        seen.update(zip(batch.tokens[valid].tolist(), batch.targets[valid].tolist(), strict=True))
    # The batch that crossed into epoch 1 holds a few of its pairs; everything of epoch 0 is there exactly.
    assert not expected - seen
    assert sum((seen - expected).values()) <= 2 * 24


def test_mix_weights_are_followed(synthetic_shards) -> None:
    loader = MixLoader([str(synthetic_shards)], seed=0, weights={"north": 1, "south": 4}, chunk_tokens=9)
    assert loader.weights == pytest.approx({"north": 0.2, "south": 0.8})
    for _ in range(100):
        loader.next_batch(4, 32)
    share = loader.drawn["south"] / sum(loader.drawn.values())
    assert share == pytest.approx(0.8, abs=0.03)


def test_unknown_source_weight_and_missing_manifest_are_named(synthetic_shards, tmp_path) -> None:
    with pytest.raises(DataError, match="unknown source 'west'"):
        MixLoader([str(synthetic_shards)], weights={"west": 1.0})
    with pytest.raises(DataError, match=r"manifest\.json: not found"):
        MixLoader([str(tmp_path)])
