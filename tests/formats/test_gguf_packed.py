"""GGUF quantized matrices read straight into PackedWeight (read_gguf(keep_packed=True)), checked
against the gguf package's own dequantizers, on tiny files written here and on the embedded SmolLM2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch

from herd.errors import CheckpointError
from herd.formats.common import expected_shapes
from herd.formats.gguf import _to_packed, read_gguf
from herd.formats.load import resolve_model_path
from herd.formats.packed import PackedWeight
from herd.model import ModelArgs

Q = gguf.GGMLQuantizationType
# Every in_features is a multiple of 256, the super-block size of the K-quants.
ARGS = ModelArgs(dim=256, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=40, ffn_hidden_dim=256, max_seq_len=64)

# herd name -> GGUF name, written out independently of the reader's own table.
_GGUF_LAYER = {
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
    "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
    "attention_norm": "attn_norm", "ffn_norm": "ffn_norm",
}  # fmt: skip
_GGUF_TOP = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}

# (array to hand GGUFWriter, raw_dtype) for one (out, in) matrix
Encoder = Callable[[str, np.ndarray], tuple[np.ndarray, Q | None]]


def gguf_name(name: str) -> str:
    if name in _GGUF_TOP:
        return _GGUF_TOP[name]
    _, i, rest = name.split(".", 2)
    return f"blk.{i}.{_GGUF_LAYER[rest.removesuffix('.weight')]}.weight"


def write_model(path: Path, args: ModelArgs, encode: Encoder) -> Path:
    """A random Llama model; 1-D tensors are F32 as llama.cpp writes them, matrices go through `encode`."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(args.n_layers)
    w.add_context_length(args.max_seq_len)
    w.add_embedding_length(args.dim)
    w.add_feed_forward_length(args.ffn_hidden_dim)
    w.add_head_count(args.n_heads)
    w.add_head_count_kv(args.n_kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(args.vocab_size)
    for name, shape in expected_shapes(args, "test"):
        if name == "output.weight" and args.tie_embeddings:
            continue
        arr = rng.normal(0, 0.1, shape).astype(np.float32)
        if arr.ndim == 1:
            w.add_tensor(gguf_name(name), arr + 1)
        else:
            data, raw = encode(name, arr)
            w.add_tensor(gguf_name(name), data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantized(qtype: Q) -> Encoder:
    return lambda _, arr: (gguf.quants.quantize(arr, qtype), qtype)


def random_blocks(
    qtype: Q, fp16_at: dict[int, Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]]
) -> Encoder:
    """Random K-quant bytes (the gguf package cannot quantize K-quants) with the fp16 fields at the
    given byte offsets drawn by the given functions, so that every value is finite."""
    rng = np.random.default_rng(1)

    def encode(_: str, arr: np.ndarray) -> tuple[np.ndarray, Q]:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (arr.shape[0], arr.shape[1] // block, size), dtype=np.uint8)
        for off, draw in fp16_at.items():
            raw[..., off : off + 2] = draw(rng, raw.shape[:2]).astype(np.float16)[..., None].view(np.uint8)
        return raw.reshape(arr.shape[0], -1), qtype

    return encode


def uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(1e-3, 1e-1, shape)


def power_of_two(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return 2.0 ** rng.integers(-14, -4, shape)


def gguf_blocks(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def gguf_dequantized(t: gguf.ReaderTensor) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_q8_0_q4_0_q4_1_pack_and_dequantize_exactly(tmp_path: Path, qtype: Q) -> None:
    path = write_model(tmp_path / "m.gguf", ARGS, quantized(qtype))
    _, packed, _ = read_gguf(path, keep_packed=True)
    _, plain, _ = read_gguf(path)
    blocks = gguf_blocks(path)
    kind = "int8" if qtype == Q.Q8_0 else "int4"
    for name, want in plain.items():
        got = packed[name]
        if want.ndim == 1:
            assert isinstance(got, torch.Tensor) and torch.equal(got, want), name
            continue
        assert isinstance(got, PackedWeight) and got.kind == kind and got.shape == tuple(want.shape), name
        assert torch.equal(got.dequantize(), gguf_dequantized(blocks[gguf_name(name)])), name
        assert torch.equal(got.dequantize(), want), name


def test_q4_k_scales_are_float16_of_d_times_sc_and_values_within_their_rounding(tmp_path: Path) -> None:
    path = write_model(tmp_path / "k.gguf", ARGS, random_blocks(Q.Q4_K, {0: uniform, 2: uniform}))
    _, packed, _ = read_gguf(path, keep_packed=True)
    rounded = False
    for name, t in gguf_blocks(path).items():
        if len(t.shape) == 1:
            continue
        herd = {gguf_name(k): k for k, _ in expected_shapes(ARGS, "test")}[name]
        got = packed[herd]
        assert isinstance(got, PackedWeight) and got.kind == "int4", name
        # The scale / min of every 32-value sub-block, from the gguf package's own unpacking.
        raw = np.asarray(t.data).reshape(-1, 144)
        sc, m = gguf.quants.Q4_K.get_scale_min(raw[:, 4:16])
        d, dmin = raw[:, 0:2].view(np.float16).astype(np.float32), raw[:, 2:4].view(np.float16).astype(np.float32)
        scale32 = torch.from_numpy(d * sc.astype(np.float32)).view(got.shape[0], -1)
        min32 = torch.from_numpy(-dmin * m.astype(np.float32)).view(got.shape[0], -1)
        assert torch.equal(got.scales, scale32.half()) and torch.equal(got.mins, min32.half()), name
        # float16 rounding errs by at most 2^-11 of each (all are normal float16 here); q <= 15.
        want = gguf_dequantized(t)
        err = (got.dequantize() - want).abs().unflatten(-1, (-1, 32))
        bound = 2**-11 * (15 * scale32.abs() + min32.abs()) * 1.001
        assert (err <= bound[..., None]).all(), name
        rounded |= bool((err > 0).any())
    assert rounded  # random d * sc often needs more than float16's 11 bits: the bound is what is tested


def test_q4_k_with_short_d_and_dmin_is_exact(tmp_path: Path) -> None:
    # d * sc fits float16 when d and dmin are powers of two: then the nibble repacking alone decides.
    path = write_model(tmp_path / "k.gguf", ARGS, random_blocks(Q.Q4_K, {0: power_of_two, 2: power_of_two}))
    _, packed, _ = read_gguf(path, keep_packed=True)
    _, plain, _ = read_gguf(path)
    for name, want in plain.items():
        got = packed[name]
        if want.ndim == 2:
            assert isinstance(got, PackedWeight) and torch.equal(got.dequantize(), want), name


def test_other_types_stay_dequantized_in_dtype(tmp_path: Path) -> None:
    kinds = {"attention.wq": Q.Q6_K, "attention.wk": Q.F16, "attention.wv": Q.Q5_K, "attention.wo": Q.BF16}
    k_quants = {
        Q.Q6_K: random_blocks(Q.Q6_K, {208: uniform}),
        Q.Q5_K: random_blocks(Q.Q5_K, {0: uniform, 2: uniform}),
    }

    def encode(name: str, arr: np.ndarray) -> tuple[np.ndarray, Q | None]:
        kind = kinds.get(name.split(".", 2)[-1].removesuffix(".weight"), Q.Q8_0)
        if kind in k_quants:
            return k_quants[kind](name, arr)
        if kind == Q.F16:
            return arr.astype(np.float16), None
        return gguf.quants.quantize(arr, kind), kind

    path = write_model(tmp_path / "m.gguf", ARGS, encode)
    _, packed, _ = read_gguf(path, dtype=torch.bfloat16, keep_packed=True)
    _, plain, _ = read_gguf(path, dtype=torch.bfloat16)
    for name, want in plain.items():
        got = packed[name]
        if want.ndim == 2 and name.split(".", 2)[-1].removesuffix(".weight") not in kinds:
            assert isinstance(got, PackedWeight) and got.kind == "int8", name
            assert torch.equal(got.dequantize(torch.bfloat16), want), name
        else:
            assert isinstance(got, torch.Tensor) and got.dtype == torch.bfloat16 and torch.equal(got, want), name


def test_tied_embeddings_share_one_packed_weight(tmp_path: Path) -> None:
    args = ARGS.replace(tie_embeddings=True)
    _, sd, _ = read_gguf(write_model(tmp_path / "m.gguf", args, quantized(Q.Q4_1)), keep_packed=True)
    assert isinstance(sd["tok_embeddings.weight"], PackedWeight)
    assert sd["output.weight"] is sd["tok_embeddings.weight"]


def test_q4_k_scale_that_overflows_float16_raises(tmp_path: Path) -> None:
    big = random_blocks(Q.Q4_K, {0: lambda rng, shape: np.full(shape, 60000.0), 2: uniform})
    path = write_model(tmp_path / "k.gguf", ARGS, big)
    with pytest.raises(CheckpointError, match=r"k\.gguf: tensor '.*' of type Q4_K: block scales .* overflows float16"):
        read_gguf(path, keep_packed=True)


def test_byte_count_not_matching_the_shape_raises() -> None:
    # The reader sizes each tensor's data from its shape, so only a bad reader could get here.
    t = SimpleNamespace(
        name="blk.0.attn_q.weight", tensor_type=Q.Q8_0, shape=np.array([64, 2]), data=np.zeros((2, 67), np.uint8)
    )
    with pytest.raises(CheckpointError, match=r"m\.gguf: tensor 'blk\.0\.attn_q\.weight' of type Q8_0 .*\[2, 64\]"):
        _to_packed(t, Path("m.gguf"))


def test_embedded_smollm_reads_packed_and_equal_to_the_dequantized_read() -> None:
    path = resolve_model_path(None)
    _, packed, _ = read_gguf(path, keep_packed=True)
    _, plain, _ = read_gguf(path)
    assert packed.keys() == plain.keys()
    # SmolLM2-135M Q4_1: token_embd is Q8_0 (and tied), every other matrix Q4_1, norms F32.
    embedding = packed["tok_embeddings.weight"]
    assert isinstance(embedding, PackedWeight) and embedding.kind == "int8"
    assert packed["output.weight"] is embedding
    for name, want in plain.items():
        got = packed[name]
        if want.ndim == 1:
            assert isinstance(got, torch.Tensor) and torch.equal(got, want), name
        elif name not in ("tok_embeddings.weight", "output.weight"):
            assert isinstance(got, PackedWeight) and got.kind == "int4", name
    for name in ("tok_embeddings.weight", "layers.0.attention.wq.weight", "layers.29.feed_forward.w2.weight"):
        got = packed[name]
        assert isinstance(got, PackedWeight) and torch.equal(got.dequantize(), plain[name]), name
