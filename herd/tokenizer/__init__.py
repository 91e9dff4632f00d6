"""Tokenizers: Meta's Llama 3 tiktoken BPE, and HF / GGUF tokenizers through the `tokenizers` library."""

from pathlib import Path

from herd.errors import TokenizerError
from herd.tokenizer.base import StreamDecoder, Tokenizer
from herd.tokenizer.hf import HFTokenizer
from herd.tokenizer.llama3 import Llama3Tokenizer

__all__ = ["HFTokenizer", "Llama3Tokenizer", "StreamDecoder", "Tokenizer", "load_tokenizer"]


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """The tokenizer at `path`, chosen by what is there.

    None or "llama3": Meta's Llama 3 tokenizer shipped with llama-models. A `.gguf` file: its embedded tokenizer.
    A directory: `tokenizer.json` (HF) first, else a tiktoken `tokenizer.model` (Meta checkpoint). A file named
    `tokenizer.json` or `tokenizer.model` is read as its directory would be.
    """
    if path is None or str(path) == "llama3":
        return Llama3Tokenizer()
    path = Path(path)
    if path.is_file():
        if path.suffix == ".gguf":
            return HFTokenizer.from_gguf(path)
        if path.name == "tokenizer.json":
            return HFTokenizer.from_dir(path.parent)
        if path.name == "tokenizer.model":
            return Llama3Tokenizer(path)
    elif path.is_dir():
        if (path / "tokenizer.json").is_file():
            return HFTokenizer.from_dir(path)
        if (path / "tokenizer.model").is_file():
            return Llama3Tokenizer(path / "tokenizer.model")
    what = "no such file or directory" if not path.exists() else "found none of them"
    raise TokenizerError(
        f"no tokenizer at {path}: looked for a .gguf file or a directory with tokenizer.json or tokenizer.model "
        f"({what})"
    )
