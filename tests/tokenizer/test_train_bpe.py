import base64
import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import regex
import tiktoken

from herd.errors import TokenizerError
from herd.tokenizer import Llama3Tokenizer
from herd.tokenizer.llama3 import PATTERN, SPECIAL_TOKENS
from herd.tokenizer.train import read_corpus, save_ranks, text_chunks, train_bpe

VOCAB_SIZE = 256 + 256 + 200

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more about out up into do any "
    "model token train data loss batch layer weight gradient tokenizer merge corpus vocabulary"
)

UNICODE = [
    "Français: déjà vu, naïve café, œuvre.",
    "Deutsch: Größenwahn, Straße, Äpfel und Öl.",
    "Русский текст: съешь же ещё этих мягких французских булок.",
    "中文：我能吞下玻璃而不伤身体。日本語：私はガラスを食べられます。",
    "Emoji: 🤖👍🏽👨‍👩‍👧‍👦🏳️‍🌈 ❤️ 🇫🇷",
    "Combining marks: e\u0301 a\u0308 n\u0303, zero-width a\u200bb, NBSP\u00a0x",
]

CODE = [
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot\r\n",
    "    \t\t  leading and trailing whitespace \n\n\n   ",
    "x = {'key': [1, 22, 333, 4444], \"other\": None}  # I'm a comment they've written\n",
]


