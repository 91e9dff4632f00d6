import time
from pathlib import Path

import pytest
from llama_models.datatypes import RawMessage
from llama_models.llama3.chat_format import ChatFormat
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

from herd.errors import TokenizerError
from herd.tokenizer import Llama3Tokenizer, StreamDecoder, load_tokenizer
from herd.tokenizer import llama3 as llama3_module
from herd.tokenizer.llama3 import packaged_model_path

STRINGS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've done what he'd said.",
    "ALL CAPS I'M SHOUTING THEY'RE",
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1,000,000 0x1F",
    "Français: déjà vu, naïve café, œuvre.",
    "Deutsch: Größenwahn, Straße, Äpfel und Öl.",
    "Русский текст: съешь же ещё этих мягких французских булок.",
    "Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "中文：我能吞下玻璃而不伤身体。日本語：私はガラスを食べられます。한국어: 나는 유리를 먹을 수 있어요.",
    "العربية: أنا قادر على أكل الزجاج و هذا لا يؤلمني.",
    "עברית: אני יכול לאכול זכוכית וזה לא מזיק לי.",
    "हिन्दी: मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती.",
    "ไทย: ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ",
    "Emoji: 🤖👍🏽👨‍👩‍👧‍👦🏳️‍🌈 ❤️ 🇫🇷",
    "Combining marks: e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o\u0358",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot\r\n",
    "    \t\t  leading and trailing whitespace \n\n\n   ",
    "a" + " " * 40 + "b" + "\n" * 10 + "c\r\n\r\n\td",
    "<|begin_of_text|> <|eot_id|><|start_header_id|>user<|end_header_id|> <|reserved_special_token_1|>",
    "<|not_a_token|> <| eot_id |> <|EOT_ID|> |>< <||>",
    "Zero-width: a\u200bb\u200cc\u200dd\ufeffe, NBSP:\u00a0x, ideographic space:\u3000y",
    "Math: ∑ᵢ xᵢ² ≤ ∫₀^∞ e^{-x} dx, ℝ³ → ℂ",
    "URL https://example.com/a?b=c&d=e#f and email someone@example.org",
]

ROLE_TOKENS = [
    ("<|begin_of_text|>", 128000),
    ("<|end_of_text|>", 128001),
    ("<|finetune_right_pad_id|>", 128004),
    ("<|start_header_id|>", 128006),
    ("<|end_header_id|>", 128007),
    ("<|eom_id|>", 128008),
    ("<|eot_id|>", 128009),
    ("<|python_tag|>", 128010),
]


@pytest.fixture(scope="module")
def tok() -> Llama3Tokenizer:
    return Llama3Tokenizer()


@pytest.fixture(scope="module")
def ref() -> MetaTokenizer:
    return MetaTokenizer(packaged_model_path())


@pytest.mark.parametrize("text", STRINGS)
def test_encode_is_token_identical_to_meta_reference(tok: Llama3Tokenizer, ref: MetaTokenizer, text: str) -> None:
    assert tok.encode(text) == ref.encode(text, bos=False, eos=False)
    assert tok.encode(text, bos=True, eos=True) == ref.encode(text, bos=True, eos=True)
    assert tok.encode(text, allow_special=True) == ref.encode(text, bos=False, eos=False, allowed_special="all")
    assert tok.decode(tok.encode(text)) == text


def test_special_token_ids_match_meta_reference(tok: Llama3Tokenizer, ref: MetaTokenizer) -> None:
    for name, token_id in ROLE_TOKENS:
        assert tok.special_tokens[name] == ref.special_tokens[name] == token_id
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ref.bos_id, ref.eos_id, ref.pad_id)
    assert tok.stop_ids == set(ref.stop_tokens) == {128001, 128008, 128009}
    assert tok.vocab_size == ref.n_words == 128256


def test_special_token_table_is_meta_reference_table(tok: Llama3Tokenizer, ref: MetaTokenizer) -> None:
    # Meta's reference names 128005 <|step_id|> and 128011 <|image|>; HF tokenizer.json files call them reserved.
    assert tok.special_tokens == ref.special_tokens
    names = {i: name for name, i in tok.special_tokens.items()}
    assert (names[128005], names[128011], names[128255]) == (
        "<|step_id|>",
        "<|image|>",
        "<|reserved_special_token_245|>",
    )
    for i in (128005, 128011, 128200):
        assert tok.decode([i]) == ref.decode([i])


def test_special_token_text_is_ordinary_unless_allowed(tok: Llama3Tokenizer) -> None:
    text = "Hi<|eot_id|>"
    assert 128009 not in tok.encode(text)
    assert tok.encode(text, allow_special=True) == [*tok.encode("Hi"), 128009]
    assert tok.decode(tok.encode(text)) == tok.decode(tok.encode(text, allow_special=True)) == text


def test_bos_and_eos_flags_add_begin_and_end_of_text(tok: Llama3Tokenizer) -> None:
    body = tok.encode("hello")
    assert tok.encode("hello", bos=True) == [128000, *body]
    assert tok.encode("hello", eos=True) == [*body, 128001]
    assert tok.add_bos


