"""The compute planner: from a FLOP budget (or GPUs x days) to tokens, parameters, a preset, time and memory.

Two parameter counts are reported, because two FLOP conventions meet here:

- N_6ND = C / (6 D): the paper's convention (C = 6 N D), which the Llama 3 laws are stated in.
- herd's own count for the nearest preset: `flops_per_token(args, seq_len)["train"]`, which counts attention scores
  at the full context with no causal discount and leaves out the embedding lookup. Its ratio to 6 N says how far
  the two conventions drift apart at that shape, and C divided by it gives the tokens the budget buys under herd's
  count.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.model.args import PRESETS, count_params, flops_per_token
from herd.parallel.dims import ParallelDims
from herd.parallel.memory import estimate_memory
from herd.scaling.fit import ScalingError, predict


@dataclass(kw_only=True, slots=True, frozen=True)
class TokensLaw:
    """Compute-optimal training tokens D*(C) = coef x C^exponent."""

    coef: float
    exponent: float

    def tokens(self, flops: float) -> float:
        return self.coef * flops**self.exponent


# The Llama 3 paper ("The Llama 3 Herd of Models", 2024), section 3.2.1: the optimal number of training tokens
# N*(C) = A C^alpha. The text rounds the fit to (alpha, A) = (0.53, 0.29), which would give 10.5T tokens at 3.8e25
# FLOPs; the three-digit values of its Figure 3 fitted line, used here, give 16.3T, within 2% of the 16.55T the
# paper extrapolates (with a 402B model).
LLAMA3_LAW = TokensLaw(coef=0.299, exponent=0.537)
PAPER_FLOPS = 3.8e25
PAPER_TOKENS = 16.55e12
PAPER_PARAMS = 402e9
DAY = 86400.0


def _nearest_preset(n: float, key: str) -> str:
    """The preset whose `key` count ("total" params or "matmul" params) is nearest to n in log space."""

    def size(name: str) -> float:
        args = PRESETS[name]
        return count_params(args)["total"] if key == "total" else flops_per_token(args, 0)["matmul_params"]

    return min(PRESETS, key=lambda name: abs(math.log(size(name) / n)))


def _load_fit(path: Path) -> dict:
    if not path.is_file():
        raise ScalingError(f"{path}: no such fit file; give --law llama3 or the fit.json of `herd scaling fit`")
    try:
        fit = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScalingError(f"{path}: not a readable fit.json ({e})") from e
    laws = fit.get("laws") if isinstance(fit, dict) else None
    if not isinstance(laws, dict) or not all(
        isinstance(laws.get(k), dict) for k in ("n_opt", "tokens_opt", "loss_opt")
    ):
        raise ScalingError(f"{path}: not a herd fit.json (no laws.n_opt / tokens_opt / loss_opt)")
    return fit


def _compute(flops: float | None, gpus: int | None, days: float | None, rate: float) -> tuple[float, str]:
    if flops is not None:
        if gpus is not None and days is not None:
            raise ScalingError("plan: give --flops, or --gpus with --days, not all three")
        if not flops > 0:
            raise ScalingError(f"plan: flops={flops} must be positive")
        return float(flops), "given"
    if gpus is None or days is None:
        raise ScalingError("plan: give --flops, or both --gpus and --days")
    return gpus * days * DAY * rate, "gpus x days x peak x mfu"


SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden_dim", "vocab_size")


def make_plan(
    *,
    flops: float | None = None,
    gpus: int | None = None,
    days: float | None = None,
    mfu: float = 0.4,
    peak_tflops: float = 989.0,
    law: str = "llama3",
    seq_len: int = 8192,
    tp: int = 1,
    pp: int = 1,
    dp_shard: int | None = None,
) -> dict:
    """Plan a pre-training run for a compute budget.

    Args:
        flops: training budget in FLOPs; otherwise gpus x days x 86400 x peak x mfu.
        gpus: number of accelerators (sets the training time, and the default FSDP width).
        days: wall-clock days (with gpus, sets the budget; with flops alone, the GPUs needed).
        mfu: model-FLOPs utilization reached in training.
        peak_tflops: dense bf16 peak per accelerator in TFLOP/s (989 for an H100 SXM).
        law: "llama3" for the paper's tokens law, or the path of a fit.json written by `herd scaling fit`.
        seq_len: training context length, for herd's FLOPs per token and the memory estimate.
        tp: tensor-parallel width of the layout costed for memory.
        pp: pipeline stages of that layout.
        dp_shard: FSDP width; gpus / (tp x pp) when gpus is given, else 1.

    Returns:
        A JSON-ready dict: "flops", "tokens", "params_6nd", "preset" (nearest preset and herd's FLOP count for it),
        "hardware" (time), "memory" (per device), "prediction" (herd fits only), "paper" (the Llama 3 law at the
        paper's budget only).

    Raises:
        ScalingError: inconsistent or out-of-range inputs, or an unreadable fit file.
        ParallelError: a layout that does not fit the GPU count or the preset.
    """
    for name, value in (("mfu", mfu), ("peak_tflops", peak_tflops), ("days", days), ("gpus", gpus)):
        if value is not None and not value > 0:
            raise ScalingError(f"plan: {name}={value} must be positive")
    if mfu > 1:
        raise ScalingError(f"plan: mfu={mfu} must be at most 1")
    if seq_len < 1 or tp < 1 or pp < 1 or (dp_shard is not None and dp_shard < 1):
        raise ScalingError(f"plan: seq_len={seq_len}, tp={tp}, pp={pp}, dp_shard={dp_shard} must be positive")
    rate = peak_tflops * 1e12 * mfu
    c, source = _compute(flops, gpus, days, rate)

    fit = None
    if law == "llama3":
        tokens = LLAMA3_LAW.tokens(c)
        law_info = {
            "name": "llama3",
            "tokens": f"{LLAMA3_LAW.coef} x C^{LLAMA3_LAW.exponent}",
            "source": "Llama 3 paper, section 3.2.1 (Figure 3 fitted line)",
        }
    else:
        fit = _load_fit(Path(law))
        pred = predict(fit, c)
        tokens = pred["tokens"]
        law_info = {
            "name": "fit",
            "path": str(law),
            "tokens": f"{fit['laws']['tokens_opt']['A']:.4g} x C^{fit['laws']['tokens_opt']['alpha']:.4f}",
            "n_opt": f"{fit['laws']['n_opt']['A']:.4g} x C^{fit['laws']['n_opt']['alpha']:.4f}",
            "source": f"herd sweep fit (herd FLOPs per token at seq_len {fit.get('seq_len')})",
        }
    params_6nd = c / (6 * tokens)

    # The paper's law is stated in total parameters; a herd fit's n is non-embedding matmul parameters.
    preset_name = _nearest_preset(params_6nd, "total") if fit is None else _nearest_preset(pred["n"], "matmul")
    args = PRESETS[preset_name].replace()
    counts = count_params(args)
    per_token = flops_per_token(args, seq_len)
    total = counts["total"]
    assert args.head_dim is not None  # derived in ModelArgs.__post_init__
    attention = 3 * 4 * args.n_layers * seq_len * args.n_heads * args.head_dim
    preset = {
        "name": preset_name,
        "shape": {k: getattr(args, k) for k in SHAPE_FIELDS},
        "params": total,
        "matmul_params": per_token["matmul_params"],
        "train_flops_per_token": per_token["train"],
        "ratio_to_6n": per_token["train"] / (6 * total),
        "attention_share": attention / (6 * total),
        "uncounted_share": (6 * total - 6 * per_token["matmul_params"]) / (6 * total),
        "tokens_for_budget": c / per_token["train"],
        # The parameter count the law's tokens imply when C is counted with herd's formula at this shape.
        "params_for_tokens": params_6nd * total / (per_token["train"] / 6),
    }

    hardware = {"gpus": gpus, "days": days, "mfu": mfu, "peak_tflops": peak_tflops, "gpu_days": c / rate / DAY}
    if gpus is not None:
        hardware["days"] = c / (gpus * rate) / DAY
    elif days is not None:
        hardware["gpus_needed"] = c / (days * DAY * rate)

    layout_shard = dp_shard if dp_shard is not None else (gpus // (tp * pp) if gpus is not None else 1)
    if gpus is not None and layout_shard == 0:
        raise ScalingError(f"plan: gpus={gpus} is fewer than tp x pp = {tp * pp}")
    world = gpus if gpus is not None else tp * pp * layout_shard
    replicas = world // (tp * pp * layout_shard) if world % (tp * pp * layout_shard) == 0 else 0
    if replicas == 0:
        raise ScalingError(f"plan: gpus={gpus} is not a multiple of tp x pp x dp_shard = {tp * pp * layout_shard}")
    dims = ParallelDims(tp=tp, pp=pp, dp_shard=layout_shard, dp_replicate=replicas, world_size=world)
    mem = estimate_memory(args, dims, seq_len=seq_len, micro_batch=1, activation_checkpoint="selective")
    memory = {
        "layout": dims.sizes(),
        "world_size": world,
        "preset": preset_name,
        "gib": mem["gib"],
        "stage": mem["stage"],
        "layers_per_stage": mem["layers_per_stage"],
        "seq_len": seq_len,
        "micro_batch": 1,
        "activation_checkpoint": "selective",
    }

    plan: dict[str, Any] = {
        "flops": c,
        "flops_source": source,
        "law": law_info,
        "tokens": tokens,
        "params_6nd": params_6nd,
        "seq_len": seq_len,
        "preset": preset,
        "hardware": hardware,
        "memory": memory,
        "prediction": pred if fit is not None else None,
        "paper": None,
        "warnings": [],
    }
    if fit is not None:
        largest = max(b["budget"] for b in fit["budgets"])
        if c > 100 * largest:
            plan["warnings"].append(
                f"extrapolating {math.log10(c / largest):.1f} orders of magnitude beyond the sweep's largest budget "
                f"({largest:.3g} FLOPs): the fitted laws were not tested there, so read the prediction as illustration"
            )
    if fit is None and abs(c / PAPER_FLOPS - 1) < 0.01:
        plan["paper"] = {
            "flops": PAPER_FLOPS,
            "tokens": PAPER_TOKENS,
            "params": PAPER_PARAMS,
            "tokens_rel_diff": tokens / PAPER_TOKENS - 1,
            "params_rel_diff": params_6nd / PAPER_PARAMS - 1,
            "paper_6nd_flops": 6 * PAPER_PARAMS * PAPER_TOKENS,
        }
    return plan


def _si(value: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"


def _band(pred: dict, key: str, fmt: str) -> str:
    value, band = pred[key], pred["band"][key]
    if value is None:
        return "-"
    text = format(value, fmt)
    return text if band is None else f"{text} (1 sigma {format(band[0], fmt)} .. {format(band[1], fmt)})"


def format_plan(plan: dict) -> str:
    """Human-readable lines for a `make_plan` result."""
    law, preset, hw, mem = plan["law"], plan["preset"], plan["hardware"], plan["memory"]
    lines = [
        f"compute     {plan['flops']:.3g} FLOPs ({plan['flops_source']})",
        f"law         {law['name']}: tokens = {law['tokens']}  [{law['source']}]",
        f"tokens      {_si(plan['tokens'])}",
        f"params      {_si(plan['params_6nd'])} = C / (6 x tokens), the paper's C = 6ND convention",
    ]
    paper = plan["paper"]
    if paper is not None:
        lines[2] += f"  (paper: {_si(paper['tokens'])}, {paper['tokens_rel_diff']:+.1%})"
        lines[3] += f"  (paper: {_si(paper['params'])}, {paper['params_rel_diff']:+.1%})"
        lines.append(
            f"            why they differ: the paper's 16.55T / 402B come from its unrounded fit and its own FLOP "
            f"accounting (6 x 402B x 16.55T = {paper['paper_6nd_flops']:.3g}, not {paper['flops']:.2g}); herd "
            f"applies the published law as printed and does not tune it to match"
        )
    pred = plan["prediction"]
    if pred is not None:
        lines.append(f"n_opt       {_si(pred['n'])} non-embedding matmul params (law: {law['n_opt']})")
        lines.append(f"loss        {_band(pred, 'loss', '.4f')}")
        lines.append(f"task NLL    {_band(pred, 'nll', '.4f')}")
        lines.append(f"accuracy    {_band(pred, 'accuracy', '.3f')}")
    lines.append(
        f"preset      {preset['name']}: {_si(preset['params'])} params (dim {preset['shape']['dim']}, "
        f"{preset['shape']['n_layers']} layers, {preset['shape']['n_heads']} heads, {preset['shape']['n_kv_heads']} kv "
        f"heads, FFN {preset['shape']['ffn_hidden_dim']}); herd train FLOPs/token at seq_len "
        f"{plan['seq_len']} = {preset['train_flops_per_token']:.4g} = {preset['ratio_to_6n']:.3f} x 6N "
        f"(attention at full context, no causal discount: +{preset['attention_share']:.1%}; embedding lookup and "
        f"norms not counted: -{preset['uncounted_share']:.1%})"
    )
    lines.append(
        f"            under herd's count the budget buys {_si(preset['tokens_for_budget'])} tokens on it, or "
        f"the law's {_si(plan['tokens'])} tokens need a {_si(preset['params_for_tokens'])}-parameter model"
        + (f" (paper: 402B, {preset['params_for_tokens'] / paper['params'] - 1:+.1%})" if paper else "")
    )
    time = f"{hw['gpu_days']:.4g} GPU-days at {hw['mfu']:.0%} MFU of {hw['peak_tflops']:g} TFLOP/s"
    if hw.get("gpus") is not None:
        time += f"; {hw['days']:.4g} days on {hw['gpus']} GPUs"
    elif hw.get("gpus_needed") is not None:
        time += f"; {math.ceil(hw['gpus_needed'])} GPUs for {hw['days']:g} days"
    lines.append(f"time        {time}")
    gib = mem["gib"]
    layout = " x ".join(f"{k} {v}" for k, v in mem["layout"].items())
    lines.append(
        f"memory      {gib['total']:.1f} GiB per device for {mem['preset']} on {layout} (seq_len {mem['seq_len']}, "
        f"micro-batch 1, selective recompute): params {gib['params']:.1f}, master {gib['master']:.1f}, grads "
        f"{gib['grads']:.1f}, optimizer {gib['optimizer']:.1f}, FSDP buffers {gib['fsdp_buffers']:.1f}, "
        f"activations {gib['activations']:.1f}"
    )
    lines += [f"warning: {w}" for w in plan.get("warnings", [])]
    return "\n".join(lines)
