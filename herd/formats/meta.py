"""Meta's format: `params.json` + `consolidated.NN.pth`, one file per model-parallel rank.

Meta's reference model (fairscale layers) splits each tensor across ranks: column-parallel
layers (wq, wk, wv, w1, w3, output) and the vocab-parallel embedding along dim 0, row-parallel
layers (wo, w2) along dim 1; norms are replicated. Merging concatenates along the same dims.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from herd.errors import CheckpointError, first_line
from herd.fileio import atomic_file, read_json
from herd.formats.common import args_from_fields, check_state_dict, tensors_tied
from herd.model import PRESETS, ModelArgs, RopeScaling

PARAMS = "params.json"
_DIM1 = ("attention.wo.weight", "feed_forward.w2.weight")
_REPLICATED = ("norm.weight",)  # matches attention_norm / ffn_norm / norm by suffix
# Llama 3.2 1B/3B (dim, n_layers): params.json says only use_scaled_rope; the published HF configs
# use factor 32, Meta's reference hard-codes 8 (https://github.com/meta-llama/llama-models/issues/241).
# These two also tie the output projection to the embedding.
_LLAMA32_SHAPES = {(2048, 16), (3072, 28)}


def split_dim(name: str) -> int | None:
    """Dimension along which Meta shards `name` across model-parallel ranks (None: replicated)."""
    if name.endswith(_REPLICATED):
        return None
    return 1 if name.endswith(_DIM1) else 0


def shard_files(path: Path) -> list[Path]:
    return sorted(path.glob("consolidated.*.pth"))


def is_meta_dir(path: Path) -> bool:
    return path.is_dir() and (path / PARAMS).is_file() and bool(shard_files(path))


def args_from_params(params: dict[str, Any], source: Path) -> ModelArgs:
    """ModelArgs of a params.json; anything in it that does not fit is an error naming `source`."""
    return args_from_fields(_args_from_params, params, source)


def _args_from_params(params: dict[str, Any], source: Path) -> ModelArgs:
    for key in ("dim", "n_layers", "n_heads", "vocab_size"):
        if key not in params:
            raise CheckpointError(f"{source}: field {key!r} is missing")
    scaling = None
    llama32 = (params["dim"], params["n_layers"]) in _LLAMA32_SHAPES and params["vocab_size"] == 128256
    if params.get("use_scaled_rope"):
        default = 32.0 if llama32 else 8.0
        scaling = RopeScaling(factor=float(params.get("rope_scaling_factor", default)))
    return ModelArgs(
        dim=params["dim"],
        n_layers=params["n_layers"],
        n_heads=params["n_heads"],
        n_kv_heads=params.get("n_kv_heads"),
        vocab_size=params["vocab_size"],
        multiple_of=params.get("multiple_of", 256),
        ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
        norm_eps=params.get("norm_eps", 1e-5),
        rope_theta=params.get("rope_theta", 500000.0),
        rope_scaling=scaling,
        tie_embeddings=params.get("tie_embeddings", llama32),
        max_seq_len=params.get("max_seq_len", 131072 if scaling else 8192),
    )


def params_from_args(args: ModelArgs) -> dict[str, Any]:
    """params.json that Meta's reference loads; extra keys (which it ignores) keep what it cannot express."""
    multiple_of, multiplier = _ffn_params(args)
    params: dict[str, Any] = {
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "vocab_size": args.vocab_size,
        "multiple_of": multiple_of,
        "ffn_dim_multiplier": multiplier,
        "norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "use_scaled_rope": args.rope_scaling is not None,
        "max_seq_len": args.max_seq_len,
    }
    if args.rope_scaling is not None:
        s = args.rope_scaling
        if (s.low_freq_factor, s.high_freq_factor, s.original_max_seq_len) != (1.0, 4.0, 8192):
            raise CheckpointError(f"Meta format cannot express rope scaling {s}; save as HF instead")
        params["rope_scaling_factor"] = s.factor
    assert args.head_dim is not None  # derived in ModelArgs.__post_init__
    if args.head_dim * args.n_heads != args.dim:
        raise CheckpointError(
            f"Meta format needs head_dim == dim / n_heads; got {args.head_dim} != {args.dim} / {args.n_heads}"
        )
    if args.tie_embeddings:
        params["tie_embeddings"] = True
    return params