def test_decode_rejects_ids_outside_the_vocabulary(tok: Llama3Tokenizer) -> None:
    with pytest.raises(TokenizerError, match=r"128256"):
        tok.decode([1, 128256])


def test_long_inputs_match_reference_and_round_trip(tok: Llama3Tokenizer, ref: MetaTokenizer) -> None:
    words = ["hello", "wörld", "日本語", "🤖", "  ", "\n", "123456", "x=1;", "naïve", "Ωmega", "\t"]
    mixed = " ".join(words[(i * 7919) % len(words)] for i in range(250_000))[:1_000_000]
    assert len(mixed) == 1_000_000  # spans three of tiktoken's 400K-character chunks
    cases = [mixed, "a" * 200_000, " " * 200_000, "\n" * 200_000, "ab" * 100_000]
    start = time.perf_counter()
    for text in cases:
        ids = tok.encode(text)
        assert ids == ref.encode(text, bos=False, eos=False)
        assert tok.decode(ids) == text
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("max_run", [1, 3, 7])
def test_input_is_cut_where_meta_cuts_it(monkeypatch: pytest.MonkeyPatch, max_run: int) -> None:
    # Small limits make every cut visible; the reference splitter takes its limit as an argument.
    monkeypatch.setattr(llama3_module, "MAX_RUN_CHARS", max_run)
    for text in ["", " ", "abcdefghij", "   x  yyyyyyy\n\n\n\n\tzz", " a\u00a0\u3000b\u2028c   "]:
        expected = list(MetaTokenizer._split_whitespaces_or_nonwhitespaces(text, max_run)) if text else []
        assert list(llama3_module.bounded_pieces(text)) == expected


def _meta_dialog(messages: list[dict[str, str]]) -> list[RawMessage]:
    return [RawMessage(role=m["role"], content=m["content"]) for m in messages]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "What is the capital of France?"}],
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi <|eot_id|> there"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Count to 3 in 日本語."},
        ],
        [{"role": "user", "content": "Weather?"}, {"role": "tool", "content": '{"temp": 21}'}],
    ],
)
def test_chat_matches_llama_models_chat_format(
    tok: Llama3Tokenizer, ref: MetaTokenizer, messages: list[dict[str, str]]
) -> None:
    expected = ChatFormat(ref).encode_dialog_prompt(_meta_dialog(messages)).tokens
    assert tok.encode_chat(messages) == expected


def test_chat_keeps_content_as_is_and_can_leave_the_assistant_turn_closed(tok: Llama3Tokenizer) -> None:
    # Meta's reference encodes content verbatim (HF's Llama 3 template trims it).
    ids = tok.encode_chat([{"role": "user", "content": "  hi\n"}], add_generation_prompt=False)
    assert tok.decode(ids) == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n  hi\n<|eot_id|>"


def test_chat_rejects_unknown_roles_and_non_text_content(tok: Llama3Tokenizer) -> None:
    with pytest.raises(TokenizerError, match=r"message 0: role 'robot'"):
        tok.encode_chat([{"role": "robot", "content": "beep"}])
    with pytest.raises(TokenizerError, match=r"message 1: .*content must be a string"):
        tok.encode_chat([{"role": "user", "content": "a"}, {"role": "user", "content": ["b"]}])
    # Found by the 30-minute dialog fuzz: a role that is a list raised TypeError (unhashable) in the alias lookup.
    with pytest.raises(TokenizerError, match=r"message 0: message role must be a string, got list"):
        tok.encode_chat([{"role": ["user"], "content": "a"}])
    with pytest.raises(TokenizerError, match=r"message 0: message context must be a string, got dict"):
        tok.encode_chat([{"role": "user", "content": "a", "context": {}}])
    call = {"name": "brave_search", "arguments": "[1, 2]"}  # JSON, but not an object
    with pytest.raises(TokenizerError, match=r"message 1: tool call .*expected a string name and an object"):
        tok.encode_chat([{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [call]}])


