"""What the starting model knows, by fact family: the knowledge probe of `herd synth` (a greedy answer and 3 samples
at temperature 0.7 per closed-book question; "known" when the greedy answer and at least half the samples are
correct, "unknown" when none is) run on every family, both splits. The round can only learn "answer what you know"
from families where the probe finds knowledge.

    .venv/bin/python benchmarks/probe_facts.py                      # the embedded SmolLM2-135M-Instruct, ~3 minutes
    .venv/bin/python benchmarks/probe_facts.py --model runs/round/dpo/model --per-family 20

Writes benchmarks/results/probe_facts.json: per family and split, the greedy answers that are right, the label
counts and three probed examples.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import torch

    from herd.formats import load_pretrained
    from herd.inference import Engine
    from herd.posttrain.synth.facts import ALL_FAMILIES, count_questions, fact_items, probe
    from herd.train.metrics import native_bf16

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--per-family", type=int, default=12, help="closed-book questions per family and split")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "probe_facts.json"))
    a = p.parse_args()
    torch.set_num_threads(2)
    dtype = torch.bfloat16 if native_bf16(torch.device("cpu")) else torch.float32
    loaded = load_pretrained(a.model, dtype=dtype)
    engine = Engine(loaded.model, loaded.tokenizer, max_batch_size=32)
    families: dict[str, dict] = {}
    t0 = time.perf_counter()
    for family in ALL_FAMILIES:
        families[family] = {}
        for split in ("train", "eval"):
            n = min(a.per_family, count_questions(family, split))  # months: 12 facts in all
            items = fact_items(random.Random(a.seed), n, split=split, fictitious=0.0, families=[family])
            probed = probe(engine, items, samples=a.samples, seed=a.seed)
            labels = collections.Counter(q["label"] for q in probed)
            families[family][split] = {
                "questions": len(probed), **{k: labels.get(k, 0) for k in ("known", "mixed", "unknown")},
                "greedy_correct": sum(q["greedy"]["verdict"] == "correct" for q in probed),
                "examples": [{"question": q["messages"][0]["content"], "answer": q["answer"],
                              "greedy": q["greedy"]["response"], "label": q["label"]} for q in probed[:3]],
            }  # fmt: skip
            counts = ("greedy_correct", "known", "mixed", "unknown")
            print(family, split, {k: families[family][split][k] for k in counts}, flush=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result = {
        "meta": {"date": time.strftime("%Y-%m-%d"), "model": a.model or "embedded SmolLM2-135M-Instruct",
                 "dtype": str(dtype), "samples": a.samples, "per_family": a.per_family, "seed": a.seed,
                 "commit": commit.stdout.strip(), "seconds": round(time.perf_counter() - t0, 1)},
        "families": families,
    }  # fmt: skip
    Path(a.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
