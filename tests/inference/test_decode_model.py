"""The generation model (fused, quantized weights) against herd's Transformer, and quantized perplexity on
the embedded SmolLM2 as decoding computes it."""

import inspect
import json
import logging
import math

import pytest
import torch

from herd.errors import InferenceError
from herd.formats.packed import PackedWeight
from herd.inference import Engine, SamplingParams, kernels
from herd.inference.decode_model import DecodeModel
from herd.inference.load import load_decoder
from herd.inference.quantize import TiledWeight
from herd.model import ModelArgs, build_model
from herd.tokenizer import Llama3Tokenizer


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, max_seq_len=96, multiple_of=32)
    model = build_model(args).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6)  # sharper distributions, so greedy paths are well separated
    return model


def test_float32_logits_equal_the_transformer_for_prefill_and_cached_steps(tiny) -> None:
    fast = DecodeModel.from_transformer(tiny)
    tokens = torch.randint(0, 300, (2, 40))
    with torch.inference_mode():
        ref = tiny(tokens)
    assert torch.allclose(fast(tokens), ref, atol=1e-3)
    # The same tokens fed through the KV cache in steps of 1 and 3 (the small-T attention path).
    fast.setup_caches(2, 40)
    steps = [fast(tokens[:, :30], cache_pos=0)]
    for start in range(30, 40, 3):
        steps.append(fast(tokens[:, start : start + 3], cache_pos=start))
    fast.clear_caches()
    assert torch.allclose(torch.cat(steps, dim=1), ref, atol=1e-3)


def test_without_the_kernels_cached_single_token_steps_still_equal_the_transformer(tiny, monkeypatch) -> None:
    from herd.inference import kernels

    monkeypatch.setattr(kernels, "available", lambda: False)  # as where the C++ build fails
    fast = DecodeModel.from_transformer(tiny)
    tokens = torch.randint(0, 300, (1, 12))
    with torch.inference_mode():
        ref = tiny(tokens)
    fast.setup_caches(1, 12)
    steps = [fast(tokens[:, :8], cache_pos=0)] + [fast(tokens[:, i : i + 1], cache_pos=i) for i in range(8, 12)]
    assert torch.allclose(torch.cat(steps, dim=1), ref, atol=1e-3)


@pytest.mark.parametrize("with_kernels", [True, False])
@pytest.mark.parametrize("quant", ["none", "int8"])
def test_rows_at_their_own_positions_give_each_row_exactly_its_logits_alone(tiny, monkeypatch, with_kernels, quant):
    """A server's batch: prompts prefilled one at a time into their cache rows, then decode steps where each row
    is at its own position. Every row's logits equal running it alone, bit for bit with the kernels (their sums
    run in the same order at any batch size; torch's GEMM in the fallback does not promise that)."""
    from herd.inference import kernels

    if not with_kernels:
        monkeypatch.setattr(kernels, "available", lambda: False)
    fast = DecodeModel.from_transformer(tiny, quant=quant)
    prompts = [torch.randint(0, 300, (1, n)) for n in (9, 3, 20)]
    steps = torch.randint(0, 300, (3, 5))

    def alone(i: int) -> list[torch.Tensor]:
        fast.setup_caches(1, 32)
        out = [fast(prompts[i], cache_pos=0)[:, -1]]
        n = prompts[i].shape[1]
        out += [fast(steps[i : i + 1, s : s + 1], cache_pos=n + s)[:, -1] for s in range(5)]
        fast.clear_caches()
        return out

    fast.setup_caches(4, 32)  # one spare row: rows 0..2 in use
    batched = [[fast(p, cache_pos=0, cache_row=i)[:, -1]] for i, p in enumerate(prompts)]
    pos = torch.tensor([p.shape[1] for p in prompts])
    for s in range(5):
        logits = fast(steps[:, s : s + 1], cache_pos=pos + s)[:, -1]
        for i in range(3):
            batched[i].append(logits[i : i + 1])
    fast.clear_caches()
    same = torch.equal if with_kernels else lambda a, b: torch.allclose(a, b, atol=1e-4)
    for i in range(3):
        assert all(same(a, b) for a, b in zip(alone(i), batched[i], strict=True)), i


def test_float32_engine_output_is_token_identical_with_padding_and_batches(tiny) -> None:
    tok = Llama3Tokenizer()
    prompts = [[1, 5, 9, 200], [7] * 11, [3, 4], [250, 1, 2, 3, 4, 5, 6]]
    params = SamplingParams(max_new_tokens=20, stop_token_ids=[])
    ref = Engine(tiny, tok, max_batch_size=3).generate(prompts, params)
    fast = Engine(DecodeModel.from_transformer(tiny), tok, max_batch_size=3).generate(prompts, params)
    assert [c.tokens for c in fast] == [c.tokens for c in ref]


@pytest.mark.parametrize("quant,dtype,tol", [("none", torch.bfloat16, 0.01), ("int8", torch.float32, 0.03),
                                             ("int4", torch.float32, 0.12)])  # fmt: skip
