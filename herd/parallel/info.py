"""What `herd model info` reports: parameters and FLOPs per token of a preset or a checkpoint (read from its
metadata alone), and with a parallel layout the memory per device and step time (herd/parallel/memory.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from herd.errors import HerdError
from herd.formats import read_args
from herd.formats.load import EMBEDDED, resolve_model_path
from herd.model.args import PRESETS, ModelArgs, count_params, flops_per_token, get_preset
from herd.parallel.memory import format_memory, parallel_plan


def model_args(name: str) -> tuple[ModelArgs, str]:
    """ModelArgs of a preset, an embedded model or a checkpoint path, reading metadata only; and where they came
    from ("preset" or the checkpoint's path)."""
    if name in PRESETS:
        return get_preset(name), "preset"
    if name.lower() not in EMBEDDED and not Path(name).exists():
        raise HerdError(f"{name!r} is neither a preset ({', '.join(PRESETS)}), an embedded model nor a path")
    path = resolve_model_path(name)
    return read_args(path), str(path)


def model_info(name: str, *, seq_len: int | None = None, **layout: Any) -> dict[str, Any]:
    """Parameters, FLOPs per token at `seq_len` (default: the model's context, at most 8192) and the ModelArgs of
    `name`; with `layout` (`parallel_plan`'s keywords: tp, pp, dp_shard... mfu, batch_tokens...) given, also its
    "memory" and "step_time"."""
    args, source = model_args(name)
    seq_len = seq_len or min(args.max_seq_len, 8192)
    counts = count_params(args)
    flops = flops_per_token(args, seq_len)
    info = {
        "name": name,
        "source": source,
        "params": counts["total"],
        "params_billions": round(counts["total"] / 1e9, 3),
        "embedding_params": counts["embedding"],
        "flops_per_token": {"forward": flops["forward"], "train": flops["train"], "seq_len": seq_len},
        "args": dataclasses.asdict(args),
    }
    info.update(parallel_plan(args, seq_len=seq_len, **layout))
    return info


def format_model_info(info: dict[str, Any]) -> str:
    """Human-readable lines for a `model_info` result."""
    flops = info["flops_per_token"]
    lines = [
        f"{info['name']}  ({info['source']})",
        f"  parameters        {info['params']:,}  ({info['params'] / 1e9:.3f}B)",
        f"  embedding         {info['embedding_params']:,}",
        f"  FLOPs/token       forward {flops['forward']:.4g}, train {flops['train']:.4g} (seq_len {flops['seq_len']})",
    ]
    lines += [f"  {k:17s} {v}" for k, v in info["args"].items()]
    if "memory" in info:
        lines.append(format_memory(info))
    return "\n".join(lines)


def format_presets(*, as_json: bool = False) -> str:
    """The presets with their parameter counts and the embedded models: one line each, or one JSON line."""
    rows = [(name, count_params(args)["total"]) for name, args in PRESETS.items()]
    if as_json:
        return json.dumps({"presets": dict(rows), "embedded": sorted(EMBEDDED)})
    lines = [f"{name:16s} {n / 1e9:10.3f}B parameters" for name, n in rows]
    lines.append("embedded models: " + ", ".join(EMBEDDED))
    return "\n".join(lines)
