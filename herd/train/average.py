"""`herd ckpt average`: the element-wise mean of several checkpoints' weights (Llama 3 averaged the models of its
annealing runs and of its post-training rounds), written as a Meta or HF checkpoint.

Inputs are training checkpoints (`runs/x/checkpoints/step-...`) or any model directory/file herd reads (Meta, HF,
GGUF). All must have the same shape. The mean is taken in float32; one input is a plain export.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from herd.errors import CheckpointError
from herd.formats import Checkpoint, cast_state_dict, read_checkpoint, write_checkpoint
from herd.model import ModelArgs, build_model
from herd.tokenizer import HFTokenizer, Tokenizer, load_tokenizer
from herd.train.checkpoint import is_training_checkpoint, load_dcp, read_params

_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def read_weights(path: Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """Model shape and float32 weights (Meta names) of a training checkpoint or a model checkpoint."""
    if is_training_checkpoint(path):
        args = read_params(path)
        model = build_model(args, device="cpu", init=False)
        sd = model.state_dict()
        load_dcp({"model": sd}, path, "cannot read its model weights")
        return args, {k: v.float() for k, v in sd.items()}
    ckpt = read_checkpoint(path)
    return ckpt.args, cast_state_dict(ckpt.state_dict, torch.float32)


def average(paths: list[Path]) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    if not paths:
        raise CheckpointError("no checkpoints to average")
    args, total = read_weights(paths[0])
    for path in paths[1:]:
        other_args, sd = read_weights(path)
        if other_args != args:
            raise CheckpointError(f"{path}: shape differs from {paths[0]} ({other_args} vs {args})")
        if sd.keys() != total.keys():
            raise CheckpointError(f"{path}: holds other tensors than {paths[0]}")
        for k, v in sd.items():
            total[k] += v
    return args, {k: v / len(paths) for k, v in total.items()}


def average_to(paths: list[Path], out: Path, *, to: str = "meta", dtype: torch.dtype | None = None) -> ModelArgs:
    """Average `paths` into a new checkpoint directory `out`, with the first input's tokenizer files beside it."""
    args, sd = average(paths)
    if dtype is not None:
        sd = cast_state_dict(sd, dtype)
    source = paths[0] if paths[0].is_dir() else paths[0].parent
    files = [name for name in _TOKENIZER_FILES if (source / name).is_file()]
    ggufs = sorted(source.glob("*.gguf"))
    tokenizer: Tokenizer | None = None
    if ggufs and not files:  # shards packed with a GGUF file's tokenizer: saved as tokenizer.json + template
        tokenizer = HFTokenizer.from_gguf(ggufs[0])
    elif files and to == "hf":  # read for its token ids only: the files are copied as they are
        tokenizer = load_tokenizer(source)

    def copy_tokenizer(tmp: Path) -> None:
        for name in files:
            shutil.copyfile(source / name, tmp / name)
        if not files and isinstance(tokenizer, HFTokenizer):
            tokenizer.save(tmp)

    # An HF export carries the tokenizer's bos/eos ids (end-of-turn ids included), or transformers never stops.
    ids = tokenizer.generation_ids() if tokenizer is not None and to == "hf" else {}
    ckpt = Checkpoint(args=args, state_dict=sd, format=to, path=out, metadata=ids)
    write_checkpoint(out, ckpt, to, assets=copy_tokenizer)
    return args


def format_average(paths: list[Path], out: str | Path, to: str, args: ModelArgs, seconds: float) -> str:
    """What `herd ckpt average` prints once `average_to(paths, out, to=to)` returned `args`."""
    what = f"averaged {len(paths)} checkpoints" if len(paths) > 1 else f"exported {paths[0]}"
    return f"{what} (dim {args.dim}, {args.n_layers} layers) -> {out} ({to}) in {seconds:.1f}s"
