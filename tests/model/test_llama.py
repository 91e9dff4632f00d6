"""Properties of herd's Transformer that have no external reference: caching, packing, sizes."""

import pytest
import torch

from herd.errors import ModelError
from herd.model import (
    ModelArgs,
    RopeScaling,
    build_model,
    count_params,
    document_mask,
    document_positions,
    flops_per_token,
    get_preset,
)

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32, max_seq_len=128)


@pytest.fixture
def model() -> torch.nn.Module:
    m = build_model(ARGS)
    with torch.no_grad():  # larger weights than the init, so that mistakes show in the logits
        for p in m.parameters():
            p.mul_(5)
    return m.eval()


def test_cached_incremental_decoding_equals_full_forward(model) -> None:
    tokens = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        full = model(tokens)
        model.setup_caches(2, 64)
        steps = [model(tokens[:, :10], cache_pos=0)]  # prefill, then chunks of 1 and 3 tokens
        pos = 10
        for size in (1, 1, 3, 1, 1, 3, 1, 1, 1, 1):
            steps.append(model(tokens[:, pos : pos + size], cache_pos=pos))
            pos += size
        model.clear_caches()
    assert pos == 24
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-4, rtol=0)


def test_packed_document_masked_forward_equals_separate_forwards(model) -> None:
    lengths = [5, 11, 1, 7]
    docs = [torch.randint(0, 128, (n,)) for n in lengths]
    packed = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    with torch.no_grad():
        out = model(packed, positions_BT=document_positions(doc_ids), mask=document_mask(doc_ids))
        separate = torch.cat([model(d[None]) for d in docs], dim=1)
        unmasked = model(packed)
    assert torch.allclose(out, separate, atol=1e-4, rtol=0)
    assert not torch.allclose(unmasked[:, 5:], separate[:, 5:], atol=1e-3)  # the mask matters


def test_document_positions_restart_per_document() -> None:
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2], [3, 3, 3, 3, 3, 3]])
    assert document_positions(doc_ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]


def test_tied_model_shares_one_matrix() -> None:
    m = build_model(ARGS.replace(tie_embeddings=True))
    assert m.output.weight is m.tok_embeddings.weight
    assert sum(p.numel() for p in m.parameters()) == count_params(m.args)["total"]


@pytest.mark.parametrize("name", ["tiny", "debug", "llama3.2-1b"])
def test_param_count_formula_matches_built_model(name) -> None:
    args = get_preset(name)
    m = build_model(args, device="meta")
    assert sum(p.numel() for p in m.parameters()) == count_params(args)["total"]


@pytest.mark.parametrize(
    ("name", "billions", "ffn"),
    [
        ("llama3-8b", 8.03, 14336),
        ("llama3.1-8b", 8.03, 14336),
        ("llama3-70b", 70.55, 28672),
        ("llama3.1-70b", 70.55, 28672),
        ("llama3.1-405b", 405.85, 53248),
        ("llama3.2-1b", 1.236, 8192),
        ("llama3.2-3b", 3.213, 8192),
    ],
)
def test_presets_have_meta_published_sizes(name, billions, ffn) -> None:
    args = get_preset(name)
    assert args.ffn_hidden_dim == ffn
    assert count_params(args)["total"] / 1e9 == pytest.approx(billions, rel=1e-3)


def test_flops_per_token_follows_6n_plus_attention() -> None:
    args = get_preset("llama3-8b")
    f = flops_per_token(args, seq_len=8192)
    n = count_params(args)
    matmul = n["total"] - n["embedding"] - (2 * args.n_layers + 1) * args.dim
    assert f["train"] == 6 * matmul + 12 * args.n_layers * 8192 * args.dim


def test_presets_use_llama31_rope_scaling() -> None:
    assert get_preset("llama3.1-405b").rope_scaling == RopeScaling(factor=8.0)
    assert get_preset("llama3-8b").rope_scaling is None
    assert get_preset("llama3.2-1b").rope_scaling.factor == 32.0


def test_bad_args_raise_clear_errors() -> None:
    with pytest.raises(ModelError, match="n_kv_heads=3"):
        ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=3, vocab_size=10)
    with pytest.raises(ModelError, match="unknown model preset 'llama9'"):
        get_preset("llama9")
