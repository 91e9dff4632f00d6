import torch

from herd.data.loader import MixLoader
from herd.model import build_model, document_mask, document_positions, get_preset


def packed_logits(model, tokens: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
    return model(tokens, positions_BT=document_positions(doc_ids), mask=document_mask(doc_ids))


def test_changing_one_packed_document_leaves_the_others_logits_unchanged(synthetic_shards) -> None:
    loader = MixLoader([str(synthetic_shards)], seed=0, chunk_tokens=20)
    batch = loader.next_batch(2, 64)
    assert int(batch.doc_ids[0].max()) >= 3
    model = build_model(get_preset("tiny").replace(vocab_size=loader.vocab_size, n_layers=3))
    before = packed_logits(model, batch.tokens, batch.doc_ids)

    victim = batch.doc_ids[0] == 1
    changed = batch.tokens.clone()
    changed[0, victim] = torch.randint(0, loader.vocab_size, (int(victim.sum()),))
    after = packed_logits(model, changed, batch.doc_ids)

    others = torch.ones_like(batch.doc_ids, dtype=torch.bool)
    others[0] = ~victim
    torch.testing.assert_close(after[others], before[others], rtol=0, atol=1e-6)
    assert not torch.allclose(after[0, victim], before[0, victim])


def test_a_packed_document_gets_the_logits_it_gets_alone(synthetic_shards) -> None:
    loader = MixLoader([str(synthetic_shards)], seed=1, chunk_tokens=25)
    batch = loader.next_batch(1, 64)
    model = build_model(get_preset("tiny").replace(vocab_size=loader.vocab_size))
    packed = packed_logits(model, batch.tokens, batch.doc_ids)[0]
    for doc in batch.doc_ids[0].unique():
        where = batch.doc_ids[0] == doc
        alone = model(batch.tokens[:, where])[0]  # plain causal attention, positions from 0
        torch.testing.assert_close(packed[where], alone, rtol=1e-5, atol=1e-5)
