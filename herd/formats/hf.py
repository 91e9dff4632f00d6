"""Hugging Face format: `config.json` + `model*.safetensors` (sharded with an index).

HF Llama checkpoints store wq/wk with rows permuted so that RoPE can rotate the two halves of
each head ("rotate_half") instead of adjacent pairs as Meta's reference does. herd keeps Meta's
layout; `permute_to_hf` / `permute_from_hf` are pure reshapes, so conversions are bit-exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from herd.errors import CheckpointError
from herd.fileio import atomic_file, read_json
from herd.formats.common import args_from_fields, check_state_dict, tensors_tied
from herd.model import ModelArgs, RopeScaling

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

# herd (Meta) name -> HF name; {i} is the layer index.
_LAYER_KEYS = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_KEYS = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def permute_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta rows (head, pair, 2) -> HF rows (head, 2, pair)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


# ---------------------------------------------------------------------------------------------
# config.json <-> ModelArgs


def _require(config: dict[str, Any], key: str, source: Path) -> Any:
    if key not in config:
        raise CheckpointError(f"{source}: config field {key!r} is missing")
    return config[key]


def args_from_hf_config(config: dict[str, Any], source: Path) -> ModelArgs:
    """ModelArgs of a config.json; anything in it that does not fit is an error naming `source`."""
    return args_from_fields(_args_from_hf_config, config, source)


def _args_from_hf_config(config: dict[str, Any], source: Path) -> ModelArgs:
    arch = config.get("model_type", "llama")
    if arch != "llama":
        raise CheckpointError(f"{source}: model_type {arch!r} is not a Llama-architecture model")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise CheckpointError(f"{source}: {flag}=true is not supported (Llama 3 has no biases)")
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {config['hidden_act']!r} is not supported (expected 'silu')")
    # transformers >= 5 nests rope settings in `rope_parameters`; older configs use top-level keys.
    rope = dict(config.get("rope_scaling") or {})
    rope.update(config.get("rope_parameters") or {})
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if rope_type == "llama3":
        scaling = RopeScaling(
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_seq_len=int(rope["original_max_position_embeddings"]),
        )
    elif rope_type != "default":
        raise CheckpointError(f"{source}: rope type {rope_type!r} is not supported (supported: default, llama3)")
    dim, n_heads = _require(config, "hidden_size", source), _require(config, "num_attention_heads", source)
    head_dim = config.get("head_dim") or dim // n_heads
    return ModelArgs(
        dim=dim,
        n_layers=_require(config, "num_hidden_layers", source),
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        vocab_size=_require(config, "vocab_size", source),
        ffn_hidden_dim=_require(config, "intermediate_size", source),
        head_dim=head_dim,
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        rope_scaling=scaling,
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        max_seq_len=int(config.get("max_position_embeddings", 8192)),
    )


def hf_config_from_args(args: ModelArgs, dtype: torch.dtype, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config.json that transformers (4.x and 5.x) and vLLM read; `extra` keeps token ids etc."""
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": args.max_seq_len,
        "tie_word_embeddings": args.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if args.rope_scaling is not None:
        s = args.rope_scaling
        config["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_seq_len,
        }
    for key in _TOKEN_IDS:
        if extra and extra.get(key) is not None:
            config[key] = extra[key]
    return config


# ---------------------------------------------------------------------------------------------
# state dicts


