"""Valid seed files for each reader herd has, and the call that reads them the way a user's command would.

`CASES[name](root)` writes a reader's seed files under `root` and returns a Case: the files to corrupt and the read.
Every seed is written by herd itself, tiny, so a read takes milliseconds."""

from __future__ import annotations

import contextlib
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from herd.formats import Checkpoint, read_checkpoint, write_checkpoint
from herd.formats.gguf_write import write_gguf
from herd.model import ModelArgs, build_model
from herd.tokenizer import load_tokenizer
from herd.tokenizer.train import save_ranks, train_bpe

VOCAB = 640  # 256 byte tokens, 128 merges, 256 special tokens (herd's BPE reserves Llama 3's 256)
ARGS = ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, ffn_hidden_dim=64, max_seq_len=64)
DIALOG = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}]


@dataclass
class Case:
    targets: list[Path]
    read: Callable[[], object]
    names: tuple[str, ...] = ()


def _ranks() -> dict[bytes, int]:
    rng = random.Random(0)
    words = ("the", "model", "token", "layer", "data", "loss", "and", "of")
    return train_bpe([" ".join(rng.choices(words, k=12)) for _ in range(200)], VOCAB)


def _meta(root: Path) -> Path:
    torch.manual_seed(0)
    sd = {k: v.detach().clone() for k, v in build_model(ARGS, init=True).state_dict().items()}
    out = root / "meta"
    ranks = _ranks()
    write_checkpoint(
        out, Checkpoint(ARGS, sd, "meta", out), "meta", assets=lambda t: save_ranks(ranks, t / "tokenizer.model")
    )
    return out


def _read_model(path: Path) -> Callable[[], object]:
    def read() -> object:
        ckpt = read_checkpoint(path)
        return load_tokenizer(path), ckpt

    return read


def shard(root: Path) -> Case:
    from herd.data.shards import Shard, write_shard

    path = root / "s.bin"
    write_shard(path, [[1, 2, 3], [], list(range(40)), [7] * 9], vocab_size=VOCAB)

    def read() -> object:
        s = Shard(path)
        return [s.document(i).sum() for i in range(len(s))]

    return Case([path], read)


def meta(root: Path) -> Case:
    out = _meta(root)
    return Case([out / "params.json", out / "consolidated.00.pth", out / "tokenizer.model"], _read_model(out))


def hf(root: Path) -> Case:
    src = read_checkpoint(_meta(root))
    out = root / "hf"
    write_checkpoint(out, src, "hf", assets=lambda t: save_ranks(_ranks(), t / "tokenizer.model"))
    return Case([out / "config.json", out / "model.safetensors"], _read_model(out))


def gguf(root: Path) -> Case:
    path = root / "m.gguf"
    write_gguf(_meta(root), path)
    return Case([path], _read_model(path))


def hf_tokenizer(root: Path) -> Case:
    """tokenizer.json + tokenizer_config.json (with its jinja chat template), as `herd chat` uses them."""
    from herd.tokenizer import HFTokenizer

    write_gguf(_meta(root), root / "m.gguf")
    out = root / "tok"
    HFTokenizer.from_gguf(root / "m.gguf").save(out)

    def read() -> object:
        tok = load_tokenizer(out)
        return tok.encode_chat(DIALOG), tok.decode(tok.encode("the model's loss"))

    return Case([out / "tokenizer.json", out / "tokenizer_config.json"], read)


def jsonl(root: Path) -> Case:
    from herd.posttrain.data import read_jsonl

    sft, pref, prompts = root / "sft.jsonl", root / "pref.jsonl", root / "prompts.jsonl"
    sft.write_text("".join(json.dumps({"messages": DIALOG}) + "\n" for _ in range(4)))
    pref.write_text(json.dumps({"messages": DIALOG[:1], "chosen": "4.", "rejected": "5."}) + "\n")
    prompts.write_text(json.dumps({"messages": DIALOG[:1]}) + "\n")

    def read() -> object:
        return [read_jsonl(p, kind=k, on_error=e) for p, k in ((sft, "sft"), (pref, "preference"), (prompts, "prompt"))
                for e in ("skip", "stop")]  # fmt: skip

    return Case([sft, pref, prompts], read)


def config(root: Path) -> Case:
    from herd.config import load

    path = root / "train.toml"
    path.write_text((Path(__file__).parents[2] / "configs" / "pretrain" / "tiny.toml").read_text())
    return Case([path], lambda: load("train", str(path), checked=False))


def manifest(root: Path) -> Case:
    from herd.config import PackSection
    from herd.data.loader import MixLoader
    from herd.data.pack import pack

    docs = root / "docs.jsonl"
    records = [{"text": f"document {i} on llamas", "source": "ab"[i % 2]} for i in range(20)]
    docs.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = root / "packed"
    pack(PackSection(input=[str(docs)], shard_tokens=40), out)

    def read() -> object:
        loader = MixLoader([str(out)], seed=0, chunk_tokens=33)
        return [loader.next_batch(2, 16) for _ in range(4)]

    return Case([out / "manifest.json", out / "a" / "shard-00000.bin"], read, names=(str(out),))


def dialog(root: Path) -> Case:
    """`herd tokenize --dialog F --complete`: the dialog file through the CLI, in Llama 3's format (tool calls too)."""
    from herd.cli import main
    from herd.errors import HerdError

    save_ranks(_ranks(), root / "tokenizer.model")  # a small tiktoken vocabulary with Llama 3's special tokens: fast
    path = root / "d.json"
    call = {"name": "brave_search", "arguments": {"query": "gold"}}
    turns = [*DIALOG, {"role": "user", "content": "Gold?"}, {"role": "assistant", "tool_calls": [call]},
             {"role": "tool", "content": "2650"}, {"role": "assistant", "content": "About 2650."}]  # fmt: skip
    path.write_text(json.dumps(turns))

    def read() -> object:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(["tokenize", "--tokenizer", str(root / "tokenizer.model"), "--dialog", str(path), "--complete"])
        if code:  # the CLI printed its error: hand the line to the harness's checks
            raise HerdError(err.getvalue().strip().removeprefix("herd: error: "))
        return code

    return Case([path], read)


CASES: dict[str, Callable[[Path], Case]] = {
    "shard": shard,
    "meta": meta,
    "hf": hf,
    "gguf": gguf,
    "hf_tokenizer": hf_tokenizer,
    "jsonl": jsonl,
    "config": config,
    "manifest": manifest,
    "dialog": dialog,
}
