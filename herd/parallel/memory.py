"""Per-device memory and step time of a parallel layout, by arithmetic alone (no torch, no process group).

Conventions (each is a choice; change them here and in the tests together):

- Mesh: `ParallelDims` (pp x dp_replicate x dp_shard x tp). Context parallelism is not modelled.
- Tensor parallelism (Megatron style) splits every matmul weight of a layer by tp: query heads, FFN columns,
  and key/value heads (when tp exceeds n_kv_heads, each rank keeps one kv head, replicated). The embedding and
  the output projection are vocab-parallel (vocab rounded up to a multiple of tp). RMSNorm weights are replicated.
- Pipeline parallelism splits the layers into pp stages of ceil(n_layers / pp) layers, taking one layer off the
  first, then the last, then the second stage... until the count is right: the Llama 3 paper balances its 126
  layers on 16 stages this way (7, 8 x 14, 7), because the first stage also holds the embedding and the last one
  the final norm, the output projection and the loss. Every stage is costed and the largest one is reported.
- FSDP (ZeRO-3) shards the bf16 parameters, the fp32 master weights, the gradients and the optimizer state over
  dp_shard, rounded up; dp_replicate holds whole copies and divides nothing. FSDP2 keeps no persistent sharded bf16
  copy (it casts the fp32 shard when it gathers), so counting one over-states memory by param_bytes / dp_shard per
  parameter, which is small at any dp_shard worth using. On top comes the gathered working set: the unsharded
  weights of two layers (the one computing and the one prefetched) and the unsharded gradients of one, or, with
  `reshard_after_forward=False` (ZeRO-2 style, as the Llama 3 paper did for its parameters), the whole stage's
  unsharded weights kept from the forward to the backward.
- Optimizer state is fp32: AdamW keeps two moments (8 bytes per parameter), SGD with momentum one (4 bytes).
- Activations: see the derivation above `_layer_activation_elements`. A 1F1B pipeline stage i holds the
  activations of min(k, pp - i) micro-batches at its peak, k = `pp_microbatches_in_flight` (default pp, the most
  1F1B ever keeps; it needs at least pp micro-batches per step). The interleaved schedule keeps somewhat more on
  the first stage; that is not modelled. Transient peaks (a fused kernel's workspace, NCCL buffers, allocator
  fragmentation) are not modelled either: keep a few GiB of head-room.
"""

from __future__ import annotations

import math
from typing import Any

from herd.model.args import ModelArgs, flops_per_token
from herd.parallel.dims import ParallelDims, ParallelError

GIB = 2**30
ACTIVATION_BYTES = 2
"""Activations are bf16 (the Korthikanti et al. formulas assume a 2-byte type too)."""
OPTIMIZER_BYTES = {"adamw": 8, "adam": 8, "sgd": 4}
"""fp32 optimizer state per parameter: Adam's two moments, or SGD's momentum."""
ACTIVATION_CHECKPOINT = ("none", "selective", "full")
FSDP_PREFETCH_LAYERS = 2
"""Layers whose weights FSDP holds gathered at once when it reshards after forward: current + prefetched."""
PARTS = ("params", "master", "grads", "optimizer", "fsdp_buffers", "activations")