def to_hf_state_dict(args: ModelArgs, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    assert args.n_kv_heads is not None  # derived in ModelArgs.__post_init__
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if name in _TOP_KEYS:
            if name == "output.weight" and args.tie_embeddings:
                continue  # HF stores a tied lm_head only once, as the embedding
            out[_TOP_KEYS[name]] = t
            continue
        _, i, rest = name.split(".", 2)
        if rest == "attention.wq.weight":
            t = permute_to_hf(t, args.n_heads)
        elif rest == "attention.wk.weight":
            t = permute_to_hf(t, args.n_kv_heads)
        out[f"model.layers.{i}.{_LAYER_KEYS[rest]}"] = t
    return out


def from_hf_state_dict(args: ModelArgs, hf: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    assert args.n_kv_heads is not None  # derived in ModelArgs.__post_init__
    top = {v: k for k, v in _TOP_KEYS.items()}
    layer = {v: k for k, v in _LAYER_KEYS.items()}
    out: dict[str, torch.Tensor] = {}
    for name, t in hf.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # old transformers versions saved this buffer; it is derived from the config
        if name in top:
            out[top[name]] = t
            continue
        parts = name.split(".", 3)
        if len(parts) != 4 or parts[:2] != ["model", "layers"] or parts[3] not in layer:
            raise CheckpointError(f"{source}: unexpected tensor {name!r} for a Llama model")
        key = layer[parts[3]]
        if key == "attention.wq.weight":
            t = permute_from_hf(t, args.n_heads)
        elif key == "attention.wk.weight":
            t = permute_from_hf(t, args.n_kv_heads)
        out[f"layers.{parts[2]}.{key}"] = t
    if args.tie_embeddings and "tok_embeddings.weight" in out:
        out.setdefault("output.weight", out["tok_embeddings.weight"])
    return out


# ---------------------------------------------------------------------------------------------
# directories


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def read_hf(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor], dict[str, Any]]:
    """(args, herd state dict, config.json) from an HF Llama directory."""
    path = Path(path)
    config_path = path / CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: not found (an HF checkpoint directory needs config.json)")
    config = read_json(config_path, what="model config", error=CheckpointError)
    args = args_from_hf_config(config, config_path)

    if (path / INDEX).is_file():
        index = read_json(path / INDEX, what="safetensors index", error=CheckpointError)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{path / INDEX}: not a safetensors index (no weight_map of tensor -> file)")
        files = sorted(set(weight_map.values()))
    elif (path / SINGLE).is_file():
        files = [SINGLE]
    else:
        raise CheckpointError(f"{path}: no {SINGLE} or {INDEX} found")
    hf: dict[str, torch.Tensor] = {}
    for name in files:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {INDEX} but missing")
        try:
            tensors = load_file(file)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: cannot read safetensors ({e}); the file may be truncated") from None
        # safetensors aligns tensor data to 8 bytes only; oneDNN/MKL pick other kernels (another summation
        # order, so other low bits) for unaligned operands. Copying to 64-byte-aligned memory makes a converted
        # model compute bit-identically to the original.
        hf.update({k: t if t.data_ptr() % 64 == 0 else t.clone() for k, t in tensors.items()})
    sd = from_hf_state_dict(args, hf, path)
    if not args.tie_embeddings and "output.weight" not in sd:
        raise CheckpointError(f"{path}: missing tensor 'lm_head.weight' and tie_word_embeddings is false")
    check_state_dict(args, sd, path)
    return args, sd, config


def write_hf(
    path: str | Path,
    args: ModelArgs,
    sd: dict[str, torch.Tensor],
    *,
    extra_config: dict[str, Any] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> None:
    """Write config.json and safetensors shards (with an index when there is more than one) into `path`."""
    path = Path(path)
    check_state_dict(args, sd, "state dict to save")
    if args.tie_embeddings and not tensors_tied(sd):
        raise CheckpointError("state dict to save: tie_embeddings is set but output.weight differs from the embedding")
    hf = {k: v.contiguous() for k, v in to_hf_state_dict(args, sd).items()}
    dtype = hf["model.embed_tokens.weight"].dtype
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in hf.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    names = (
        [SINGLE]
        if len(shards) == 1
        else [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, 1 + len(shards))]
    )
    for name, shard in zip(names, shards, strict=True):
        with atomic_file(path / name) as f:
            f.write(save(shard, metadata={"format": "pt"}))
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in hf.values())},
            "weight_map": {k: n for n, shard in zip(names, shards, strict=True) for k in shard},
        }
        with atomic_file(path / INDEX, "w") as f:
            json.dump(index, f, indent=2)
    with atomic_file(path / CONFIG, "w") as f:
        json.dump(hf_config_from_args(args, dtype, extra_config), f, indent=2)
    # transformers' generate reads its stop ids from generation_config.json when there is one, config.json otherwise.
    ids = {k: v for k, v in (extra_config or {}).items() if k in _TOKEN_IDS and v is not None}
    if "eos_token_id" in ids:
        with atomic_file(path / GENERATION_CONFIG, "w") as f:
            json.dump(ids, f, indent=2)
