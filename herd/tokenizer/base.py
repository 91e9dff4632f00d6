"""The interface every tokenizer in herd implements, and streaming decode built on it.

Two families sit behind it: Meta's tiktoken BPE for Llama 3 (`llama3.py`) and anything the `tokenizers` library
can run, loaded from an HF directory or from GGUF metadata (`hf.py`). Generation code only sees `Tokenizer`.
"""

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

from herd.errors import TokenizerError

# Tokens that end an assistant turn in the vocabularies herd meets (Llama 3, ChatML, Phi, Gemma), the same
# end-of-generation set llama.cpp collects. A tokenizer stops on those of them it has, plus its eos.
STOP_TOKEN_TEXTS = frozenset(
    {
        "<|end_of_text|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|end|>",
        "<end_of_turn>",
    }
)


class Tokenizer(ABC):
    """Text <-> token ids, plus the model's chat format.

    Subclasses set the attributes in `__init__`. `stop_ids` holds every id that ends an assistant turn (eos,
    end-of-turn, end-of-message...), which is what generation should stop on, not only `eos_id`.
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int | None
    stop_ids: frozenset[int]
    add_bos: bool
    """Whether the model expects `bos_id` at the start of every sequence (plain completions included)."""

    def generation_ids(self) -> dict[str, int | list[int] | None]:
        """config.json's and generation_config.json's token ids: transformers stops at `eos_token_id`, so it holds
        every end-of-turn id (a list when there are several), or generation runs on past the reply."""
        stops = sorted(self.stop_ids)
        return {"bos_token_id": self.bos_id, "eos_token_id": stops if len(stops) > 1 else self.eos_id}

    @abstractmethod
    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings inside `text` are ordinary text unless `allow_special`."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; special tokens are rendered as their text, broken UTF-8 as U+FFFD."""

    @property
    def supports_tools(self) -> bool:
        """Whether `encode_chat` writes a `tools=[...]` variable (OpenAI-style function specs) into the prompt."""
        return False

    @abstractmethod
    def encode_chat(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True, **variables: Any
    ) -> list[int]:
        """Token ids of a dialog of `{"role": ..., "content": ...}` messages in the model's chat format.

        With `add_generation_prompt` the ids end with an open assistant turn for the model to complete.
        `variables` (`tools`...) are for chat templates that use them. Special-token strings in a message's
        content are ordinary text.
        """

    def _add_bos_eos(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        if bos:
            if self.bos_id is None:
                raise TokenizerError(f"{type(self).__name__} has no bos token; call encode with bos=False")
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        checked = list(ids)
        if checked and (min(checked) < 0 or max(checked) >= self.vocab_size):
            bad = next(i for i in checked if not 0 <= i < self.vocab_size)
            raise TokenizerError(f"token id {bad} is outside the vocabulary (size {self.vocab_size})")
        return checked


class StreamDecoder:
    """Turns generated token ids into text as soon as they form whole characters.

    Decoding one token at a time fails two ways: byte-level BPE splits a multi-byte character over several tokens
    (each alone decodes to U+FFFD), and SentencePiece-style decoders drop the leading space of whichever token
    starts the text. So, as streaming servers do, each push decodes a short window twice, up to the text already
    released (`read`) and up to the end, and releases the difference once it no longer ends in an incomplete
    character. The window then restarts at the last release, keeping one step of context, so the work per token
    stays constant however long the generation runs.
    """

    MAX_PENDING = 16
    """A U+FFFD still held back after this many tokens comes from invalid bytes, not an incomplete character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []  # the window: ids since the previous release point
        self._read = 0  # self._ids[:self._read] were released already and serve as context

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text it completes (often "", never a broken character)."""
        self._ids.append(token_id)
        done = self._tokenizer.decode(self._ids[: self._read])
        text = self._tokenizer.decode(self._ids)
        incomplete = len(text) <= len(done) or text.endswith("\ufffd")
        if incomplete and len(self._ids) - self._read <= self.MAX_PENDING:
            return ""
        self._ids = self._ids[self._read :]
        self._read = len(self._ids)
        return text[len(done) :]

    def flush(self) -> str:
        """End the stream: return whatever text is still held back, U+FFFD included."""
        done = self._tokenizer.decode(self._ids[: self._read])
        text = self._tokenizer.decode(self._ids)
        self._ids, self._read = [], 0
        return text[len(done) :]


def format_tokens(
    tokenizer: Tokenizer, ids: Sequence[int], loss_mask: Sequence[int] | None = None, *, as_json: bool = False
) -> str:
    """What `herd tokenize` prints: one line per token (id, piece, `[target]` where the loss mask is set) and the
    count; or, `as_json`, {"tokens", "count", "pieces", "loss_mask" (when given)} on one line."""
    pieces = [tokenizer.decode([i]) for i in ids]
    if as_json:
        out: dict[str, Any] = {"tokens": ids, "count": len(ids), "pieces": pieces}
        if loss_mask is not None:
            out["loss_mask"] = loss_mask
        return json.dumps(out, ensure_ascii=False)
    lines = []
    for k, (i, piece) in enumerate(zip(ids, pieces, strict=True)):
        target = "" if loss_mask is None else ("  [target]" if loss_mask[k] else "")
        lines.append(f"{i:>7}  {piece!r}{target}")
    lines.append(f"{len(ids)} tokens")
    return "\n".join(lines)
