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


def gguf_quant(root: Path) -> Case:
    """A GGUF whose matrices are Q8_0, Q4_0 and Q4_1 blocks (the gguf package's quantizers), loaded the way
    `--quant int4` loads it (blocks kept packed) and run for a few tokens, and read dequantized."""
    import gguf as gg
    from gguf import quants

    from herd.formats import gguf_write as gw
    from herd.inference.load import load_decoder

    ckpt = read_checkpoint(_meta(root))
    vocab = gw.gguf_vocab(ckpt, load_tokenizer(ckpt.path))
    vocab.pad_to(ckpt.args.vocab_size)
    path = root / "q.gguf"
    w = gg.GGUFWriter(path, "llama")
    gw._add_model_keys(w, ckpt.args, "fuzz", gg.LlamaFileType.MOSTLY_Q8_0)
    gw._add_vocab_keys(w, vocab)
    kinds = (gg.GGMLQuantizationType.Q8_0, gg.GGMLQuantizationType.Q4_0, gg.GGMLQuantizationType.Q4_1)
    for i, (name, t) in enumerate(ckpt.state_dict.items()):
        if t.ndim == 2:
            w.add_tensor(gw._gguf_name(name), quants.quantize(t.float().numpy(), kinds[i % 3]), raw_dtype=kinds[i % 3])
        else:
            w.add_tensor(gw._gguf_name(name), t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    def read() -> object:
        model = load_decoder(str(path), quant="int4").model
        return model(torch.tensor([[1, 2, 3]])).sum(), read_checkpoint(path)

    return Case([path], read)


def dcp(root: Path) -> Case:
    """A training checkpoint (DCP .metadata and .distcp, train state, params, RNG), read as a resume reads it and as
    `herd ckpt average` reads a step."""
    from herd.train.average import read_weights
    from herd.train.checkpoint import CheckpointManager, read_params

    torch.manual_seed(0)
    model = build_model(ARGS, init=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).float().square().mean().backward()
    optimizer.step()
    step = CheckpointManager(root / "checkpoints", keep_last=1).save(
        1, model=model, optimizer=optimizer, train_state={"tokens_seen": 3}, args=ARGS
    )

    def read() -> object:
        again = build_model(read_params(step), init=False)
        state = CheckpointManager(root / "checkpoints", keep_last=1).load(
            step, model=again, optimizer=torch.optim.AdamW(again.parameters(), lr=1e-3)
        )
        return state, read_weights(step)

    names = [".metadata", "__0_0.distcp", "train_state.json", "params.json", "rng-00000.pt"]
    return Case([step / n for n in names], read, names=(str(step),))


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
    "gguf_quant": gguf_quant,
    "dcp": dcp,
}