def _ffn_params(args: ModelArgs) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that make Meta's formula give args.ffn_hidden_dim.

    Args read from HF configs only know the width: try their own values, then those of presets
    of the same dim (so Meta's own models get back Meta's own params.json), else construct a pair.
    """
    for c in [args, *(p for p in PRESETS.values() if p.dim == args.dim)]:
        if args.replace(multiple_of=c.multiple_of, ffn_dim_multiplier=c.ffn_dim_multiplier).ffn_hidden_dim == (
            args.ffn_hidden_dim
        ):
            return c.multiple_of, c.ffn_dim_multiplier
    # multiple_of = width, and a multiplier just under width / int(8 dim / 3), which rounds up to it.
    assert args.ffn_hidden_dim is not None  # derived in ModelArgs.__post_init__
    return args.ffn_hidden_dim, args.ffn_hidden_dim / int(8 * args.dim / 3) * (1 - 1e-9)


def read_meta(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor], dict[str, Any]]:
    """(args, herd state dict, params.json) from a Meta checkpoint directory, shards merged."""
    path = Path(path)
    if not (path / PARAMS).is_file():
        raise CheckpointError(f"{path / PARAMS}: not found (a Meta checkpoint directory needs params.json)")
    params = read_json(path / PARAMS, what="model parameters", error=CheckpointError)
    args = args_from_params(params, path / PARAMS)
    files = shard_files(path)
    if not files:
        raise CheckpointError(f"{path}: no consolidated.*.pth files")
    expected = [path / f"consolidated.{i:02d}.pth" for i in range(len(files))]
    if files != expected:
        missing = sorted(set(expected) - set(files))
        raise CheckpointError(f"{path}: shard files are not consecutive; missing {missing[0].name if missing else '?'}")
    shards = [_load_pth(f) for f in files]
    for f, shard in zip(files[1:], shards[1:], strict=True):
        if shard.keys() != shards[0].keys():
            diff = sorted(shard.keys() ^ shards[0].keys())
            raise CheckpointError(f"{f}: tensor names differ from {files[0].name} (e.g. {diff[0]!r})")
    sd: dict[str, torch.Tensor] = {}
    for name in shards[0]:
        if name.endswith("rope.freqs"):
            continue  # Llama 2 era buffer, derived from params
        dim = split_dim(name)
        parts = [s[name] for s in shards]
        sd[name] = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
    # The weights decide: a missing output, or one equal to the embedding, is tied.
    args.tie_embeddings = tensors_tied(sd)
    if args.tie_embeddings and "tok_embeddings.weight" in sd:
        sd.setdefault("output.weight", sd["tok_embeddings.weight"])
    check_state_dict(args, sd, path)
    return args, sd, params


def _load_pth(file: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # a corrupt file draws torch UserWarnings before it fails: one line only
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            sd = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    # A corrupt file fails inside torch's zip reader or its weights-only unpickler with whatever that code meets
    # (RuntimeError, KeyError, UnicodeDecodeError, EOFError...): every failure is the file's.
    except Exception as e:
        first = first_line(e)
        raise CheckpointError(f"{file}: cannot load ({first}); the file may be truncated or corrupt") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{file}: expected a dict of tensors, got {type(sd).__name__}")
    return sd


def write_meta(path: str | Path, args: ModelArgs, sd: dict[str, torch.Tensor], *, num_shards: int = 1) -> None:
    """Write params.json and `num_shards` consolidated files into `path`, split the way Meta splits them."""
    path = Path(path)
    check_state_dict(args, sd, "state dict to save")
    if args.tie_embeddings and not tensors_tied(sd):
        raise CheckpointError("state dict to save: tie_embeddings is set but output.weight differs from the embedding")
    params = params_from_args(args)
    for name, t in sd.items():
        dim = split_dim(name)
        if dim is not None and t.shape[dim] % num_shards:
            raise CheckpointError(
                f"cannot split {name!r} of shape {list(t.shape)} into {num_shards} shards along dim {dim}"
            )
    assert args.n_kv_heads is not None  # derived in ModelArgs.__post_init__
    if args.n_kv_heads % num_shards:
        raise CheckpointError(f"cannot split {args.n_kv_heads} kv heads into {num_shards} model-parallel shards")
    for rank in range(num_shards):
        shard = {}
        for name, t in sd.items():
            dim = split_dim(name)
            # A chunk is a view: clone it, or torch.save would write the whole underlying storage.
            # Tied models keep output.weight (Meta's reference always has an output layer).
            shard[name] = t if dim is None or num_shards == 1 else t.chunk(num_shards, dim=dim)[rank].clone()
        with atomic_file(path / f"consolidated.{rank:02d}.pth") as f:
            torch.save(shard, f)
    with atomic_file(path / PARAMS, "w") as f:
        json.dump(params, f, indent=2)
