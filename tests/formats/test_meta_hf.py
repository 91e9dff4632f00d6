"""Meta and HF checkpoint formats: round trips are bit-exact, transformers reads what herd writes."""

import dataclasses
import json
import shutil
import warnings

import pytest
import torch
from transformers import LlamaForCausalLM

from herd.errors import CheckpointError
from herd.formats import Checkpoint, load_model, read_checkpoint, write_checkpoint
from herd.formats.meta import split_dim
from herd.model import ModelArgs, RopeScaling, build_model, get_preset

# The "tiny" preset's shape, so that params.json survives a trip through HF (whose config only
# knows the FFN width) just as it does for Meta's own models.
ARGS = get_preset("tiny").replace(vocab_size=256, rope_scaling=RopeScaling(factor=8.0))


def _arch(args: ModelArgs) -> dict:
    """Fields that define the network (HF configs cannot carry multiple_of / ffn_dim_multiplier)."""
    return {k: v for k, v in dataclasses.asdict(args).items() if k not in ("multiple_of", "ffn_dim_multiplier")}


def _ckpt(args: ModelArgs = ARGS, dtype: torch.dtype = torch.bfloat16) -> Checkpoint:
    model = build_model(args, dtype=dtype)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    return Checkpoint(args=args, state_dict=sd, format="meta", path=None)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("num_shards", [1, 2])
def test_meta_hf_meta_round_trip_is_bit_exact(tmp_path, num_shards) -> None:
    src = _ckpt()
    write_checkpoint(tmp_path / "meta", src, "meta", num_shards=num_shards)
    write_checkpoint(tmp_path / "hf", read_checkpoint(tmp_path / "meta"), "hf")
    write_checkpoint(tmp_path / "meta2", read_checkpoint(tmp_path / "hf"), "meta", num_shards=num_shards)
    back = read_checkpoint(tmp_path / "meta2")
    assert back.args == src.args
    _assert_same(back.state_dict, src.state_dict)
    for i in range(num_shards):
        a = torch.load(tmp_path / "meta" / f"consolidated.{i:02d}.pth", weights_only=True)
        b = torch.load(tmp_path / "meta2" / f"consolidated.{i:02d}.pth", weights_only=True)
        _assert_same(a, b)
    assert (tmp_path / "meta" / "params.json").read_text() == (tmp_path / "meta2" / "params.json").read_text()


def test_hf_meta_hf_round_trip_is_bit_exact(tmp_path) -> None:
    # Written by transformers itself, sharded with an index, with an FFN width Meta's formula cannot derive.
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=64, intermediate_size=200, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=500000.0,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hf", max_shard_size="60KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    first = read_checkpoint(tmp_path / "hf")
    write_checkpoint(tmp_path / "meta", first, "meta")
    write_checkpoint(tmp_path / "hf2", read_checkpoint(tmp_path / "meta"), "hf", max_shard_bytes=60_000)
    second = read_checkpoint(tmp_path / "hf2")
    assert _arch(second.args) == _arch(first.args)
    _assert_same(second.state_dict, first.state_dict)
    from safetensors.torch import load_file

    def raw(d):
        return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}

    _assert_same(raw(tmp_path / "hf2"), raw(tmp_path / "hf"))
    # Token ids are the tokenizer's business (herd convert carries the tokenizer files across).
    write_checkpoint(tmp_path / "hf_direct", first, "hf")
    ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    configs = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("hf2", "hf_direct")]
    assert configs[0] == {k: v for k, v in configs[1].items() if k not in ids}


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_reads_herd_hf_output_with_same_logits(tmp_path, tied) -> None:
    ckpt = _ckpt(ARGS.replace(tie_embeddings=tied), dtype=torch.float32)
    write_checkpoint(tmp_path / "hf", ckpt, "hf", max_shard_bytes=100_000)
    ref = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = load_model(read_checkpoint(tmp_path / "hf")).eval()
    tokens = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        assert (ours(tokens) - ref(tokens).logits).abs().max() <= 1e-4


def test_meta_shards_split_like_fairscale(tmp_path) -> None:
    ckpt = _ckpt()
    write_checkpoint(tmp_path / "m", ckpt, "meta", num_shards=2)
    shard = torch.load(tmp_path / "m" / "consolidated.01.pth", weights_only=True)
    full = ckpt.state_dict
    assert shard["layers.0.attention.wo.weight"].shape == (64, 32)  # row-parallel: split inputs
    assert shard["layers.0.attention.wk.weight"].shape == (16, 64)  # column-parallel: one kv head per rank
    assert shard["tok_embeddings.weight"].shape == (128, 64)  # vocab-parallel embedding
    w2 = "layers.1.feed_forward.w2.weight"
    assert torch.equal(shard[w2], full[w2][:, 96:])  # second half of the 192 FFN inputs
    assert torch.equal(shard["norm.weight"], full["norm.weight"])
    assert split_dim("layers.3.ffn_norm.weight") is None
    params = json.loads((tmp_path / "m" / "params.json").read_text())
    assert params["use_scaled_rope"] is True and params["multiple_of"] == 32


