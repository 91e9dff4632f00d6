"""GGUF export: herd's reader gets the same model back, tokenizers round-trip, llama.cpp runs the file as herd does."""

from __future__ import annotations

import random
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from herd.cli import main
from herd.errors import CheckpointError
from herd.formats import Checkpoint, resolve_model_path, write_checkpoint
from herd.formats.gguf import read_gguf
from herd.formats.gguf_write import LLAMA3_CHAT_TEMPLATE, vocab_from_tiktoken, write_gguf
from herd.ggufio import open_gguf, read_gguf_metadata
from herd.model import ModelArgs, RopeScaling, build_model
from herd.tokenizer import HFTokenizer, Llama3Tokenizer, load_tokenizer
from herd.tokenizer.train import save_ranks, train_bpe

Q = gguf.GGMLQuantizationType
TOKENIZER_VOCAB = 640  # 384 BPE tokens + 256 special tokens
# The model's vocabulary is 8 ids wider than the tokenizer's, so the export pads. GGUF stores norm_eps as float32.
ARGS = ModelArgs(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=TOKENIZER_VOCAB + 8, ffn_hidden_dim=96,
    norm_eps=float(np.float32(1e-5)), rope_theta=500000.0, max_seq_len=256,
)  # fmt: skip

WORDS = ("the", "of", "and", "to", "in", "is", "that", "for", "it", "model", "token", "layer", "weight", "data", "loss")
TEXTS = [
    "Hello World! I'M sure they'll've paid 1234567 for 3.14159; don't SHOUT.",
    "naïve café, Größe, съешь ещё, 中文 日本語, 🤖👍🏽 and e\u0301 a\u200bb",
    "def f(x):\r\n    return {'k': [1, 22, 333]}  # a comment\n\n\n   \t trailing   ",
    "the model token layer weight data loss 42 the of and",
]
DIALOG = [
    {"role": "system", "content": "Answer in one line."},
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "It is 42."},
    {"role": "user", "content": "And the model's loss?"},
]


