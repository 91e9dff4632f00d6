"""Tokenizers run by the HF `tokenizers` library, loaded from an HF model directory or from GGUF metadata.

An HF directory carries a complete pipeline in `tokenizer.json`. A GGUF file carries only the vocabulary, the
merges and the name of a pre-tokenizer (`tokenizer.ggml.pre`), whose meaning is defined by llama.cpp; herd builds
the same pipeline from them, so a GGUF model tokenizes here as it does in llama.cpp. Chat templates are rendered
with jinja2 the way transformers renders them.
"""

import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, cast

import jinja2
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as RustTokenizer

from herd.errors import TokenizerError, first_line
from herd.tokenizer.base import STOP_TOKEN_TEXTS, Tokenizer
from herd.tokenizer.llama3 import PATTERN as LLAMA3_REGEX
from herd.tokenizer.template import BoundedSandbox, render_bounded

# GGUF `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type) that become added tokens.
GGUF_CONTROL = 3
GGUF_USER_DEFINED = 4

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# llama.cpp applies these one after the other to a GGUF without a `tokenizer.ggml.pre` (its "default" type).
DEFAULT_REGEXES = (r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]")


def _split_then_bytes(*patterns: str) -> pre_tokenizers.PreTokenizer:
    # llama.cpp runs each regex over the pieces of the previous one, keeping matches and gaps as pieces: that is
    # what Split(behavior="isolated") does. Byte-level mapping comes last, once the text is cut.
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in patterns]
    return pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# `tokenizer.ggml.pre` names grouped by the pre-tokenizer llama.cpp gives them; "default" is its own group.
LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3")
DIGITS_GPT2_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell")
GPT2_PRE = ("gpt-2", "mpt", "olmo", "jais")


