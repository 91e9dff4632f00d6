"""Prompt-lookup speculative decoding vs plain decoding on the embedded SmolLM2-135M, greedy, batch 1.

Two prompts: one whose answer copies the prompt (rewriting a passage), where drafts from the context are
often right, and one whose answer does not (an open question). Both runs must give the same tokens (greedy
speculation is exact); the script checks that and records decode tokens/s, drafts accepted and tokens per
target forward. Plain and speculative runs alternate for --rounds rounds in one process.

    .venv/bin/python benchmarks/speculative.py --quant int4 --rounds 3
    .venv/bin/python benchmarks/speculative.py --quant none --rounds 3

No draft-model row: SmolLM2-135M is already the smallest model with its vocabulary that herd can load
without a download.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

from herd.formats.load import parse_dtype
from herd.inference import Engine, SamplingParams, SpeculativeConfig
from herd.inference.load import load_decoder

PASSAGE = (
    "The lighthouse stood at the end of a narrow spit of rock. Every evening the keeper climbed the one hundred "
    "and twelve steps, trimmed the wick, wound the clockwork that turned the lens, and wrote the weather in a "
    "leather book. In winter the spray froze on the windows; in summer the gulls nested on the gallery rail."
)
PROMPTS = {
    "copy": f"Rewrite this passage in the past perfect tense, changing nothing else:\n\n{PASSAGE}",
    "open": "What are three good habits for a software engineer? Explain each in two sentences.",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--quant", default="int4")
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--num-draft-tokens", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="default: results/speculative_<dtype>_<quant>.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out_path = Path(a.out or Path(__file__).parent / "results" / f"speculative_{a.dtype}_{a.quant}.json")

    loaded = load_decoder(None, dtype=parse_dtype(a.dtype), quant=a.quant)
    tok = loaded.tokenizer
    plain = Engine(loaded.model, tok)
    config = SpeculativeConfig(method="prompt_lookup", num_draft_tokens=a.num_draft_tokens)
    spec = Engine(loaded.model, tok, speculative=config)
    params = SamplingParams(max_new_tokens=a.new_tokens, stop_token_ids=[])
    results: dict[str, dict] = {}
    for name, text in PROMPTS.items():
        prompt = tok.encode_chat([{"role": "user", "content": text}])
        plain.generate([prompt], SamplingParams(max_new_tokens=4))  # warm-up
        runs: dict[str, list[float]] = {"plain": [], "prompt_lookup": []}
        tokens: dict[str, list[int]] = {}
        for _ in range(a.rounds):
            for label, engine in (("plain", plain), ("prompt_lookup", spec)):
                t = time.perf_counter()
                out = engine.generate([prompt], params)[0]
                runs[label].append(len(out.tokens) / (time.perf_counter() - t))
                tokens[label] = out.tokens
        if tokens["plain"] != tokens["prompt_lookup"]:
            raise SystemExit(f"{name}: speculative greedy output differs from plain greedy output")
        stats = spec.last_stats
        results[name] = {
            "prompt_tokens": len(prompt),
            "tokens_per_s": {k: statistics.median(v) for k, v in runs.items()},
            "speedup": statistics.median(runs["prompt_lookup"]) / statistics.median(runs["plain"]),
            "acceptance_rate": stats.acceptance_rate,
            "tokens_per_forward": stats.tokens_per_forward,
            "identical_tokens": True,
            "runs": runs,
        }
        print(f"{name}: {json.dumps({k: v for k, v in results[name].items() if k != 'runs'})}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    meta = {
        "date": datetime.date.today().isoformat(),
        "model": "SmolLM2-135M-Instruct (embedded Q4_1 GGUF)",
        "dtype": a.dtype,
        "quant": a.quant,
        "threads": a.threads,
        "new_tokens": a.new_tokens,
        "num_draft_tokens": a.num_draft_tokens,
        "rounds": a.rounds,
        "herd_commit": commit,
        "tokens_per_s": "generated tokens / wall time of the whole generate call (prefill included), median",
    }
    out_path.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