def corpus() -> list[str]:
    rng = random.Random(0)
    sentences = [" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) + f" {rng.randint(0, 99999)}." for _ in range(300)]
    return sentences + TEXTS * 3


def random_unicode(rng: random.Random, n: int) -> str:
    return "".join(chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                   for _ in range(n))  # fmt: skip


@pytest.fixture(scope="module")
def ranks() -> dict[bytes, int]:
    ranks = train_bpe(corpus(), TOKENIZER_VOCAB)
    assert len(ranks) + 256 == TOKENIZER_VOCAB
    return ranks


def random_state_dict(args: ModelArgs, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Random weights; a large `std` spreads the logits far beyond float32 rounding, so greedy argmaxes are stable."""
    torch.manual_seed(0)
    model = build_model(args, init=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)  # not all ones, so a swapped norm shows
            else:
                p.normal_(0, std)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def meta_dir(path: Path, args: ModelArgs, ranks: dict[bytes, int], std: float = 0.02) -> Path:
    """A Meta checkpoint directory with a herd-trained tokenizer.model beside the weights."""
    sd = random_state_dict(args, std)
    ckpt = Checkpoint(args=args, state_dict=sd, format="meta", path=path)
    write_checkpoint(path, ckpt, "meta", assets=lambda tmp: save_ranks(ranks, tmp / "tokenizer.model"))
    return path


def logits(args: ModelArgs, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    model = build_model(args, init=False)
    model.load_state_dict(sd)
    model.tie_weights()
    with torch.no_grad():
        return model(torch.arange(24).reshape(2, 12) * 7 % args.vocab_size)


def tensor_types(path: Path) -> dict[str, Q]:
    return {t.name: t.tensor_type for t in open_gguf(path).tensors}


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_f32_export_reads_back_with_same_args_tensors_and_logits(tmp_path: Path, ranks, tie: bool) -> None:
    args = ARGS.replace(tie_embeddings=tie)
    src = meta_dir(tmp_path / "meta", args, ranks)
    summary = write_gguf(src, tmp_path / "m.gguf")
    assert summary["dtype"] == "f32" and summary["vocab"] == args.vocab_size and summary["pre"] == "llama-bpe"
    got_args, got, meta = read_gguf(tmp_path / "m.gguf")
    assert got_args == args
    sd = random_state_dict(args)
    assert got.keys() == sd.keys()
    for name, t in sd.items():
        assert torch.equal(got[name], t), name
    assert ("output.weight" in tensor_types(tmp_path / "m.gguf")) is not tie  # llama.cpp reuses token_embd
    assert set(tensor_types(tmp_path / "m.gguf").values()) == {Q.F32}
    assert torch.equal(logits(got_args, got), logits(args, sd))
    assert meta["general.file_type"] == int(gguf.LlamaFileType.ALL_F32) and meta["general.name"] == "meta"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_llama31_rope_scaling_round_trips_through_rope_freqs(tmp_path: Path, ranks) -> None:
    scaling = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=64)
    args = ARGS.replace(rope_scaling=scaling)
    sd = random_state_dict(args)
    save_ranks(ranks, tmp_path / "tokenizer.model")
    ckpt = Checkpoint(args=args, state_dict=sd, format="meta", path=tmp_path)
    write_gguf(ckpt, tmp_path / "m.gguf", tokenizer=tmp_path / "tokenizer.model", name="scaled")
    got_args, got, meta = read_gguf(tmp_path / "m.gguf")
    assert got_args == args
    # A scaling factor key would make llama.cpp scale linearly on top of rope_freqs.
    assert "llama.rope.scaling.factor" not in meta and "rope_freqs.weight" in tensor_types(tmp_path / "m.gguf")
    assert torch.equal(logits(got_args, got), logits(args, sd))


@pytest.mark.parametrize(
    ("dtype", "kind", "rounded"), [("f16", Q.F16, torch.float16), ("bf16", Q.BF16, torch.bfloat16)]
)
def test_half_exports_round_matrices_and_keep_norms_f32(tmp_path: Path, ranks, dtype, kind, rounded) -> None:
    src = meta_dir(tmp_path / "meta", ARGS, ranks)
    write_gguf(src, tmp_path / "m.gguf", dtype=dtype)
    types = tensor_types(tmp_path / "m.gguf")
    assert {n for n, k in types.items() if k == Q.F32} == {n for n in types if n.endswith("norm.weight")}
    assert {k for n, k in types.items() if not n.endswith("norm.weight")} == {kind}
    _, got, _ = read_gguf(tmp_path / "m.gguf")
    for name, t in random_state_dict(ARGS).items():
        assert torch.equal(got[name], t if t.ndim == 1 else t.to(rounded).float()), name


def test_tiktoken_tokenizer_round_trips_texts_specials_and_chat(tmp_path: Path, ranks) -> None:
    write_gguf(meta_dir(tmp_path / "meta", ARGS, ranks), tmp_path / "m.gguf")
    source = Llama3Tokenizer(tmp_path / "meta" / "tokenizer.model")
    exported = load_tokenizer(tmp_path / "m.gguf")
    rng = random.Random(1)
    for text in [*TEXTS, *corpus()[:50], *(random_unicode(rng, 80) for _ in range(50))]:
        assert exported.encode(text) == source.encode(text), text
    special = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|reserved_special_token_7|>"
    assert exported.encode(special, allow_special=True) == source.encode(special, allow_special=True)
    assert exported.encode(special) == source.encode(special)  # specials typed as text stay text
    assert exported.encode_chat(DIALOG) == source.encode_chat(DIALOG)
    assert exported.encode_chat(DIALOG[:3], add_generation_prompt=False) == source.encode_chat(
        DIALOG[:3], add_generation_prompt=False
    )
    for attr in ("bos_id", "eos_id", "pad_id", "stop_ids", "add_bos"):
        assert getattr(exported, attr) == getattr(source, attr), attr
    meta = read_gguf_metadata(tmp_path / "m.gguf")
    assert meta["tokenizer.chat_template"] == LLAMA3_CHAT_TEMPLATE
    assert meta["tokenizer.ggml.token_type"][-8:] == [int(gguf.TokenType.UNUSED)] * 8  # padding to vocab_size
    assert meta["tokenizer.ggml.token_type"][len(ranks) : TOKENIZER_VOCAB] == [int(gguf.TokenType.CONTROL)] * 256


def test_meta_llama3_tokenizer_gets_every_split_as_a_merge() -> None:
    source = Llama3Tokenizer()
    vocab = vocab_from_tiktoken(source)  # refuses a vocabulary that tokenizes its probe text differently
    # Meta's published Llama 3 tokenizer.json lists the same number of merges.
    assert len(vocab.tokens) == 128256 and len(vocab.merges) == 280147
    assert vocab.tokens[128000] == "<|begin_of_text|>" and vocab.tokens[220] == "\u0120"  # byte 0x20, a space


def test_hf_tokenizer_json_exports_the_smollm2_vocabulary(tmp_path: Path, tiny_chat_model: str) -> None:
    write_gguf(tiny_chat_model, tmp_path / "m.gguf")
    got, original = read_gguf_metadata(tmp_path / "m.gguf"), read_gguf_metadata(resolve_model_path(None))
    for key in ("pre", "tokens", "token_type", "merges", "bos_token_id", "eos_token_id", "padding_token_id"):
        assert got[f"tokenizer.ggml.{key}"] == original[f"tokenizer.ggml.{key}"], key
    assert got["tokenizer.chat_template"] == original["tokenizer.chat_template"]
    source, exported = HFTokenizer.from_dir(tiny_chat_model), load_tokenizer(tmp_path / "m.gguf")
    for text in TEXTS:
        assert exported.encode(text) == source.encode(text)
    assert exported.encode_chat(DIALOG) == source.encode_chat(DIALOG)


def test_gguf_source_keeps_its_tokenizer_keys_and_tensors(tmp_path: Path, ranks) -> None:
    write_gguf(meta_dir(tmp_path / "meta", ARGS, ranks), tmp_path / "m.gguf")
    write_gguf(tmp_path / "m.gguf", tmp_path / "again.gguf")
    (first_args, first, meta), (second_args, second, again) = (
        read_gguf(tmp_path / "m.gguf"),
        read_gguf(tmp_path / "again.gguf"),
    )
    assert first_args == second_args and all(torch.equal(first[k], second[k]) for k in first)
    tokenizer_keys = {k for k in meta if k.startswith("tokenizer.")}
    assert {k for k in again if k.startswith("tokenizer.")} == tokenizer_keys
    assert all(again[k] == meta[k] for k in tokenizer_keys)


def test_cli_convert_to_gguf_and_its_errors(tmp_path: Path, ranks, capsys) -> None:
    src = meta_dir(tmp_path / "meta", ARGS, ranks)
    out = tmp_path / "out" / "m.gguf"
    assert main(["convert", str(src), str(out), "--to", "gguf", "--dtype", "bf16"]) == 0
    assert f"-> {out} (gguf)" in capsys.readouterr().out
    assert set(tensor_types(out).values()) == {Q.BF16, Q.F32}
    assert main(["convert", str(src), str(out), "--to", "gguf"]) == 1
    assert f"{out}: destination exists" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"m\.bin: a GGUF file name must end in \.gguf"):
        write_gguf(src, tmp_path / "m.bin")
    with pytest.raises(CheckpointError, match="GGUF dtype 'q4' is not supported"):
        write_gguf(src, tmp_path / "m.gguf", dtype="q4")


@pytest.mark.parametrize("scaling", [None, RopeScaling(original_max_seq_len=64)], ids=["rope", "rope_scaled"])
def test_llama_cpp_runs_the_export_with_herds_tokens_and_greedy_output(
    tmp_path: Path, ranks, scaling: RopeScaling | None
) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from herd.formats.load import load_pretrained

    args = ARGS.replace(tie_embeddings=True, rope_scaling=scaling)
    save_ranks(ranks, tmp_path / "tokenizer.model")
    ckpt = Checkpoint(args=args, state_dict=random_state_dict(args, std=0.5), format="meta", path=tmp_path)
    write_gguf(ckpt, tmp_path / "m.gguf", tokenizer=tmp_path / "tokenizer.model")
    herd = load_pretrained(str(tmp_path / "m.gguf"))
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=256, n_threads=2, n_batch=256, verbose=False)
    n_vocab = llm.n_vocab()

    def llama_argmax() -> int:  # over the logits of the last evaluated token
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))

    try:
        chat = herd.tokenizer.render_chat(DIALOG)  # type: ignore[attr-defined]  # a GGUF gives an HFTokenizer
        # The chat template writes bos itself, which llama.cpp reads as the control token.
        prompts = [
            (TEXTS[0], True, herd.tokenizer.encode(TEXTS[0], bos=True)),
            (chat, False, herd.tokenizer.encode_chat(DIALOG)),
        ]
        for text, add_bos, ids in prompts:
            assert llm.tokenize(text.encode(), add_bos=add_bos, special=True) == ids
            want, got = list(ids), list(ids)
            llm.reset()
            llm.eval(ids)
            for _ in range(16):
                with torch.no_grad():
                    want.append(int(herd.model(torch.tensor([want]))[0, -1].argmax()))
                got.append(llama_argmax())
                llm.eval([got[-1]])
            assert got == want
    finally:
        llm.close()
