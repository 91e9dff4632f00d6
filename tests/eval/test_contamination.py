"""8-gram contamination (herd/eval/contamination.py): hand-worked token fractions on tiny shards, the clean vs
contaminated split, and the command end to end on shards packed by `herd data pack`."""

import json

import numpy as np
import pytest

from herd.cli import main
from herd.config import PackSection
from herd.data.pack import pack
from herd.data.shards import write_shard
from herd.errors import EvalError
from herd.eval import contamination as cont
from herd.eval.results import BenchmarkResult, ItemResult, write_result
from herd.tokenizer import Llama3Tokenizer


def _index(tmp_path, docs, n):
    write_shard(tmp_path / "a.bin", docs, vocab_size=100)
    return cont.build_index([tmp_path / "a.bin"], n)


def test_token_fractions_by_hand(tmp_path, monkeypatch) -> None:
    # n = 4; documents [1 2 3 4 5], [] and [6 7 8 9]: 4-grams 1234, 2345 and 6789, none across a boundary.
    docs = [[1, 2, 3, 4, 5], [], [6, 7, 8, 9]]
    index, stats = _index(tmp_path, docs, 4)
    assert stats == {"tokens": 9, "docs": 3, "ngrams": 3}
    cases = {
        (2, 3, 4, 5): 4,  # a whole 4-gram of document 0
        (3, 4, 5, 6): 0,  # crosses the boundary of documents 0 and 2: never in the index
        (9, 1, 2, 3, 4, 9): 4,  # 1234 is found: its 4 tokens of 6
        (1, 2, 3, 4, 5, 0, 6, 7, 8, 9): 9,  # 1234 and 2345 overlap (5 tokens), 6789 (4 more); the 0 is clean
        (1, 2, 3): 0,  # shorter than n: no 4-gram at all
        (): 0,
    }
    for ids, expected in cases.items():
        assert cont.contaminated_tokens(list(ids), index, 4) == expected, ids
    # Hashing in chunks of 2 tokens (with the n - 1 overlap) finds the same n-grams as all at once.
    monkeypatch.setattr(cont, "_CHUNK", 2)
    assert np.array_equal(cont.build_index([tmp_path / "a.bin"], 4)[0], index)


def test_split_scores_at_a_threshold() -> None:
    fractions, scores = [0.0, 0.25, 0.5, 1.0], [0.0, 1.0, 1.0, 1.0]
    s = cont.split_scores(fractions, scores, 0.25)  # contaminated: more than a quarter of the tokens
    assert (s["contaminated"], s["clean"], s["contaminated_share"]) == (2, 2, 0.5)
    assert (s["score_clean"], s["score_contaminated"], s["score_all"]) == (0.5, 1.0, 0.75)
    assert s["estimated_gain"] == 0.25 and s["contaminated_minus_clean"] == 0.5
    s = cont.split_scores(fractions, scores, 0.9)
    assert s["contaminated"] == 1 and s["score_clean"] == pytest.approx(2 / 3)
    none = cont.split_scores([0.0], [1.0], 0.5)
    assert none["score_contaminated"] is None and none["estimated_gain"] == 0.0


DOCS = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden barn.",
    "Photosynthesis converts light energy into chemical energy stored in the bonds of glucose molecules.",
]
FRESH = "Seven purple umbrellas argued loudly about tax policy on a Tuesday afternoon in Reykjavik."


def test_command_on_packed_shards(tmp_path, capsys) -> None:
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    pack(PackSection(input=[str(tmp_path / "corpus.jsonl")]), tmp_path / "shards")  # llama3 tokenizer, BOS + EOS
    tok = Llama3Tokenizer()
    partial = DOCS[1] + " Seven purple umbrellas argued."
    items = [
        ItemResult("copied", DOCS[0], 1.0),  # every token inside a training 8-gram
        ItemResult("partial", partial, 1.0),
        ItemResult("fresh", FRESH, 0.0),
        ItemResult("short", "The quick brown fox", 1.0),  # 4 tokens: shorter than n
    ]
    write_result(tmp_path / "run" / "qa.json", BenchmarkResult("qa", "m1", "harness", {"acc": 0.75}, items))
    write_result(tmp_path / "run" / "other.json", BenchmarkResult("other", "m1", "humaneval", {}, items[2:3]))
    out = tmp_path / "run"  # contamination.json beside the results, as the report card reads it
    argv = ["eval", "contamination", "--results", str(tmp_path / "run"), "--shards", str(tmp_path / "shards"),
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "contamination.json").read_text())
    assert report["tokenizer"].endswith("tokenizer") and report["shards"]["docs"] == 2  # the copy pack kept
    assert report["thresholds"] == [0.2, 0.5, 0.8] and not report["shards"]["cached"]
    qa = next(b for b in report["benchmarks"] if b["benchmark"] == "qa")
    fractions = {it["id"]: it["fraction"] for it in qa["item_fractions"]}
    # The partial item: the training document's tokens are found, the fresh sentence's are not.
    expected = len(tok.encode(DOCS[1])) / len(tok.encode(partial))
    assert fractions == {"copied": 1.0, "partial": pytest.approx(expected), "fresh": 0.0, "short": 0.0}
    assert 0.5 < expected < 0.8
    at = qa["thresholds"]
    assert at["0.5"]["contaminated"] == 2 and at["0.5"]["score_clean"] == 0.5 and at["0.5"]["score_contaminated"] == 1
    assert at["0.5"]["estimated_gain"] == pytest.approx(0.75 - 0.5)
    assert at["0.8"]["contaminated"] == 1 and at["0.8"]["score_clean"] == pytest.approx(2 / 3)
    assert "qa" in printed and "50.0%" in printed
    # A second run reads the cached index.
    assert main(argv) == 0
    assert json.loads((out / "contamination.json").read_text())["shards"]["cached"]
    assert "cached" in capsys.readouterr().out
    # Another tokenizer (an embedded model's, by name) than the shards were packed with is refused.
    assert main([*argv, "--tokenizer", "smollm2-135m-instruct"]) == 1
    assert "49152 tokens" in (err := capsys.readouterr().err) and "manifest.json" in err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys) -> None:
    write_shard(tmp_path / "a.bin", [[1, 2, 3]], vocab_size=100)
    run = tmp_path / "run"
    run.mkdir()
    (run / "broken.json").write_text(json.dumps({"benchmark": "b", "model": "m", "kind": "harness", "metrics": {},
                                                 "items": [{"id": "x", "text": "t"}]}))  # fmt: skip
    argv = ["eval", "contamination", "--results", str(run), "--shards", str(tmp_path / "a.bin"), "--tokenizer",
            "llama3", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "broken.json" in err and "items[0]" in err and "score" in err
    with pytest.raises(EvalError, match=r"no\.bin: no such file"):
        cont.shard_files([str(tmp_path / "no.bin")])
    with pytest.raises(EvalError, match="threshold"):
        cont.run_contamination([str(run)], [str(tmp_path / "a.bin")], thresholds=[1.5])