def test_quantized_logits_stay_close_to_float32(quant, dtype, tol) -> None:
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, max_seq_len=96, multiple_of=32)
    model = build_model(args).eval()  # init scale: the relative error then reflects the weight rounding alone
    fast = DecodeModel.from_transformer(model, dtype=dtype, quant=quant)
    tokens = torch.randint(0, 300, (1, 24))
    with torch.inference_mode():
        ref = model(tokens)
    fast.setup_caches(1, 24)
    got = torch.cat([fast(tokens[:, i : i + 4], cache_pos=i) for i in range(0, 24, 4)], dim=1)
    assert ((got - ref).norm() / ref.norm()) < tol
    if quant != "none":
        assert isinstance(fast.layers[0].wqkv.packed, PackedWeight | TiledWeight)
        assert fast.layers[0].wqkv.packed.kind == quant
        assert fast.nbytes < DecodeModel.from_transformer(model).nbytes / (3 if quant == "int8" else 4)


def test_matrices_the_group_size_does_not_divide_stay_float_with_a_warning(caplog) -> None:
    args = ModelArgs(dim=48, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=64, ffn_hidden_dim=80, max_seq_len=32)
    model = build_model(args).eval()
    with caplog.at_level(logging.WARNING, logger="herd.inference.quantize"):
        fast = DecodeModel.from_transformer(model, quant="int4")
    assert "layers.0.attention.wq.weight: shape [48, 48] has 48 inputs, not a multiple of 32" in caplog.text
    assert "layers.0.feed_forward.w2.weight" in caplog.text
    assert fast.layers[0].wqkv.packed is None and fast.layers[0].wqkv.weight.dtype == torch.float32
    tokens = torch.randint(0, 64, (1, 8))
    with torch.inference_mode():
        assert torch.allclose(fast(tokens), model(tokens), atol=1e-4)  # nothing was quantized


def test_bad_quant_and_dtype_are_refused_by_name(tiny) -> None:
    with pytest.raises(InferenceError, match="unknown --quant 'int3'"):
        DecodeModel.from_transformer(tiny, quant="int3")
    with pytest.raises(InferenceError, match="float16 is not supported"):
        DecodeModel.from_transformer(tiny, dtype=torch.float16)


# ---------------------------------------------------------------------------------------------
# The embedded SmolLM2-135M: GGUF blocks straight into the kernels, and perplexity by precision


def _held_out_ids(tokenizer, n: int = 640) -> list[int]:
    """Prose unlike chat data: the standard library's own module docs, built at run time."""
    text = "\n\n".join(inspect.getdoc(m) or "" for m in (json, logging, inspect, math))
    ids = tokenizer.encode(text)
    assert len(ids) >= n
    return ids[:n]


def _decode_perplexity(model: DecodeModel, ids: list[int], step: int = 16) -> float:
    """Perplexity with the KV cache in steps of `step` tokens: the kernels and attention that decoding uses."""
    tokens = torch.tensor([ids])
    model.setup_caches(1, len(ids))
    logits = torch.cat([model(tokens[:, i : i + step], cache_pos=i) for i in range(0, len(ids), step)], dim=1)
    model.clear_caches()
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:])
    return math.exp(nll.item())


@pytest.fixture(scope="module")
def smol_perplexity():
    results = {}
    ids = None
    for dtype, quant in ((torch.float32, "none"), (torch.bfloat16, "none"), (torch.float32, "int8"),
                         (torch.float32, "int4")):  # fmt: skip
        loaded = load_decoder(None, dtype=dtype, quant=quant)
        ids = ids or _held_out_ids(loaded.tokenizer)
        results[(dtype, quant)] = (_decode_perplexity(loaded.model, ids), loaded.model)
    return results


def test_gguf_q4_blocks_load_packed_and_vocabulary_stays_int8(smol_perplexity) -> None:
    _, model = smol_perplexity[(torch.float32, "int4")]
    layer = model.layers[0]
    assert layer.wqkv.packed.kind == layer.w13.packed.kind == layer.w2.packed.kind == "int4"
    # The file's Q8_0 block, tiled for the kernels where they take tiles.
    assert isinstance(model.embedding, TiledWeight if kernels.tile_kernels() else PackedWeight)
    assert model.embedding.kind == "int8"
    assert model.output.packed is model.embedding  # tied: one copy


def test_quantized_perplexity_is_within_1_percent_for_int8_and_5_percent_for_int4(smol_perplexity) -> None:
    base, _ = smol_perplexity[(torch.float32, "none")]
    assert 1 < base < 100  # a real language model on English prose
    assert smol_perplexity[(torch.bfloat16, "none")][0] / base == pytest.approx(1, abs=0.01)
    assert smol_perplexity[(torch.float32, "int8")][0] / base == pytest.approx(1, abs=0.01)
    assert smol_perplexity[(torch.float32, "int4")][0] / base == pytest.approx(1, abs=0.05)