def gguf_pre_tokenizer(pre: str, source: str) -> tuple[pre_tokenizers.PreTokenizer, bool]:
    """The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre == pre`, and whether BPE ignores merges.

    With ignore_merges a piece that is already a vocabulary entry becomes that token directly, as in tiktoken
    (Llama 3 relies on it).
    """
    if pre in LLAMA3_PRE:
        return _split_then_bytes(LLAMA3_REGEX), True
    if pre in DIGITS_GPT2_PRE:
        # Every digit is a piece of its own before the GPT-2 regex runs (the original SmolLM2 tokenizer.json).
        digits = pre_tokenizers.Digits(individual_digits=True)
        return pre_tokenizers.Sequence([digits, pre_tokenizers.ByteLevel(add_prefix_space=False)]), False
    if pre in GPT2_PRE:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False
    if pre == "default":
        return _split_then_bytes(*DEFAULT_REGEXES), False
    known = ", ".join(sorted([*LLAMA3_PRE, *DIGITS_GPT2_PRE, *GPT2_PRE, "default"]))
    raise TokenizerError(f"{source}: tokenizer.ggml.pre {pre!r} is not supported; herd knows {known}")


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` behind herd's interface, with the model's jinja chat template.

    `tokenizers` always matches added special tokens in the input, so the tokenizer is kept twice: as given, for
    `allow_special=True`, and a copy with `encode_special_tokens` on, which tokenizes special-token strings as
    ordinary text.
    """

    def __init__(
        self,
        tokenizer: RustTokenizer,
        *,
        eos_id: int,
        bos_id: int | None = None,
        pad_id: int | None = None,
        stop_ids: Iterable[int] = (),
        add_bos: bool = False,
        chat_template: str | None = None,
        source: str = "tokenizer",
    ) -> None:
        # A tokenizer.json may ask for truncation or padding; herd's callers handle lengths themselves.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self._plain = RustTokenizer.from_str(tokenizer.to_str())
        self._plain.encode_special_tokens = True
        self.source = source
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.add_bos = add_bos and bos_id is not None
        self.special_tokens = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        named_stops = (i for text, i in self.special_tokens.items() if text in STOP_TOKEN_TEXTS)
        self.stop_ids = frozenset({eos_id, *stop_ids, *named_stops})
        self.chat_template = chat_template
        self._template: jinja2.Template | None = None
        # Proper prefixes and suffixes of the special strings: text ending or starting with one may complete a
        # special token together with the template's text around it.
        self._special_heads = {s[:k] for s in self.special_tokens for k in range(1, len(s))}
        self._special_tails = {s[k:] for s in self.special_tokens for k in range(1, len(s))}
        self._longest_part = max(map(len, self._special_heads), default=0)

    @classmethod
    def from_dir(cls, path: str | Path) -> "HFTokenizer":
        """Load an HF model directory: tokenizer.json, tokenizer_config.json, chat_template.jinja and
        generation_config.json (extra eos ids) where present."""
        path = Path(path)
        try:
            tok = RustTokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # tokenizers raises plain Exception for unreadable or malformed files
            raise TokenizerError(f"{path / 'tokenizer.json'}: cannot load: {e}") from None
        config = _read_json(path / "tokenizer_config.json")
        generation = _read_json(path / "generation_config.json")

        def token_id(field: str) -> int | None:
            value = config.get(field)
            text = value.get("content") if isinstance(value, dict) else value
            if text is None:
                return None
            if not isinstance(text, str):
                raise TokenizerError(f"{path / 'tokenizer_config.json'}: {field} must be a token string, got {text!r}")
            if (token := tok.token_to_id(text)) is None:
                raise TokenizerError(f"{path / 'tokenizer_config.json'}: {field} {text!r} is not in the vocabulary")
            return token

        gen_eos = generation.get("eos_token_id")
        gen_eos_ids = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        eos_id = token_id("eos_token")
        if eos_id is None:
            if not gen_eos_ids:
                raise TokenizerError(f"{path}: no eos_token in tokenizer_config.json nor generation_config.json")
            eos_id = gen_eos_ids[0]
        bos_id = token_id("bos_token")
        add_bos = config.get("add_bos_token")
        if not isinstance(add_bos, bool):
            # Llama 3 style: the post-processor of tokenizer.json is what prepends bos.
            add_bos = bos_id is not None and tok.encode("a", add_special_tokens=True).ids[:1] == [bos_id]
        return cls(
            tok,
            eos_id=eos_id,
            bos_id=bos_id,
            pad_id=token_id("pad_token"),
            stop_ids=gen_eos_ids,
            add_bos=add_bos,
            chat_template=_read_chat_template(path, config),
            source=str(path),
        )

    @classmethod
    def from_gguf(cls, path: str | Path) -> "HFTokenizer":
        """Build the tokenizer described by a GGUF file's `tokenizer.*` metadata (byte-level BPE only)."""
        from herd.errors import CheckpointError
        from herd.ggufio import read_gguf_metadata

        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"GGUF file not found: {path}")
        try:
            metadata = read_gguf_metadata(path)
        except CheckpointError as e:
            raise TokenizerError(str(e)) from None
        return cls.from_gguf_metadata(metadata, path)

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any], path: str | Path) -> "HFTokenizer":
        """Like `from_gguf`, from metadata already read (`path` only names the source in messages)."""

        def get(key: str, default: Any = None) -> Any:
            return metadata.get(key, default)

        kind = get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise TokenizerError(
                f"{path}: tokenizer.ggml.model is {kind!r}; herd reads only 'gpt2' (byte-level BPE) GGUF tokenizers"
            )
        tokens: list[str] = get("tokenizer.ggml.tokens", [])
        merges: list[str] = get("tokenizer.ggml.merges", [])
        types: list[int] = get("tokenizer.ggml.token_type", [])
        if not tokens or len(types) != len(tokens):
            raise TokenizerError(f"{path}: tokenizer.ggml.tokens / token_type are missing or of different lengths")
        pairs = [tuple(m.split(" ")) for m in merges]
        if bad := next((m for m, p in zip(merges, pairs, strict=True) if len(p) != 2), None):
            raise TokenizerError(f"{path}: tokenizer.ggml.merges entry {bad!r} is not two tokens")

        pre_tokenizer, ignore_merges = gguf_pre_tokenizer(get("tokenizer.ggml.pre", "default"), str(path))
        vocab = {token: i for i, token in enumerate(tokens)}
        two = cast("list[tuple[str, str]]", pairs)  # every entry was checked to be two tokens above
        try:
            tok = RustTokenizer(models.BPE(vocab=vocab, merges=two, ignore_merges=ignore_merges))
        except Exception as e:  # tokenizers raises a bare Exception, e.g. for a merge of a token not in the vocabulary
            raise TokenizerError(f"{path}: tokenizer.ggml vocabulary and merges do not fit ({first_line(e)})") from None
        tok.pre_tokenizer = pre_tokenizer
        tok.decoder = decoders.ByteLevel()
        kinds = list(zip(tokens, types, strict=True))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in kinds if k == GGUF_CONTROL])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in kinds if k == GGUF_USER_DEFINED])

        eos_id = get("tokenizer.ggml.eos_token_id")
        if eos_id is None:
            raise TokenizerError(f"{path}: tokenizer.ggml.eos_token_id is missing")
        extra_stops = [get(k) for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")]
        return cls(
            tok,
            eos_id=eos_id,
            bos_id=get("tokenizer.ggml.bos_token_id"),
            pad_id=get("tokenizer.ggml.padding_token_id"),
            stop_ids=[i for i in extra_stops if i is not None],
            add_bos=bool(get("tokenizer.ggml.add_bos_token", False)),
            chat_template=get("tokenizer.chat_template"),
            source=str(path),
        )

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects str, got {type(text).__name__}")
        tok = self._tok if allow_special else self._plain
        return self._add_bos_eos(tok.encode(text, add_special_tokens=False).ids, bos, eos)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(self._check_ids(ids), skip_special_tokens=False)

    def render_chat(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        """The chat template's text for `messages`; `variables` (tools, documents...) go to the template as is."""
        if self.chat_template is None:
            raise TokenizerError(f"{self.source} has no chat template, so it cannot encode a chat")
        if self._template is None:
            self._template = self._compile(self.chat_template)
        bos = self._tok.id_to_token(self.bos_id) if self.bos_id is not None else ""
        values = {"messages": messages, "add_generation_prompt": add_generation_prompt, "bos_token": bos,
                  "eos_token": self._tok.id_to_token(self.eos_id), **variables}  # fmt: skip
        template = self._template
        try:
            return render_bounded(lambda: template.render(**values), str(self.source))
        except TokenizerError:  # the template's own raise_exception
            raise
        except Exception as e:  # a template is data: whatever its code raises (TypeError, ZeroDivisionError...)
            first = first_line(e)
            raise TokenizerError(f"chat template of {self.source}: {type(e).__name__}: {first}") from None

    @property
    def supports_tools(self) -> bool:
        # Templates that offer tools read them from a `tools` variable, as transformers passes them.
        return self.chat_template is not None and re.search(r"\btools\b", self.chat_template) is not None

    def encode_chat(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True, **variables: Any
    ) -> list[int]:
        """Render the chat template (`variables` go to it as in `render_chat`) and encode its text, with special
        tokens matched in the template's own text only. The template usually writes bos itself; it is prepended
        only if the model wants one and the template did not."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt, **variables)
        ids, _ = self._encode_rendered(messages, text, add_generation_prompt, variables)
        if self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:  # add_bos implies a bos_id
            ids.insert(0, self.bos_id)
        return ids

    def encode_dialog(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[bool]]:
        """A finished dialog and its loss mask, True on the text each assistant turn adds.

        The mask comes from the chat template itself, not from searching the text: rendering the dialog up to an
        assistant turn with the generation prompt gives what the model sees before it writes, rendering it with
        the turn gives what it wrote, and the tokens of the full dialog whose text starts between the two are the
        targets (the turn's end marker included, so the model learns to stop).
        """
        full = self.render_chat(messages, add_generation_prompt=False)
        spans = []
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            before = self.render_chat(messages[:i], add_generation_prompt=True)
            after = self.render_chat(messages[: i + 1], add_generation_prompt=False)
            if not (after.startswith(before) and full.startswith(after)):
                raise TokenizerError(
                    f"chat template of {self.source} does not render a dialog as a growing prefix (turn {i}), so "
                    "its assistant turns cannot be told apart for a loss mask"
                )
            spans.append((len(before), len(after)))
        ids, starts = self._encode_rendered(messages, full, False, {})
        mask = [any(start <= begin < end for start, end in spans) for begin in starts]
        if self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:  # add_bos implies a bos_id
            ids, mask = [self.bos_id, *ids], [False, *mask]
        return ids, mask

    def _encode_rendered(
        self, messages: list[dict[str, Any]], text: str, add_generation_prompt: bool, variables: dict[str, Any]
    ) -> tuple[list[int], list[int]]:
        """Ids of `text`, the rendering of `messages`, and the offset in it where each starts. Special strings that
        a message's content brings stay text (text a user typed never becomes a control token); the template's
        own are control tokens.

        Contents that could make a special token are located in the text by rendering them as sentinels. If no
        special token of the whole text touches them, its ids stand (so ordinary chats encode as they always
        did); otherwise the text is cut at the template's special tokens and the pieces between encoded as plain
        text, as `tokenizers` encodes the text between added tokens.
        """
        encoding = self._tok.encode(text, add_special_tokens=False)
        ids, offsets = list(encoding.ids), list(encoding.offsets)
        typed = {
            i: m["content"]
            for i, m in enumerate(messages)
            if isinstance(m.get("content"), str) and self._may_form_special(m["content"])
        }
        contents = self._content_spans(messages, typed, text, add_generation_prompt, variables) if typed else []
        if contents is None:
            if any(s in content for content in typed.values() for s in self.special_tokens):
                raise TokenizerError(
                    f"chat template of {self.source} changes message content, so control-token strings typed in "
                    "it cannot be kept as text"
                )
            contents = []

        specials = {i: name for name, i in self.special_tokens.items()}

        def typed_special(token: int, start: int, end: int) -> bool:
            # The span also covers whitespace the token strips; what counts is where its own string lies.
            name = specials[token]
            at = text.find(name, start, end)
            begin, finish = (at, at + len(name)) if at >= 0 else (start, end)
            return any(begin < c_end and c_start < finish for c_start, c_end in contents)

        found = [(t, s, e) for t, (s, e) in zip(ids, offsets, strict=True) if t in specials]
        kept = [(t, s, e) for t, s, e in found if not typed_special(t, s, e)]
        if len(kept) == len(found):
            return ids, [start for start, _ in offsets]
        ids, starts, cut = [], [], 0
        for token, start, end in [*kept, (None, len(text), len(text))]:
            piece = self._plain.encode(text[cut:start], add_special_tokens=False)
            ids += piece.ids
            starts += [cut + s for s, _ in piece.offsets]
            if token is not None:
                ids.append(token)
                starts.append(start)
            cut = end
        return ids, starts

    def _may_form_special(self, text: str) -> bool:
        """Whether `text` holds a special string, or starts or ends with part of one."""
        if any(s in text for s in self.special_tokens):
            return True
        ends = range(1, min(len(text), self._longest_part) + 1)
        return any(text[-k:] in self._special_heads or text[:k] in self._special_tails for k in ends)

    def _content_spans(
        self,
        messages: list[dict[str, Any]],
        contents: dict[int, str],
        text: str,
        add_generation_prompt: bool,
        variables: dict[str, Any],
    ) -> list[tuple[int, int]] | None:
        """Where each of `contents` (message index -> content) lies in `text`, the rendering of `messages`; None
        unless the template writes each exactly once, as is, and in order."""
        # Private-use characters: no template writes them and no tokenizer gives them a meaning.
        marks = {i: f"\ue000{i}\ue001" for i in contents}
        marked = [{**m, "content": marks[i]} if i in marks else m for i, m in enumerate(messages)]
        rest = self.render_chat(marked, add_generation_prompt=add_generation_prompt, **variables)
        if any(rest.count(mark) != 1 for mark in marks.values()):
            return None
        spans, real = [], ""
        for i, mark in marks.items():
            before, found, rest = rest.partition(mark)
            if not found:  # out of order
                return None
            real += before
            spans.append((len(real), len(real) + len(contents[i])))
            real += contents[i]
        return spans if real + rest == text else None

    def save(self, directory: str | Path) -> None:
        """Write tokenizer.json + tokenizer_config.json so that transformers and `from_dir` load this tokenizer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / "tokenizer.json"))
        name = self._tok.id_to_token
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None if self.bos_id is None else name(self.bos_id),
            "eos_token": name(self.eos_id),
            "pad_token": None if self.pad_id is None else name(self.pad_id),
            "add_bos_token": self.add_bos,
            "clean_up_tokenization_spaces": False,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))

    def _compile(self, template: str) -> jinja2.Template:
        # The environment transformers renders chat templates in (templates are written against it), with bounds.
        env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = self._raise_from_template
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            return env.from_string(template)
        except Exception as e:  # TemplateSyntaxError mostly; a template is data, so any failure is its own
            first = first_line(e)
            raise TokenizerError(f"chat template of {self.source} does not compile: {first}") from None

    def _raise_from_template(self, message: str) -> NoReturn:
        raise TokenizerError(f"chat template of {self.source}: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # jinja's own tojson escapes HTML characters, which would change the prompt text.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_chat_template(path: Path, config: dict[str, Any]) -> str | None:
    # Newer transformers save the template as its own file; older ones inline it, sometimes as a list of named ones.
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{path / 'tokenizer_config.json'}: chat_template is not a string")
    return template
