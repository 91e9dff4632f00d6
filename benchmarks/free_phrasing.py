"""Models on requests written unlike any training template (issue 21): the hand-written phrasing families of
tests/posttrain/data/free_phrasing.json, greedy and without constrained decoding, scored by herd synth's own
checkers (`evaluate`): tool-call validity and the right tool per family; for everyday closed-book questions the
correct and refused shares; for made-up ones the refused share.

    .venv/bin/python benchmarks/free_phrasing.py                                # the embedded model alone
    .venv/bin/python benchmarks/free_phrasing.py --round runs/round             # start, SFT and DPO of a round

Writes benchmarks/results/free_phrasing.json (--out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "posttrain" / "data" / "free_phrasing.json"
TOOLS = ("convert_units", "date_diff", "http_status", "word_count")


def items(fmt: str) -> dict[str, list[dict[str, Any]]]:
    """Eval items by "tools/<family>" and "facts/<family>", in the format `evaluate` scores."""
    from herd.posttrain.synth.run import _tools
    from herd.tools.calls import tool_system_prompt

    data = json.loads(DATA.read_text())
    system = tool_system_prompt([_tools(fmt)[name] for name in TOOLS], fmt)
    out: dict[str, list[dict[str, Any]]] = {}
    for t in data["tools"]:
        out.setdefault(f"tools/{t['family']}", []).append(
            {"kind": "tool", "fmt": fmt, "tool": t["tool"], "arguments": t["arguments"],
             "messages": [{"role": "system", "content": system}, {"role": "user", "content": t["request"]}]}
        )  # fmt: skip
    for f in data["facts"]:
        out.setdefault(f"facts/{f['family']}", []).append(
            {"kind": "fact", "family": f["family"], "key": f["question"], "answer": f["answer"],
             "aliases": f["aliases"], "answerable": f["answer"] is not None, "open_book": False,
             "fictitious": f["answer"] is None, "messages": [{"role": "user", "content": f["question"]}]}
        )  # fmt: skip
    return out


def measure(model_path: str | None) -> dict[str, Any]:
    import torch

    from herd.formats import load_pretrained
    from herd.posttrain.synth.run import chat_format, evaluate
    from herd.train.metrics import native_bf16

    loaded = load_pretrained(model_path, dtype=torch.bfloat16 if native_bf16(torch.device("cpu")) else torch.float32)
    fmt = chat_format(loaded.tokenizer)
    result: dict[str, Any] = {}
    for group, group_items in items(fmt).items():
        metrics = evaluate(loaded.model, loaded.tokenizer, group_items, max_new_tokens=64, batch_size=16)
        # fact_knew_* means "known to the starting model" only for synth's probed items; here every question with
        # an answer is simply answerable.
        result[group] = {k: v for k, v in metrics.items() if k != "counts" and not k.startswith("fact_knew")}
        result[group]["n"] = len(group_items)
    return result


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--round", help="a finished round's directory: its start model, sft/model and dpo/model")
    p.add_argument("--models", nargs="*", default=[], help="more model paths (default: the embedded model)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "free_phrasing.json"))
    a = p.parse_args()
    torch.set_num_threads(2)
    models: dict[str, str | None] = {}
    if a.round:
        import tomllib

        start = tomllib.loads((Path(a.round) / "config.toml").read_text())["model"]["init_from"]
        models = {"start": start, **{stage: str(Path(a.round) / stage / "model") for stage in ("sft", "dpo")}}
    models |= {m: m for m in a.models}
    models = models or {"start": None}
    t0 = time.perf_counter()
    results = {}
    for name, path in models.items():
        results[name] = measure(path)
        print(name, json.dumps({g: {k: v for k, v in r.items() if k != "responses"} for g, r in results[name].items()}),
              flush=True)  # fmt: skip
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "commit": commit.stdout.strip(), "models": models, "round": a.round,
            "seconds": round(time.perf_counter() - t0, 1), "greedy": True, "constrained": False}  # fmt: skip
    Path(a.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1, ensure_ascii=False) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
