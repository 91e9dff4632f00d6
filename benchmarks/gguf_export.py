"""GGUF export checked against llama.cpp: the greedy tokens of herd and llama.cpp on the file herd writes, at float32.

Two models, each written by `herd.formats.gguf_write.write_gguf` as an all-F32 GGUF:
- smollm2: the embedded SmolLM2-135M-Instruct (its package ships a Q4_1 GGUF; herd dequantizes it to float32 and
  exports that, about 540 MB). The tokenizer keys are the source file's (pre-tokenizer "smollm").
- tiny: a tiny Llama that herd trains here (dim 64, 2 layers, --train-steps steps) on a synthetic word-chain corpus,
  with a byte-level BPE that `herd.tokenizer.train` learns on the same corpus. It is exported from its training
  checkpoint through a Meta directory; its tokenizer is a tiktoken rank file, so the GGUF gets merges rebuilt from
  the ranks, pre-tokenizer "llama-bpe" and a Llama 3 chat template.

For every prompt (plain text and chat, encoded by herd's tokenizer read back from the exported file) both engines
decode --new-tokens tokens greedily from the same ids, with no stop tokens: herd through `load_decoder` + `Engine`
(float32), llama.cpp through llama-cpp-python's `Llama.eval` one token at a time with an argmax over the last
logits. The results record both token lists and a match flag per prompt, whether llama.cpp's own tokenization of
the prompt text gives herd's ids, the largest logit difference at the first step, and whether herd reads the
exported tensors back bit-identical to the source's.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/gguf_export.py
    .venv/bin/python benchmarks/gguf_export.py --models tiny --new-tokens 8

Needs llama-cpp-python (the bench-llamacpp extra). Writes benchmarks/results/gguf_export.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOLLM2_PROMPTS = [
    ("chat", "What is the capital of France? Answer in one sentence."),
    ("chat", "Write a haiku about a lighthouse keeper."),
    ("chat", "List three uses of a paperclip."),
    ("text", "The three primary colors are"),
]
# The tiny model's corpus: chains in which each word is followed by its successor most of the time, so that a
# model trained for a minute predicts the next word with confidence.
WORDS = (
    "amber", "birch", "cobalt", "dahlia", "ember", "fennel", "granite", "hazel", "indigo", "jasper", "kestrel",
    "lichen", "marigold", "nettle", "obsidian", "pumice", "quince", "rowan", "saffron", "thistle", "umbra",
    "verbena", "wren", "yew", "zinnia", "alder", "bramble", "cedar",
)  # fmt: skip
TINY_PROMPTS = [
    ("text", "amber birch"),
    ("text", "granite hazel indigo"),
    ("text", "wren yew zinnia alder"),
    ("chat", "cedar amber"),
]
TOKENIZER_VOCAB = 256 + 256 + 128  # bytes + merges + the 256 special tokens


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# the tiny model


def word_chains(n_docs: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    nxt = {w: WORDS[(i + 1) % len(WORDS)] for i, w in enumerate(WORDS)}
    docs = []
    for _ in range(n_docs):
        word, out = rng.choice(WORDS), []
        for _ in range(rng.randint(20, 200)):
            out.append(word)
            word = nxt[word] if rng.random() < 0.95 else rng.choice(WORDS)
        docs.append(" ".join(out) + ".")
    return docs


def train_tiny(work: Path, steps: int, seed: int) -> tuple[Path, dict]:
    """Train the tiny model; return its Meta export directory (tokenizer.model beside the weights) and a summary."""
    from herd.config import PackSection, load
    from herd.data.pack import pack
    from herd.tokenizer.train import save_ranks, train_bpe
    from herd.train.average import average_to
    from herd.train.trainer import Trainer

    docs = word_chains(600, seed)
    corpus = work / "corpus" / "docs.jsonl"
    corpus.parent.mkdir(parents=True)
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = work / "tok" / "tokenizer.model"
    save_ranks(train_bpe(docs, TOKENIZER_VOCAB), tokenizer)
    pack(PackSection(input=[str(corpus)], tokenizer=str(tokenizer), shard_tokens=50_000), work / "shards")
    run = work / "run"
    cfg = load("train", None, [
        f"job.dump_folder={json.dumps(str(run))}", f"job.seed={seed}",
        f"data.shards=[{json.dumps(str(work / 'shards'))}]",
        "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
        f"training.steps={steps}", "training.seq_len=128", "training.batch_tokens=2048",
        "optim.lr=0.01", "lr_schedule.warmup_steps=10", f"checkpoint.interval={steps}",
        "metrics.tensorboard=false", "metrics.log_interval=0",
    ])  # fmt: skip
    t = time.perf_counter()
    summary = Trainer(cfg).train()
    seconds = time.perf_counter() - t
    model_dir = work / "tiny-meta"
    average_to([run / "checkpoints" / f"step-{steps:08d}"], model_dir, to="meta")
    info = {"steps": steps, "seconds": round(seconds, 1), "final_loss_mean10": summary["final_loss_mean10"]}
    info |= {"documents": len(docs), "tokenizer_vocab": TOKENIZER_VOCAB}
    return model_dir, info


# ---------------------------------------------------------------------------------------------
# the comparison


def compare(source: str, exported: Path, prompts: list[tuple[str, str]], new_tokens: int, threads: int) -> dict:
    import llama_cpp
    import numpy as np
    import torch

    from herd.formats import read_checkpoint
    from herd.formats.gguf import read_gguf
    from herd.inference import Engine, SamplingParams
    from herd.inference.load import load_decoder

    _, got, _ = read_gguf(exported)
    want = read_checkpoint(source, dtype=torch.float32).state_dict
    tensors_equal = got.keys() == want.keys() and all(torch.equal(got[k], want[k].float()) for k in want)
    del got, want

    torch.set_num_threads(threads)
    loaded = load_decoder(str(exported), dtype=torch.float32)
    tok = loaded.tokenizer
    engine = Engine(loaded.model, tok, max_batch_size=1)
    llm = llama_cpp.Llama(str(exported), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    n_vocab = llm.n_vocab()

    def last_logits() -> np.ndarray:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).copy()

    rows = []
    try:
        for kind, prompt in prompts:
            if kind == "chat":
                messages = [{"role": "user", "content": prompt}]
                text = tok.render_chat(messages)  # type: ignore[attr-defined]  # a GGUF gives an HFTokenizer
                ids = tok.encode_chat(messages)
                llama_ids = llm.tokenize(text.encode(), add_bos=False, special=True)  # the template writes bos
            else:
                ids = tok.encode(prompt, bos=tok.add_bos)
                llama_ids = llm.tokenize(prompt.encode(), add_bos=tok.add_bos, special=False)
            herd_out = engine.generate([ids], SamplingParams(max_new_tokens=new_tokens, stop_token_ids=[]))[0].tokens
            with torch.inference_mode():
                herd_logits = loaded.model(torch.tensor([ids]))[0, -1].float().numpy()
            llm.reset()
            llm.eval(ids)
            logit_diff = float(np.abs(last_logits() - herd_logits).max())
            llama_out = [int(np.argmax(last_logits()))]
            while len(llama_out) < new_tokens:
                llm.eval([llama_out[-1]])
                llama_out.append(int(np.argmax(last_logits())))
            first_diff = next((i for i, (a, b) in enumerate(zip(herd_out, llama_out, strict=True)) if a != b), None)
            rows.append({
                "kind": kind, "prompt": prompt, "prompt_tokens": len(ids),
                "llama_cpp_tokenization_matches": llama_ids == ids,
                "herd": list(herd_out), "llama_cpp": llama_out, "match": list(herd_out) == llama_out,
                "first_difference": first_diff, "herd_text": tok.decode(herd_out),
                "first_step_max_abs_logit_diff": logit_diff,
                "first_step_logit_range": float(herd_logits.max() - herd_logits.min()),
            })  # fmt: skip
            log(f"  {kind} {prompt[:40]!r}: match={rows[-1]['match']} text={rows[-1]['herd_text'][:60]!r}")
    finally:
        llm.close()
    return {"tensors_equal_source": tensors_equal, "prompts": rows}


def _meta() -> dict:
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root, check=False).stdout.strip()

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "versions": {p: version(p) for p in ("torch", "gguf", "llama_cpp_python", "tokenizers")},
        "herd_commit": git("rev-parse", "HEAD"),
        "herd_dirty": bool(git("status", "--porcelain", "--", "herd")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["smollm2", "tiny"], choices=["smollm2", "tiny"])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=Path, default=None, help="keep the exported files in this directory")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gguf_export.json")
    a = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from herd.formats import resolve_model_path
    from herd.formats.gguf_write import write_gguf

    models: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="herd-gguf-export-") as tmp:
        files = a.keep or Path(tmp)
        files.mkdir(parents=True, exist_ok=True)
        for name in a.models:
            log(f"{name}:")
            training = None
            if name == "smollm2":
                source, prompts = str(resolve_model_path("smollm2-135m-instruct")), SMOLLM2_PROMPTS
            else:
                model_dir, training = train_tiny(Path(tmp) / "tiny", a.train_steps, a.seed)
                source, prompts = str(model_dir), TINY_PROMPTS
                log(f"  trained in {training['seconds']} s, final loss {training['final_loss_mean10']:.3f}")
            out = files / f"{name}.f32.gguf"
            out.unlink(missing_ok=True)
            t = time.perf_counter()
            summary = write_gguf(source, out, dtype="f32")
            export = {k: v for k, v in summary.items() if k not in ("path", "args")}
            export |= {"seconds": round(time.perf_counter() - t, 2), "file": out.name}
            log(f"  exported {out.name}: {summary['bytes'] / 2**20:.0f} MiB in {export['seconds']} s")
            result = {"source": Path(source).name, "export": export, "args": str(summary["args"])}
            if training is not None:
                result["training"] = training
            models[name] = result | compare(source, out, prompts, a.new_tokens, a.threads)

    all_match = all(r["match"] and r["llama_cpp_tokenization_matches"] for m in models.values() for r in m["prompts"])
    result = {
        "meta": _meta(),
        "settings": {
            "dtype": "f32",
            "new_tokens": a.new_tokens,
            "threads": a.threads,
            "greedy": "argmax, no stop tokens; herd Engine (float32) vs llama.cpp Llama.eval + argmax",
            "seed": a.seed,
        },
        "models": models,
        "all_match": all_match,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    log(f"all prompts match: {all_match} -> {a.out}")


if __name__ == "__main__":
    main()