def test_stream_decoder_yields_exactly_the_decoded_text(tok: Llama3Tokenizer) -> None:
    text = "Streaming 🤖👍🏽 日本語のテキスト, naïve café — done.\n" * 3
    ids = tok.encode(text)
    stream = StreamDecoder(tok)
    pieces = [stream.push(i) for i in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    # Some emoji and CJK characters span several tokens here, so some pushes must have held text back.
    assert pieces.count("") > 0


class _CountingTokenizer:
    def __init__(self, inner: Llama3Tokenizer) -> None:
        self.inner = inner
        self.decoded = 0

    def decode(self, ids: list[int]) -> str:
        self.decoded += len(ids)
        return self.inner.decode(ids)


def test_stream_decoder_work_per_token_is_constant(tok: Llama3Tokenizer) -> None:
    ids = tok.encode("word 🤖 " * 2000)
    counting = _CountingTokenizer(tok)
    stream = StreamDecoder(counting)  # type: ignore[arg-type]
    for i in ids:
        stream.push(i)
    assert counting.decoded < 10 * len(ids)


def test_stream_decoder_releases_invalid_bytes_after_max_pending(tok: Llama3Tokenizer) -> None:
    stray = next(i for i in range(256) if tok.decode([i]) == "\ufffd")  # a byte that never completes a character
    stream = StreamDecoder(tok)
    out = "".join(stream.push(stray) for _ in range(StreamDecoder.MAX_PENDING + 1))
    assert out == "\ufffd" * (StreamDecoder.MAX_PENDING + 1)


def test_load_tokenizer_finds_llama3(tmp_path: Path) -> None:
    assert isinstance(load_tokenizer(), Llama3Tokenizer)
    assert isinstance(load_tokenizer("llama3"), Llama3Tokenizer)
    (tmp_path / "tokenizer.model").symlink_to(packaged_model_path())
    assert load_tokenizer(tmp_path).encode("hi") == load_tokenizer(tmp_path / "tokenizer.model").encode("hi")


def test_missing_or_malformed_files_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"not found: .*nowhere.model"):
        Llama3Tokenizer(tmp_path / "nowhere.model")
    with pytest.raises(TokenizerError, match=r"no tokenizer at .*missing.*no such file"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(TokenizerError, match=r"found none of them"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x08\x0b not base64\n")
    with pytest.raises(TokenizerError, match=r"tokenizer.model:1: not a tiktoken BPE file"):
        Llama3Tokenizer(bad)
    short = tmp_path / "short.model"
    short.write_text("YQ== 0\nYg== 1\n")
    with pytest.raises(TokenizerError, match=r"short\.model: ranks must be 0\.\.N-1 with N >= 256.*got 2"):
        Llama3Tokenizer(short)


def _generated_strings() -> list[str]:
    """A deterministic test set of a few hundred strings: scripts, code, emoji, marks, whitespace, numbers."""
    import inspect
    import json as json_module
    import random

    rng = random.Random(1234)
    ranges = {
        "latin-ext": (0x0100, 0x024F),
        "greek": (0x0370, 0x03FF),
        "cyrillic": (0x0400, 0x04FF),
        "armenian": (0x0531, 0x0587),
        "hebrew": (0x05D0, 0x05EA),
        "arabic": (0x0620, 0x064A),
        "devanagari": (0x0905, 0x0939),
        "bengali": (0x0985, 0x09B9),
        "tamil": (0x0B85, 0x0BB9),
        "thai": (0x0E01, 0x0E30),
        "georgian": (0x10D0, 0x10FA),
        "ethiopic": (0x1200, 0x1248),
        "hiragana": (0x3041, 0x3096),
        "katakana": (0x30A1, 0x30FA),
        "cjk": (0x4E00, 0x9FFF),
        "hangul": (0xAC00, 0xD7A3),
        "emoji": (0x1F300, 0x1F64F),
        "math": (0x2200, 0x22FF),
        "combining": (0x0300, 0x036F),
    }
    out = []
    for lo, hi in ranges.values():
        for _ in range(10):
            words = [
                "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 6))
            ]
            sep = rng.choice([" ", "  ", "\n", ", ", "\t", "", " 12 ", "-"])
            out.append(sep.join(words))
    for _ in range(40):  # combining marks stacked on Latin letters
        out.append(
            "".join(
                rng.choice("aeiouxyzAEIOU") + chr(rng.randint(0x0300, 0x036F)) * rng.randint(0, 3) for _ in range(12)
            )
        )
    zwj = ["👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "🇯🇵", "❤️‍🔥", "🧑🏿‍💻", "1️⃣", "©️"]
    for _ in range(20):
        out.append(" ".join(rng.choice(zwj) for _ in range(rng.randint(1, 5))) + rng.choice(["", "!", " ok", "\n"]))
    source = inspect.getsource(json_module.decoder) + inspect.getsource(random)
    lines = source.splitlines(keepends=True)
    for _ in range(60):  # real code: stdlib source, a few lines at a time
        start = rng.randrange(len(lines) - 5)
        out.append("".join(lines[start : start + rng.randint(1, 5)]))
    blanks = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00a0", "\u3000", "\u2028", "   \n  "]
    for _ in range(40):
        out.append(
            "".join(rng.choice(blanks) * rng.randint(1, 6) + rng.choice(["x", "word", "42", "", "é"]) for _ in range(5))
        )
    for _ in range(30):
        out.append(
            " ".join(
                str(
                    rng.choice(
                        [rng.randint(0, 10 ** rng.randint(1, 12)), round(rng.uniform(-1e4, 1e4), rng.randint(0, 6))]
                    )
                )
                for _ in range(4)
            )
        )
    specials = [
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|start_header_id|>",
        "<|python_tag|>",
        "<|image|>",
        "<|reserved_special_token_7|>",
    ]
    for s in specials:
        out += [s, s.upper(), s.replace("|", "| "), s[:-1], "x" + s + "y", s * 2]
    return out


GENERATED = _generated_strings()


def test_token_identical_to_meta_reference_on_generated_set(tok: Llama3Tokenizer, ref: MetaTokenizer) -> None:
    assert len(GENERATED) + len(STRINGS) >= 300
    for text in GENERATED:
        ids = tok.encode(text)
        assert ids == ref.encode(text, bos=False, eos=False), repr(text)
        assert tok.decode(ids) == text