def stage_layers(n_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage: ceil(n_layers / pp) each, one fewer on the first, last, second... stages."""
    if pp > n_layers:
        raise ParallelError(f"parallel.pp={pp} is more than the model's {n_layers} layers")
    per = -(-n_layers // pp)
    counts = [per] * pp
    order = [i for pair in zip(range(pp), reversed(range(pp)), strict=True) for i in pair]
    for i in list(dict.fromkeys(order))[: per * pp - n_layers]:
        counts[i] -= 1
    return counts


def _check_tp(args: ModelArgs, tp: int) -> int:
    """The divisor of the key/value projections: kv heads are split up to n_kv_heads ways, then replicated."""
    assert args.n_kv_heads is not None and args.ffn_hidden_dim is not None  # derived in ModelArgs.__post_init__
    if args.n_heads % tp:
        raise ParallelError(f"parallel.tp={tp} does not divide the model's n_heads={args.n_heads}")
    if args.ffn_hidden_dim % tp:
        raise ParallelError(f"parallel.tp={tp} does not divide the model's ffn_hidden_dim={args.ffn_hidden_dim}")
    if args.n_kv_heads % tp and tp % args.n_kv_heads:
        raise ParallelError(f"parallel.tp={tp} and n_kv_heads={args.n_kv_heads}: neither divides the other")
    return min(tp, args.n_kv_heads)


def _layer_params(args: ModelArgs, tp: int) -> int:
    """Parameters of one transformer block held by one tensor-parallel rank."""
    assert args.n_kv_heads is not None and args.head_dim is not None and args.ffn_hidden_dim is not None
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    kv_tp = _check_tp(args, tp)
    attention = 2 * args.dim * q // tp + 2 * args.dim * kv // kv_tp
    return attention + 3 * args.dim * args.ffn_hidden_dim // tp + 2 * args.dim


# Activation memory of one transformer block, one micro-batch (s tokens x b sequences), in bf16 elements.
#
# Korthikanti et al. 2022 count, for a GPT block with 2-byte activations, 34sbh + 5as^2b bytes:
#   attention 11sbh + 5as^2b: QKV input 2, Q and K 4, V 2, output-projection input 2, dropout mask 1 (sbh);
#     softmax output 2, its dropout mask 1, dropout output 2 (as^2b);
#   MLP 19sbh: fc1 input 2, GeLU input 8, GeLU output 8 (the 4h width), dropout mask 1;
#   two LayerNorm inputs 4sbh.
# A Llama block has no dropout, grouped-query attention and a SwiGLU MLP. With h = dim, q = n_heads * head_dim,
# kv = n_kv_heads * head_dim and f = ffn_hidden_dim, autograd keeps (elements):
#   attention: norm input sbh, norm output (the QKV matmul input) sbh, q sbq, k and v 2sb*kv (after RoPE, for the
#     attention backward; RoPE itself needs only the shared cos/sin), attention output (output-projection input,
#     also what flash attention keeps) sbq;
#   MLP: norm input sbh, norm output sbh, w1 x and w3 x 2sbf (a fused SwiGLU kernel recomputes silu(w1 x) from
#     w1 x, as Megatron's does), their product (the w2 input) sbf.
# Total 4sbh + 2sbq + 2sb*kv + 3sbf elements; with q = h, kv = h and f = 4h (and dropout masks added back) this is
# Korthikanti's count less the GeLU's separate input/output. Norms are assumed fused (input kept, the per-row rstd
# of 4 bytes is ignored), and so is flash attention's per-row log-sum-exp (4 bytes per head and token).
# Attention scores: a kernel that materializes them keeps the softmax output, as^2b elements (Korthikanti's
# 5as^2b bytes less the dropout mask and output). Flash attention / SDPA never stores them: it recomputes the
# scores block by block in the backward, which is exactly Korthikanti's selective recomputation, so by default
# (attention_scores=False) "selective" and "none" coincide.
# Tensor parallelism divides q, kv, the attention output and the three f-wide tensors by tp (kv by at most
# n_kv_heads); sequence parallelism also splits the four h-wide norm tensors along the sequence, so everything is
# divided by tp (Korthikanti's 34sbh/t); without it they stay whole on every rank.
# Full recomputation keeps only each block's input, sbh (/tp with sequence parallelism), and recomputes the
# block in the backward, which needs one block's full set (for one micro-batch) at a time.
def _layer_activation_elements(
    args: ModelArgs,
    *,
    tokens: int,
    seq_len: int,
    micro_batch: int,
    tp: int,
    sequence_parallel: bool,
    attention_scores: bool,
    mode: str,
) -> int:
    h_div = tp if sequence_parallel else 1
    if mode == "full":
        return tokens * args.dim // h_div
    assert args.n_kv_heads is not None and args.head_dim is not None and args.ffn_hidden_dim is not None
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    kv_tp = _check_tp(args, tp)
    elements = (
        4 * tokens * args.dim // h_div
        + 2 * tokens * q // tp
        + 2 * tokens * kv // kv_tp
        + 3 * tokens * args.ffn_hidden_dim // tp
    )
    if attention_scores and mode == "none":
        elements += args.n_heads // tp * seq_len * seq_len * micro_batch
    return elements


def estimate_memory(
    args: ModelArgs,
    dims: ParallelDims,
    *,
    seq_len: int,
    micro_batch: int,
    param_bytes: int = 2,
    grad_bytes: int = 4,
    master_fp32: bool = True,
    optimizer: str = "adamw",
    activation_checkpoint: str = "selective",
    sequence_parallel: bool = True,
    attention_scores: bool = False,
    reshard_after_forward: bool = True,
    pp_microbatches_in_flight: int | None = None,
) -> dict:
    """Bytes per device, by part, on the pipeline stage that needs the most (see the module docstring).

    Returns {"bytes": {part: int}, "gib": {part: float}, "stage", "stage_layers", "layers_per_stage",
    "microbatches_in_flight", "params_per_device", "params_sharded", "activation_bytes_per_layer",
    "stage_totals_gib", "assumptions"}; parts are PARTS plus "total".
    """
    for name, value in (("seq_len", seq_len), ("micro_batch", micro_batch), ("param_bytes", param_bytes)):
        if value < 1:
            raise ParallelError(f"{name}={value} must be positive")
    if grad_bytes < 1:
        raise ParallelError(f"grad_bytes={grad_bytes} must be positive")
    if optimizer not in OPTIMIZER_BYTES:
        raise ParallelError(f"optimizer={optimizer!r} is not one of {', '.join(OPTIMIZER_BYTES)}")
    if activation_checkpoint not in ACTIVATION_CHECKPOINT:
        raise ParallelError(
            f"activation_checkpoint={activation_checkpoint!r} is not one of {', '.join(ACTIVATION_CHECKPOINT)}"
        )
    tp, pp, ds = dims.tp, dims.pp, dims.dp_shard
    _check_tp(args, tp)
    sequence_parallel = sequence_parallel and tp > 1
    if sequence_parallel and seq_len % tp:
        raise ParallelError(f"seq_len={seq_len} is not a multiple of parallel.tp={tp} (sequence parallelism)")
    in_flight = pp if pp_microbatches_in_flight is None else pp_microbatches_in_flight
    if not 1 <= in_flight <= pp:
        raise ParallelError(
            f"pp_microbatches_in_flight={pp_microbatches_in_flight} must be in 1..pp={pp} (1F1B keeps at most pp)"
        )

    layers = stage_layers(args.n_layers, pp)
    layer_params = _layer_params(args, tp)
    vocab_params = -(-args.vocab_size // tp) * args.dim
    tokens = seq_len * micro_batch
    act = {
        mode: ACTIVATION_BYTES
        * _layer_activation_elements(
            args,
            tokens=tokens,
            seq_len=seq_len,
            micro_batch=micro_batch,
            tp=tp,
            sequence_parallel=sequence_parallel,
            attention_scores=attention_scores,
            mode=mode,
        )
        for mode in ACTIVATION_CHECKPOINT
    }
    h_div = tp if sequence_parallel else 1
    # Last stage: the final norm's input and output, and the fp32 log-probabilities the loss keeps for its
    # backward; 1F1B runs that micro-batch's backward at once, so only one is ever held.
    output_act = ACTIVATION_BYTES * 2 * tokens * args.dim // h_div + 4 * tokens * vocab_params // args.dim
    recompute_working_set = act["none"] if activation_checkpoint == "full" else 0

    stages: list[dict[str, Any]] = []
    for i, n in enumerate(layers):
        params = n * layer_params
        if i == 0:
            params += vocab_params
        if i == pp - 1:
            params += args.dim + (0 if args.tie_embeddings and pp == 1 else vocab_params)
        shard = -(-params // ds)
        if ds == 1:
            buffers = 0
        elif reshard_after_forward:
            buffers = (FSDP_PREFETCH_LAYERS + 1) * param_bytes * layer_params
        else:
            buffers = param_bytes * (params + layer_params)
        held = min(in_flight, pp - i)
        activations = n * held * act[activation_checkpoint] + recompute_working_set
        if i == pp - 1:
            activations += output_act
        parts = {
            "params": param_bytes * shard,
            "master": 4 * shard if master_fp32 else 0,
            "grads": grad_bytes * shard,
            "optimizer": OPTIMIZER_BYTES[optimizer] * shard,
            "fsdp_buffers": buffers,
            "activations": activations,
        }
        parts["total"] = sum(parts.values())
        stages.append({"parts": parts, "params": params, "shard": shard, "held": held})

    worst = max(range(pp), key=lambda i: stages[i]["parts"]["total"])
    chosen = stages[worst]
    return {
        "bytes": chosen["parts"],
        "gib": {k: v / GIB for k, v in chosen["parts"].items()},
        "stage": worst,
        "stage_layers": layers[worst],
        "layers_per_stage": layers,
        "microbatches_in_flight": chosen["held"],
        "params_per_device": chosen["params"],
        "params_sharded": chosen["shard"],
        "activation_bytes_per_layer": act[activation_checkpoint],
        "stage_totals_gib": [s["parts"]["total"] / GIB for s in stages],
        "assumptions": {
            "layout": dims.sizes(),
            "world_size": dims.world_size,
            "seq_len": seq_len,
            "micro_batch": micro_batch,
            "param_bytes": param_bytes,
            "grad_bytes": grad_bytes,
            "master_fp32": master_fp32,
            "optimizer": optimizer,
            "optimizer_bytes_per_param": OPTIMIZER_BYTES[optimizer],
            "activation_bytes": ACTIVATION_BYTES,
            "activation_checkpoint": activation_checkpoint,
            "sequence_parallel": sequence_parallel,
            "attention_scores": attention_scores,
            "reshard_after_forward": reshard_after_forward,
            "pp_schedule": "1F1B, stage i holds min(in_flight, pp - i) micro-batches",
            "pp_microbatches_in_flight": in_flight,
            "fsdp_prefetch_layers": FSDP_PREFETCH_LAYERS,
        },
    }


def step_time(
    args: ModelArgs,
    dims: ParallelDims,
    *,
    seq_len: int,
    global_batch_tokens: int,
    peak_flops_per_device: float,
    mfu: float,
    micro_batch: int = 1,
    virtual_stages: int = 1,
    train_tokens: float | None = None,
) -> dict:
    """Seconds per optimizer step at a given model-FLOPs utilization, and the pipeline bubble.

    Step time = train FLOPs per token (`flops_per_token(args, seq_len)["train"]`) x global batch tokens /
    (world size x peak x mfu). A measured MFU already includes the pipeline bubble, so the bubble does not lengthen
    the step again; it is reported with `busy_mfu`, the MFU the stages must reach while not idle for the whole
    step to reach `mfu`. With m micro-batches per data-parallel rank and v virtual stages per device (interleaved
    1F1B; v = 1 is plain 1F1B), each device idles (pp - 1) / (v m + pp - 1) of the step (Narayanan et al. 2021).
    """
    if not 0 < mfu <= 1:
        raise ParallelError(f"mfu={mfu} must be in (0, 1]")
    if peak_flops_per_device <= 0:
        raise ParallelError(f"peak_flops_per_device={peak_flops_per_device} must be positive")
    for name, value in (("seq_len", seq_len), ("micro_batch", micro_batch), ("virtual_stages", virtual_stages)):
        if value < 1:
            raise ParallelError(f"{name}={value} must be positive")
    if global_batch_tokens < 1 or global_batch_tokens % seq_len:
        raise ParallelError(
            f"global_batch_tokens={global_batch_tokens} is not a positive multiple of seq_len={seq_len}"
        )
    sequences = global_batch_tokens // seq_len
    if sequences % (dims.dp * micro_batch):
        raise ParallelError(
            f"{sequences} sequences per step do not split into micro-batches of {micro_batch} over "
            f"{dims.dp} data-parallel ranks"
        )
    microbatches = sequences // (dims.dp * micro_batch)
    per_token = flops_per_token(args, seq_len)["train"]
    step_flops = per_token * global_batch_tokens
    seconds = step_flops / (dims.world_size * peak_flops_per_device * mfu)
    bubble = (dims.pp - 1) / (virtual_stages * microbatches + dims.pp - 1)
    out = {
        "seconds_per_step": seconds,
        "tokens_per_s": global_batch_tokens / seconds,
        "tokens_per_s_per_device": global_batch_tokens / seconds / dims.world_size,
        "flops_per_step": step_flops,
        "train_flops_per_token": per_token,
        "achieved_flops_per_device": peak_flops_per_device * mfu,
        "microbatches": microbatches,
        "virtual_stages": virtual_stages,
        "bubble_fraction": bubble,
        "busy_mfu": mfu / (1 - bubble),
    }
    if train_tokens is not None:
        if train_tokens <= 0:
            raise ParallelError(f"train_tokens={train_tokens} must be positive")
        steps = math.ceil(train_tokens / global_batch_tokens)
        out |= {
            "train_tokens": train_tokens,
            "steps": steps,
            "days": steps * seconds / 86400,
            "train_flops": per_token * train_tokens,
        }
    return out


def parallel_plan(
    args: ModelArgs,
    *,
    seq_len: int,
    tp: int | None = None,
    pp: int | None = None,
    dp_shard: int | None = None,
    dp_replicate: int | None = None,
    gpus: int | None = None,
    micro_batch: int = 1,
    activation_checkpoint: str = "selective",
    attention_scores: bool = False,
    reshard_after_forward: bool = True,
    peak_tflops: float | None = None,
    mfu: float | None = None,
    batch_tokens: int | None = None,
    virtual_stages: int = 1,
    train_tokens: float | None = None,
) -> dict:
    """`{"memory": estimate_memory(...)}` for the layout the sizes give, plus `"step_time"` when any of peak_tflops,
    mfu, batch_tokens or train_tokens is given; `{}` when none of tp, pp, dp_shard, dp_replicate, gpus is.

    Sizes not given are 1, except dp_shard with gpus given: it takes what the others leave of the world size. Step
    time defaults: 989 TFLOP/s peak, MFU 0.4, a global batch of pp micro-batches per data-parallel rank."""
    if all(v is None for v in (tp, pp, dp_shard, dp_replicate, gpus)):
        return {}
    sizes = {"tp": tp or 1, "pp": pp or 1, "dp_replicate": dp_replicate or 1}
    if dp_shard is not None:
        sizes["dp_shard"] = dp_shard
    elif gpus is None:
        sizes["dp_shard"] = 1
    world = gpus or sizes["tp"] * sizes["pp"] * sizes["dp_replicate"] * sizes["dp_shard"]
    dims = ParallelDims(world_size=world, **sizes)
    memory = estimate_memory(
        args,
        dims,
        seq_len=seq_len,
        micro_batch=micro_batch,
        activation_checkpoint=activation_checkpoint,
        attention_scores=attention_scores,
        reshard_after_forward=reshard_after_forward,
    )
    plan = {"memory": memory}
    if any(v is not None for v in (peak_tflops, mfu, batch_tokens, train_tokens)):
        plan["step_time"] = step_time(
            args,
            dims,
            seq_len=seq_len,
            global_batch_tokens=batch_tokens or dims.dp * micro_batch * seq_len * dims.pp,
            peak_flops_per_device=(peak_tflops or 989.0) * 1e12,
            mfu=mfu or 0.4,
            micro_batch=micro_batch,
            virtual_stages=virtual_stages,
            train_tokens=train_tokens,
        )
    return plan


def format_memory(plan: dict) -> str:
    """Human-readable lines for a `parallel_plan` result (or any dict with its "memory" and "step_time" keys)."""
    m = plan["memory"]
    asm = m["assumptions"]
    layout = " x ".join(f"{k} {v}" for k, v in asm["layout"].items())
    lines = [
        f"memory per device: {layout} = {asm['world_size']:,} devices; seq_len {asm['seq_len']}, micro-batch "
        f"{asm['micro_batch']}, activation checkpoint {asm['activation_checkpoint']}, "
        f"reshard after forward {asm['reshard_after_forward']}",
        f"  largest: stage {m['stage']} of {len(m['layers_per_stage'])} ({m['stage_layers']} layers, "
        f"{m['microbatches_in_flight']} micro-batches in flight), {m['params_per_device']:,} parameters",
    ]
    lines += [f"  {part:17s} {gib:9.2f} GiB" for part, gib in m["gib"].items()]
    if s := plan.get("step_time"):
        lines += [
            f"step time: {s['flops_per_step']:.4g} FLOPs per step of {s['microbatches']} micro-batches per "
            f"data-parallel rank, at {s['achieved_flops_per_device'] / 1e12:.1f} TFLOP/s per device",
            f"  {s['seconds_per_step']:.3f} s/step, {s['tokens_per_s']:,.0f} tokens/s "
            f"({s['tokens_per_s_per_device']:,.1f} per device)",
            f"  pipeline bubble {s['bubble_fraction']:.1%} (1F1B, {s['virtual_stages']} model chunk(s) per device); "
            f"MFU while busy {s['busy_mfu']:.1%}",
        ]
        if "days" in s:
            lines.append(
                f"  {s['train_tokens']:.4g} tokens: {s['steps']:,} steps, {s['days']:.1f} days, "
                f"{s['train_flops']:.3g} FLOPs"
            )
    return "\n".join(lines)
