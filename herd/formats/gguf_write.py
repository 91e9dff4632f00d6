"""GGUF export: any checkpoint herd reads -> one `.gguf` file that llama.cpp loads, tokenizer included.

The layout mirrors what herd's reader (herd/formats/gguf.py) accepts and what llama.cpp's
`convert_hf_to_gguf.py` writes for the Llama architecture:
- Tensor names from the reader's table; `attn_q` / `attn_k` stay in Meta's interleaved-pair RoPE
  layout, which is herd's, so no permutation. Tied models have no `output.weight`.
- F32, F16 or BF16 matrices; 1-D tensors (norms, rope_freqs) stay F32 as llama.cpp keeps them.
- Llama 3.1 RoPE scaling as the `rope_freqs.weight` divisors; see [Note: rope scaling keys].
- A byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`) from one of three sources: the
  source GGUF's own keys (copied), an HF tokenizer.json, or a tiktoken rank file (Meta's
  `tokenizer.model`, or one `herd tokenizer train` wrote); see [Note: merges from tiktoken ranks].

The file is written beside its destination under a temporary name and renamed once complete.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import torch

from herd.errors import CheckpointError
from herd.fileio import fsync_dir, storage_errors
from herd.formats import Checkpoint, read_checkpoint
from herd.formats.common import check_state_dict
from herd.formats.gguf import ROPE_FREQS, _gguf_name
from herd.formats.load import resolve_model_path, tokenizer_for
from herd.model import ModelArgs
from herd.model.llama import rope_frequencies
from herd.tokenizer import HFTokenizer, Llama3Tokenizer, Tokenizer, load_tokenizer
from herd.tokenizer.llama3 import load_ranks

T = gguf.GGMLQuantizationType
# dtype name -> (type of the matrices, general.file_type)
DTYPES = {
    "f32": (T.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (T.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (T.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}
# gguf.TokenType values (llama.cpp's llama_token_type) as plain ints.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# llama.cpp's names for the pre-tokenizers herd can build (herd/tokenizer/hf.py), in the order an HF
# tokenizer.json is matched against them. "default" is what a file without the key gets.
PRE_CANDIDATES = ("llama-bpe", "smollm", "gpt-2", "default")
# Text whose pieces differ under each of them: digit runs (split 1 / 3 / whole), upper-case
# contractions (Llama 3 only), whitespace and newline runs, punctuation, non-Latin scripts.
PROBE = (
    "Hello World! I'M sure they'll've paid 1234567 for 3.14159 naïve cafés; don't SHOUT.\n\n"
    "\tdef f(x):\r\n        return x**2  # 中文 日本語 한국어 Русский 🤖👍🏽 ...   \n  \n"
)

# Llama 3's dialog format (herd.tokenizer.chat_format.ChatFormat) for plain text messages. The header text
# llama.cpp looks for ("<|start_header_id|>") also makes it pick its built-in llama3 template.
LLAMA3_CHAT_TEMPLATE = (
    r"{{- bos_token }}{%- for message in messages %}"
    r"{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    r"{{- '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    r"{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    r"{%- endif %}"
)


def write_gguf(
    src: str | Path | Checkpoint,
    out: str | Path,
    *,
    dtype: str = "f32",
    tokenizer: Tokenizer | str | Path | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Write the model `src` (embedded model name, HF or Meta directory, .gguf file, or a Checkpoint) as the
    new GGUF file `out`, with matrices in `dtype` ("f32", "f16" or "bf16").

    The tokenizer is the checkpoint's own (as `herd run`/`herd chat` would load it) unless `tokenizer` names
    another (a Tokenizer, or a path `load_tokenizer` reads). Returns a summary: path, dtype, bytes, tensors,
    vocab size, pre-tokenizer name and the model args.
    """
    if dtype not in DTYPES:
        raise CheckpointError(f"GGUF dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise CheckpointError(f"{out}: a GGUF file name must end in .gguf")
    if out.exists():
        raise CheckpointError(f"{out}: destination exists; choose a new path")
    ckpt = src if isinstance(src, Checkpoint) else read_checkpoint(resolve_model_path(str(src)))
    check_state_dict(ckpt.args, ckpt.state_dict, ckpt.path)
    vocab = gguf_vocab(ckpt, tokenizer)
    if len(vocab.tokens) > ckpt.args.vocab_size:
        raise CheckpointError(
            f"{ckpt.path}: tokenizer has {len(vocab.tokens)} tokens but the model's vocab_size is "
            f"{ckpt.args.vocab_size}"
        )
    vocab.pad_to(ckpt.args.vocab_size)

    matrix_type, file_type = DTYPES[dtype]
    out.parent.mkdir(parents=True, exist_ok=True)
    # GGUFWriter opens its file by path, so the temporary name beside `out` is made here (fileio.atomic_file
    # hands out a file object instead).
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        with storage_errors(out):
            writer = gguf.GGUFWriter(tmp, "llama")
            _add_model_keys(writer, ckpt.args, name or _default_name(ckpt), file_type)
            _add_vocab_keys(writer, vocab)
            tensors = _add_tensors(writer, ckpt, matrix_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    return {
        "path": str(out),
        "dtype": dtype,
        "bytes": out.stat().st_size,
        "tensors": tensors,
        "vocab": len(vocab.tokens),
        "pre": vocab.pre,
        "args": ckpt.args,
    }


def _default_name(ckpt: Checkpoint) -> str:
    name = ckpt.metadata.get("general.name") if ckpt.format == "gguf" else None
    return str(name) if name else ckpt.path.stem


# ---------------------------------------------------------------------------------------------
# Model keys and tensors

# [Note: rope scaling keys]
# llama.cpp has no "llama3" scaling type: a missing `rope.scaling.type` means linear, so a
# `llama.rope.scaling.factor` key would divide every frequency by the factor on top of rope_freqs.
# Llama 3.1 scaling is carried by the rope_freqs tensor alone, as convert_hf_to_gguf.py does. herd's
# reader takes the factor from the largest divisor; low/high_freq_factor and original_context_length
# go into keys llama.cpp ignores (it uses the last for YaRN only), so the reader recovers the exact
# RopeScaling. The llama.cpp test in tests/formats/test_gguf_export.py runs a scaled export.


def _add_model_keys(w: gguf.GGUFWriter, args: ModelArgs, name: str, file_type: int) -> None:
    assert args.head_dim is not None and args.n_kv_heads is not None and args.ffn_hidden_dim is not None
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_context_length(args.max_seq_len)
    w.add_embedding_length(args.dim)
    w.add_block_count(args.n_layers)
    w.add_feed_forward_length(args.ffn_hidden_dim)
    w.add_head_count(args.n_heads)
    w.add_head_count_kv(args.n_kv_heads)
    w.add_rope_freq_base(args.rope_theta)
    w.add_layer_norm_rms_eps(args.norm_eps)
    w.add_vocab_size(args.vocab_size)
    w.add_rope_dimension_count(args.head_dim)
    if args.head_dim != args.dim // args.n_heads:
        w.add_key_length(args.head_dim)
        w.add_value_length(args.head_dim)
    if (s := args.rope_scaling) is not None:
        w.add_float32("llama.rope.scaling.low_freq_factor", s.low_freq_factor)
        w.add_float32("llama.rope.scaling.high_freq_factor", s.high_freq_factor)
        w.add_rope_scaling_orig_ctx_len(s.original_max_seq_len)
    w.add_file_type(file_type)


def _add_tensors(w: gguf.GGUFWriter, ckpt: Checkpoint, matrix_type: T) -> int:
    """Add every tensor (numpy arrays in herd's (out, in) shape: GGUFWriter lists dims innermost first)."""
    args = ckpt.args
    count = 0
    for herd_name, tensor in ckpt.state_dict.items():
        if herd_name == "output.weight" and args.tie_embeddings:
            continue  # llama.cpp uses token_embd when output is absent
        t = tensor.detach().to("cpu")
        kind = matrix_type if t.ndim == 2 else T.F32
        if kind == T.BF16:
            w.add_tensor(_gguf_name(herd_name), t.to(torch.bfloat16).view(torch.int16).numpy(), raw_dtype=T.BF16)
        else:
            w.add_tensor(_gguf_name(herd_name), t.to(torch.float16 if kind == T.F16 else torch.float32).numpy())
        count += 1
    if args.rope_scaling is not None:
        # llama.cpp rotates by base_freq / divisor: the divisors are herd's unscaled over scaled frequencies.
        base = rope_frequencies(args.replace(rope_scaling=None)).double()
        divisors = (base / rope_frequencies(args).double()).float().numpy()
        w.add_tensor(ROPE_FREQS, divisors)
        count += 1
    return count


# ---------------------------------------------------------------------------------------------
# Tokenizer


@dataclass
class GGUFVocab:
    """A byte-level BPE vocabulary as GGUF's `tokenizer.*` keys describe it."""

    tokens: list[str]
    """Token strings in id order, bytes shown through GPT-2's byte-to-unicode table."""
    types: list[int]
    """gguf.TokenType per token: NORMAL, CONTROL (special), USER_DEFINED (added, not special), UNUSED (padding)."""
    merges: list[str]
    """"left right" pairs, highest priority first."""
    pre: str
    """llama.cpp's name for the pre-tokenizer (tokenizer.ggml.pre)."""
    eos_id: int
    bos_id: int | None = None
    pad_id: int | None = None
    unk_id: int | None = None
    eot_id: int | None = None
    eom_id: int | None = None
    add_bos: bool = False
    chat_template: str | None = None

    def pad_to(self, size: int) -> None:
        """Fill ids up to the model's vocab_size with unused tokens, as llama.cpp's converter does."""
        for i in range(len(self.tokens), size):
            self.tokens.append(f"[PAD{i}]")
            self.types.append(UNUSED)

    def metadata(self) -> dict[str, Any]:
        """The keys as herd's GGUF reader returns them (to build the tokenizer without writing a file)."""
        meta: dict[str, Any] = {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": self.pre,
            "tokenizer.ggml.tokens": self.tokens,
            "tokenizer.ggml.token_type": self.types,
            "tokenizer.ggml.merges": self.merges,
            "tokenizer.ggml.add_bos_token": self.add_bos,
        }
        ids = {"bos": self.bos_id, "eos": self.eos_id, "padding": self.pad_id, "unknown": self.unk_id,
               "eot": self.eot_id, "eom": self.eom_id}  # fmt: skip
        meta |= {f"tokenizer.ggml.{k}_token_id": v for k, v in ids.items() if v is not None}
        if self.chat_template is not None:
            meta["tokenizer.chat_template"] = self.chat_template
        return meta


def _add_vocab_keys(w: gguf.GGUFWriter, vocab: GGUFVocab) -> None:
    if dup := _first_duplicate(vocab.tokens):
        raise CheckpointError(f"token {dup!r} appears twice in the vocabulary; llama.cpp needs unique tokens")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_eos_token_id(vocab.eos_id)
    for value, add in ((vocab.bos_id, w.add_bos_token_id), (vocab.pad_id, w.add_pad_token_id),
                       (vocab.unk_id, w.add_unk_token_id), (vocab.eot_id, w.add_eot_token_id),
                       (vocab.eom_id, w.add_eom_token_id)):  # fmt: skip
        if value is not None:
            add(value)
    w.add_add_bos_token(vocab.add_bos)
    if vocab.chat_template is not None:
        w.add_chat_template(vocab.chat_template)


def _first_duplicate(tokens: list[str]) -> str | None:
    seen: set[str] = set()
    for t in tokens:
        if t in seen:
            return t
        seen.add(t)
    return None


def gguf_vocab(ckpt: Checkpoint, tokenizer: Tokenizer | str | Path | None = None) -> GGUFVocab:
    """The GGUF vocabulary of `tokenizer`, by default the checkpoint's own (a GGUF source's keys are copied)."""
    if tokenizer is None and ckpt.format == "gguf":
        return _vocab_from_gguf(ckpt.metadata, ckpt.path)
    if tokenizer is None:
        tok = tokenizer_for(ckpt)
    else:
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    if isinstance(tok, Llama3Tokenizer):
        return vocab_from_tiktoken(tok)
    if isinstance(tok, HFTokenizer):
        return vocab_from_hf(tok)
    raise CheckpointError(f"{ckpt.path}: cannot write a {type(tok).__name__} into GGUF")


def _vocab_from_gguf(meta: dict[str, Any], path: Path) -> GGUFVocab:
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2" or "tokenizer.ggml.eos_token_id" not in meta:
        raise CheckpointError(f"{path}: tokenizer.ggml.model is {kind!r} (or no eos id); herd exports 'gpt2' only")

    def get(key: str) -> Any:
        return meta.get(f"tokenizer.ggml.{key}")

    return GGUFVocab(
        tokens=list(get("tokens")),
        types=list(get("token_type")),
        merges=list(get("merges") or []),
        pre=get("pre") or "default",
        eos_id=get("eos_token_id"),
        bos_id=get("bos_token_id"),
        pad_id=get("padding_token_id"),
        unk_id=get("unknown_token_id"),
        eot_id=get("eot_token_id"),
        eom_id=get("eom_token_id"),
        add_bos=bool(get("add_bos_token")),
        chat_template=meta.get("tokenizer.chat_template"),
    )


def _byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes for
    chr(256), chr(257)... in byte order, so that every token is a printable string without spaces."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)}
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


# [Note: merges from tiktoken ranks]
# tiktoken keeps no merge list: within a piece it repeatedly joins the adjacent pair whose
# concatenation has the lowest rank (leftmost on a tie), and a piece that is itself a token is taken
# whole. llama.cpp's BPE joins the adjacent pair with the lowest *merge* rank, and with the llama-bpe
# pre-tokenizer it also takes whole-piece tokens first (ignore_merges). The two agree when every split
# of every token into two tokens is a merge, ranked by the rank of the token it makes (then by the
# ranks of its parts): the pairs BPE may join are then exactly those tiktoken may join, in the same
# order. Keeping one split per token is not enough: tiktoken can reach a token through a split that
# training never made (herd/tokenizer/train.py, [Note: training merges vs tiktoken encoding]).


def vocab_from_tiktoken(tok: Llama3Tokenizer) -> GGUFVocab:
    """Tokens, reconstructed merges and the special tokens (CONTROL, after the base tokens) of a rank file."""
    ranks = load_ranks(tok.path)
    chars = _byte_chars()

    def text(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    tokens = [""] * len(ranks)
    splits: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        tokens[rank] = text(token)
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                splits.append((rank, ranks[left], ranks[right], left, right))
    splits.sort()
    specials = sorted(tok.special_tokens.items(), key=lambda item: item[1])
    assert [i for _, i in specials] == list(range(len(ranks), len(ranks) + len(specials)))
    special = tok.special_tokens
    vocab = GGUFVocab(
        tokens=tokens + [name for name, _ in specials],
        types=[NORMAL] * len(ranks) + [CONTROL] * len(specials),
        merges=[f"{text(left)} {text(right)}" for *_, left, right in splits],
        pre="llama-bpe",
        eos_id=tok.eos_id,
        bos_id=tok.bos_id,
        pad_id=tok.pad_id,
        eot_id=special.get("<|eot_id|>"),
        eom_id=special.get("<|eom_id|>"),
        add_bos=tok.add_bos,
        chat_template=LLAMA3_CHAT_TEMPLATE,
    )
    _check_same_ids(vocab, tok, str(tok.path))
    return vocab


def vocab_from_hf(tok: HFTokenizer) -> GGUFVocab:
    """Vocabulary and merges of a byte-level BPE tokenizer.json; the pre-tokenizer name is the first of
    PRE_CANDIDATES under which herd's GGUF tokenizer splits PROBE as `tok` does (llama.cpp's converter
    likewise recognises pre-tokenizers by what they do to a fixed text)."""
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(tmp)
        spec = json.loads((Path(tmp) / "tokenizer.json").read_text(encoding="utf-8"))
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise CheckpointError(
            f"{tok.source}: tokenizer is {model.get('type')} with a {decoder.get('type')} decoder; "
            "GGUF export needs a byte-level BPE"
        )
    by_id = {i: t for t, i in model["vocab"].items()}
    kinds = {i: NORMAL for i in by_id}
    for added in spec.get("added_tokens") or []:
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    size = max(by_id) + 1
    # Merges are "a b" strings in older tokenizer.json files, [a, b] lists in newer ones.
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    vocab = GGUFVocab(
        tokens=[by_id.get(i, f"[PAD{i}]") for i in range(size)],
        types=[kinds.get(i, UNUSED) for i in range(size)],
        merges=merges,
        pre="",
        eos_id=tok.eos_id,
        bos_id=tok.bos_id,
        pad_id=tok.pad_id,
        add_bos=tok.add_bos,
        chat_template=tok.chat_template,
    )
    want = tok.encode(PROBE)
    for pre in PRE_CANDIDATES:
        vocab.pre = pre
        if _gguf_tokenizer(vocab, tok.source).encode(PROBE) == want:
            return vocab
    raise CheckpointError(
        f"{tok.source}: the tokenizer's pre-tokenizer splits text like none of llama.cpp's "
        f"{', '.join(PRE_CANDIDATES)}; it cannot be written to GGUF"
    )


def _gguf_tokenizer(vocab: GGUFVocab, source: str) -> HFTokenizer:
    """The tokenizer herd (and llama.cpp) would build from the GGUF keys of `vocab`."""
    return HFTokenizer.from_gguf_metadata(vocab.metadata(), source)


def _check_same_ids(vocab: GGUFVocab, tok: Tokenizer, source: str) -> None:
    """Refuse to write a vocabulary that tokenizes PROBE differently from its source."""
    got, want = _gguf_tokenizer(vocab, source).encode(PROBE), tok.encode(PROBE)
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
        raise CheckpointError(
            f"{source}: its GGUF vocabulary tokenizes a test text differently from the tokenizer (token {at})"
        )