def _sentences(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        words = rng.choices(WORDS.split(), k=rng.randint(4, 14))
        number = f" {rng.randint(0, 99999)}" if rng.random() < 0.3 else ""
        out.append(" ".join(words).capitalize() + number + rng.choice([".", "!", "?", ",\n"]))
    return out


def _corpus(seed: int = 0, n: int = 400) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(_sentences(rng, 5)) for _ in range(n // 5)] + UNICODE * 3 + CODE * 3


def _encoding(ranks: dict[bytes, int]) -> tiktoken.Encoding:
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding("trained", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def _random_unicode(rng: random.Random, n: int) -> str:
    # code points from every plane that str can hold in UTF-8 (no lone surrogates)
    chars = []
    for _ in range(n):
        cp = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])
        chars.append(chr(cp))
    return "".join(chars)


@pytest.fixture(scope="module")
def ranks() -> dict[bytes, int]:
    return train_bpe(_corpus(), VOCAB_SIZE)


def test_trained_vocab_has_requested_size_with_every_byte_first(ranks: dict[bytes, int]) -> None:
    assert len(ranks) + 256 == VOCAB_SIZE
    assert sorted(ranks.values()) == list(range(len(ranks)))
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert all(len(token) > 1 for token, rank in ranks.items() if rank >= 256)


def test_tiktoken_round_trips_corpus_and_arbitrary_unicode(ranks: dict[bytes, int]) -> None:
    enc = _encoding(ranks)
    rng = random.Random(1)
    texts = [*_corpus(seed=7, n=50), *UNICODE, *CODE] + [_random_unicode(rng, 200) for _ in range(50)]
    for text in texts:
        ids = enc.encode_ordinary(text)
        assert enc.decode_bytes(ids) == text.encode("utf-8")
        assert enc.decode(ids) == text
        assert max(ids) < len(ranks)


def test_llama3_tokenizer_loads_the_saved_file(ranks: dict[bytes, int], tmp_path: Path) -> None:
    save_ranks(ranks, tmp_path / "tokenizer.model")
    tok = Llama3Tokenizer(tmp_path / "tokenizer.model")
    assert tok.vocab_size == VOCAB_SIZE
    assert tok.bos_id == len(ranks)
    text = "Hello tokenizer, the model trains on data.\n"
    assert tok.decode(tok.encode(text, bos=True, eos=True)[1:-1]) == text


def test_saved_file_is_base64_token_and_rank_per_line_sorted_by_rank(ranks: dict[bytes, int], tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tokenizer.model"
    save_ranks(ranks, path)
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(ranks)
    for rank, line in enumerate(lines):
        token, number = line.split(b" ")
        assert int(number) == rank and ranks[base64.b64decode(token)] == rank
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.model"]  # no temp file left behind


def test_training_twice_gives_identical_ranks_and_files(ranks: dict[bytes, int], tmp_path: Path) -> None:
    again = train_bpe(iter(_corpus()), VOCAB_SIZE)
    assert list(again.items()) == list(ranks.items())
    save_ranks(ranks, tmp_path / "a.model")
    save_ranks(again, tmp_path / "b.model")
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()


def _naive_bpe(texts: list[str], num_base: int) -> dict[bytes, int]:
    """Recount every pair from scratch before each merge; same tie rule (smallest pair of ids)."""
    counts = Counter(piece for text in texts for piece in regex.findall(PATTERN, text))
    words = [(list(p.encode()), n) for p, n in counts.items()]
    vocab = [bytes([i]) for i in range(256)]
    ranks = {t: i for i, t in enumerate(vocab)}
    while len(vocab) < num_base:
        pairs: Counter[tuple[int, int]] = Counter()
        for word, n in words:
            for pair in itertools.pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        token = vocab[a] + vocab[b]
        if token not in ranks:
            ranks[token] = len(vocab)
            vocab.append(token)
        c = ranks[token]
        for word, _ in words:
            i = 0
            while i < len(word) - 1:
                if word[i] == a and word[i + 1] == b:
                    word[i : i + 2] = [c]
                i += 1
    return ranks


def test_incremental_counts_give_the_merges_of_a_full_recount() -> None:
    texts = [*_corpus(seed=3, n=100), "aaaaaaa bbbb abababab aaaa", "    \n\n\n\t\t  x"]
    assert train_bpe(texts, 256 + 256 + 120) == _naive_bpe(texts, 256 + 120)


@pytest.mark.parametrize("seed", range(20))
def test_incremental_counts_match_a_full_recount_on_repetitive_text(seed: int) -> None:
    # a tiny alphabet makes runs like "aaaa" and "abab", where merges overlap and counts tie
    rng = random.Random(seed)
    alphabet = rng.choice(["aab", "aab bc\n", "ab  a\u00e9\n1"])
    texts = ["".join(rng.choices(alphabet, k=rng.randint(1, 80))) for _ in range(rng.randint(1, 30))]
    num_base = 256 + rng.randint(1, 150)
    assert train_bpe(texts, num_base + 256) == _naive_bpe(texts, num_base)


def test_compression_beats_raw_bytes_on_held_out_text(ranks: dict[bytes, int]) -> None:
    enc = _encoding(ranks)
    held_out = _corpus(seed=99, n=100)
    n_bytes = sum(len(t.encode()) for t in held_out)
    n_tokens = sum(len(enc.encode_ordinary(t)) for t in held_out)
    assert n_bytes / n_tokens > 2.0


def test_text_chunks_give_the_same_pieces_as_the_whole_text() -> None:
    # short lines, so that every 128 characters hold a newline followed by a non-space: no hard cut is needed
    words = " ".join(_sentences(random.Random(5), 40)).split(" ")
    lines = [" ".join(words[i : i + 5]) for i in range(0, len(words), 5)]
    text = "\n".join(lines + CODE + ["x\n \n\ny", "\r\n\r\n  \t\n", "a\u00a0\u3000b", "end  "])
    chunks = list(text_chunks(text, size=128))
    assert "".join(chunks) == text and len(chunks) > 10
    assert all(c.endswith("\n") and not n[0].isspace() for c, n in itertools.pairwise(chunks))
    assert [p for c in chunks for p in regex.findall(PATTERN, c)] == regex.findall(PATTERN, text)


def test_stops_early_when_the_corpus_runs_out_of_pairs() -> None:
    ranks = train_bpe(["ab ab abc"], 256 + 256 + 100)
    assert set(ranks) - {bytes([b]) for b in range(256)} == {b"ab", b" ab", b" abc"}


def test_progress_bar_does_not_change_the_result(ranks: dict[bytes, int]) -> None:
    assert train_bpe(_corpus(), VOCAB_SIZE, progress=True) == ranks


def test_vocab_too_small_names_the_numbers() -> None:
    with pytest.raises(TokenizerError, match=r"vocab_size 300 leaves 44 base tokens.*= 512"):
        train_bpe(["some text"], 300)


@pytest.mark.parametrize("texts", [[], [""]])
def test_empty_corpus_is_an_error(texts: list[str]) -> None:
    with pytest.raises(TokenizerError, match="empty"):
        train_bpe(texts, 1024)


def test_read_corpus_reads_txt_md_jsonl_and_directories_in_order(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("bee\n", encoding="utf-8")
    (tmp_path / "d" / "sub" / "c.md").write_text("# see\n", encoding="utf-8")
    (tmp_path / "d" / "a.jsonl").write_text(
        json.dumps({"text": "one", "id": 1}) + "\n\n" + json.dumps({"text": "twö"}) + "\n", encoding="utf-8"
    )
    (tmp_path / "e.jsonl").write_text(json.dumps({"body": "other field"}) + "\n", encoding="utf-8")
    assert list(read_corpus([tmp_path / "d"])) == ["one", "twö", "bee\n", "# see\n"]
    assert list(read_corpus([str(tmp_path / "e.jsonl")], text_field="body")) == ["other field"]


def test_bad_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"docs\.jsonl:2: not valid JSON"):
        list(read_corpus([path]))
    path.write_text('{"text": "fine"}\n\n{"title": "no text"}\n', encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"docs\.jsonl:3: .*string field 'text'"):
        list(read_corpus([path]))


def test_unknown_suffix_and_missing_input_name_the_path(tmp_path: Path) -> None:
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    with pytest.raises(TokenizerError, match=r"data\.parquet: unsupported corpus file type '\.parquet'"):
        list(read_corpus([tmp_path / "data.parquet"]))
    # In a directory, files of other types (a corpus's own metadata, say) are passed over.
    (tmp_path / "docs.jsonl").write_text('{"text": "kept"}\n', encoding="utf-8")
    assert list(read_corpus([tmp_path])) == ["kept"]
    with pytest.raises(TokenizerError, match=r"corpus input not found: .*nope"):
        list(read_corpus([tmp_path / "nope"]))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(TokenizerError, match=r"bin\.txt: not UTF-8"):
        list(read_corpus([tmp_path / "bin.txt"]))