def test_tied_meta_checkpoint_keeps_output_and_reads_back_tied(tmp_path) -> None:
    ckpt = _ckpt(ARGS.replace(tie_embeddings=True))
    write_checkpoint(tmp_path / "m", ckpt, "meta")
    shard = torch.load(tmp_path / "m" / "consolidated.00.pth", weights_only=True)
    assert "output.weight" in shard
    back = read_checkpoint(tmp_path / "m")
    assert back.args.tie_embeddings
    model = load_model(back)
    assert model.output.weight is model.tok_embeddings.weight


def test_llama32_params_without_factor_use_32(tmp_path) -> None:
    from herd.formats.meta import args_from_params

    params = dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim_multiplier=1.5,
                  multiple_of=256, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True)  # fmt: skip
    assert args_from_params(params, tmp_path).rope_scaling.factor == 32.0
    params |= dict(dim=4096, n_layers=32, ffn_dim_multiplier=1.3, multiple_of=1024)
    assert args_from_params(params, tmp_path).rope_scaling.factor == 8.0


# -- errors -----------------------------------------------------------------------------------


@pytest.fixture
def meta_dir(tmp_path):
    write_checkpoint(tmp_path / "m", _ckpt(), "meta", num_shards=2)
    return tmp_path / "m"


def test_truncated_shard_names_the_file(meta_dir) -> None:
    f = meta_dir / "consolidated.01.pth"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"consolidated\.01\.pth: cannot load"):
        read_checkpoint(meta_dir)


def test_missing_shard_is_named(meta_dir) -> None:
    shutil.copy(meta_dir / "consolidated.01.pth", meta_dir / "consolidated.02.pth")
    (meta_dir / "consolidated.01.pth").unlink()
    with pytest.raises(CheckpointError, match=r"missing consolidated\.01\.pth"):
        read_checkpoint(meta_dir)


def test_params_mismatch_names_tensor_and_both_shapes(meta_dir) -> None:
    p = meta_dir / "params.json"
    p.write_text(json.dumps(json.loads(p.read_text()) | {"vocab_size": 300}))
    expected = r"'tok_embeddings.weight' has shape \[256, 64\], the model expects \[300, 64\]"
    with pytest.raises(CheckpointError, match=expected):
        read_checkpoint(meta_dir)


@pytest.mark.parametrize(("field", "value"), [("ffn_dim_multiplier", "1e999"), ("rope_theta", "NaN"),
                                              ("norm_eps", "-Infinity"), ("rope_theta", "0")])  # fmt: skip
def test_a_non_finite_number_in_params_is_named(meta_dir, field, value) -> None:
    # Found by the long fuzz run: 1e999 parses as inf, and int(inf * width) raised OverflowError.
    p = meta_dir / "params.json"
    params = json.loads(p.read_text()) | {field: "@"}
    p.write_text(json.dumps(params).replace('"@"', value))
    with pytest.raises(CheckpointError, match=rf"params\.json: describes an invalid model .*{field} must be a finite"):
        read_checkpoint(meta_dir)


def test_an_odd_pickle_protocol_byte_draws_no_torch_warning(meta_dir) -> None:
    # torch warns about a pickle protocol it did not write; a corrupt shard must end in one line (or load), no more.
    f = meta_dir / "consolidated.00.pth"
    data = f.read_bytes()
    at = data.index(b"\x80\x02", data.index(b"data.pkl"))  # the pickle's PROTO opcode
    f.write_bytes(data[:at] + b"\x80\x07" + data[at + 2 :])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_checkpoint(meta_dir).args == ARGS  # only the PROTO byte changed: it still loads


def test_truncated_safetensors_names_the_file(tmp_path) -> None:
    write_checkpoint(tmp_path / "hf", _ckpt(), "hf")
    f = tmp_path / "hf" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read safetensors"):
        read_checkpoint(tmp_path / "hf")


def test_missing_config_field_is_named(tmp_path) -> None:
    write_checkpoint(tmp_path / "hf", _ckpt(), "hf")
    c = tmp_path / "hf" / "config.json"
    c.write_text(json.dumps({k: v for k, v in json.loads(c.read_text()).items() if k != "num_hidden_layers"}))
    with pytest.raises(CheckpointError, match="config field 'num_hidden_layers' is missing"):
        read_checkpoint(tmp_path / "hf")


def test_write_refuses_to_overwrite_and_leaves_no_partial_dir(tmp_path) -> None:
    write_checkpoint(tmp_path / "hf", _ckpt(), "hf")
    before = sorted(p.name for p in (tmp_path / "hf").iterdir())
    with pytest.raises(CheckpointError, match="destination exists"):
        write_checkpoint(tmp_path / "hf", _ckpt(), "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == before
    bad = _ckpt()
    bad.state_dict["norm.weight"] = torch.ones(3)
    with pytest.raises(CheckpointError, match=r"norm\.weight"):
        write_checkpoint(tmp_path / "new", bad, "meta")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_unknown_path_and_format(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        read_checkpoint(tmp_path / "empty")
