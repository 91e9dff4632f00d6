"""Llama 3's tokenizer: tiktoken BPE over Meta's 128K `tokenizer.model`, plus 256 special tokens.

The rank file is never copied into herd: it comes from a Meta checkpoint directory or from the copy that the
`llama-models` package ships. Token ids match `llama_models.llama3.tokenizer.Tokenizer` exactly, long inputs
included, because the input is cut into the same bounded pieces before tiktoken sees it.
"""

import base64
import binascii
import importlib.util
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import tiktoken

from herd.errors import TokenizerError
from herd.tokenizer.base import STOP_TOKEN_TEXTS, Tokenizer

# Pre-tokenization regex of Llama 3 (as in Meta's reference and the HF tokenizer.json).
PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Ids from the first special id (128000 for Meta's file) on, in order: the table of Meta's reference tokenizer
# (llama_models.llama3.tokenizer). Published HF tokenizer.json files name 128005 and 128011 reserved tokens instead
# of <|step_id|> and <|image|>; the ids of every token with a role are the same in both.
_NAMED_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
NUM_SPECIAL_TOKENS = 256
SPECIAL_TOKENS = _NAMED_SPECIAL_TOKENS + [
    f"<|reserved_special_token_{i}|>" for i in range(2, 2 + NUM_SPECIAL_TOKENS - len(_NAMED_SPECIAL_TOKENS))
]

# tiktoken panics on very long inputs and is slow on very long runs of whitespace or of non-whitespace
# (openai/tiktoken#195). Meta's reference cuts the input at these limits; herd cuts at the same places so that
# its ids stay identical to the reference on any input.
MAX_ENCODE_CHARS = 400_000
MAX_RUN_CHARS = 25_000
_RUN = re.compile(r"\s+|\S+")


def packaged_model_path() -> Path:
    """The 128K `tokenizer.model` inside the installed `llama-models` package."""
    spec = importlib.util.find_spec("llama_models")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("package llama-models is not installed; pass the path of a Llama 3 tokenizer.model")
    return Path(spec.submodule_search_locations[0]) / "llama3" / "tokenizer.model"


def load_ranks(path: Path) -> dict[bytes, int]:
    """Read a tiktoken rank file: one `base64(token) rank` pair per line."""
    if not path.is_file():
        raise TokenizerError(f"tokenizer file not found: {path}")
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error):
                raise TokenizerError(
                    f"{path}:{lineno}: not a tiktoken BPE file (expected 'base64-token rank' lines); "
                    "SentencePiece models need their tokenizer.json"
                ) from None
    return ranks


def bounded_pieces(text: str) -> Iterator[str]:
    """Cut `text` where Meta's reference does: every MAX_ENCODE_CHARS characters, then every MAX_RUN_CHARS
    characters inside a run of whitespace or of non-whitespace."""
    for start in range(0, len(text), MAX_ENCODE_CHARS):
        chunk = text[start : start + MAX_ENCODE_CHARS]
        cut = 0
        for run in _RUN.finditer(chunk):
            for pos in range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS):
                yield chunk[cut:pos]
                cut = pos
        yield chunk[cut:]


class Llama3Tokenizer(Tokenizer):
    """Meta's Llama 3 tokenizer (128,000 BPE tokens + 256 special tokens) and the Llama 3 dialog format."""

    bos_id: int
    """<|begin_of_text|>: always present, unlike in the base class."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        path = Path(model_path) if model_path is not None else packaged_model_path()
        ranks = load_ranks(path)
        if len(ranks) < 256 or sorted(ranks.values()) != list(range(len(ranks))):
            raise TokenizerError(f"{path}: ranks must be 0..N-1 with N >= 256 (every single byte); got {len(ranks)}")
        self.num_base_tokens = len(ranks)
        self.special_tokens = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding(
            name=f"llama3:{path}", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=self.special_tokens
        )
        self.path = path
        self.vocab_size = len(ranks) + NUM_SPECIAL_TOKENS
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.pad_id = self.special_tokens["<|finetune_right_pad_id|>"]
        self.stop_ids = frozenset(i for name, i in self.special_tokens.items() if name in STOP_TOKEN_TEXTS)
        self.add_bos = True

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects str, got {type(text).__name__}")
        ids: list[int] = []
        for piece in bounded_pieces(text):
            if allow_special:
                ids.extend(self._enc.encode(piece, allowed_special="all"))
            else:
                ids.extend(self._enc.encode_ordinary(piece))
        return self._add_bos_eos(ids, bos, eos)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(self._check_ids(ids))

    def encode_chat(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True, **variables: Any
    ) -> list[int]:
        """The Llama 3 / 3.1 dialog format of `ChatFormat` (tool calls included). `variables` are ignored: Llama 3
        offers tools in its system prompt, which `herd.tools` writes."""
        from herd.tokenizer.chat_format import ChatFormat, Message

        dialog = [Message.from_dict(m, index=i) for i, m in enumerate(messages)]
        if add_generation_prompt:
            return ChatFormat(self).encode_dialog_prompt(dialog)
        return ChatFormat(self).encode_dialog(dialog)[0]
