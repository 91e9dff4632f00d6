"""Token shards and `pack`: format checks, round trips, idempotence, bad input."""

import json

import numpy as np
import pytest

from herd.config import PackSection
from herd.data.pack import pack
from herd.data.readers import RawReader, input_files
from herd.data.shards import Shard, write_shard
from herd.errors import DataError
from herd.tokenizer import Llama3Tokenizer


def test_shard_round_trip_and_dtype(tmp_path) -> None:
    docs = [[1, 2, 3], [], [65535, 0]]
    assert write_shard(tmp_path / "a.bin", docs, vocab_size=65536) == 5
    s = Shard(tmp_path / "a.bin")
    assert s.tokens.dtype == np.uint16 and len(s) == 3
    assert [s.document(i).tolist() for i in range(3)] == docs
    write_shard(tmp_path / "b.bin", [[128255, 7]], vocab_size=128256)
    assert Shard(tmp_path / "b.bin").tokens.dtype == np.uint32


def test_bad_shards_are_named(tmp_path) -> None:
    write_shard(tmp_path / "a.bin", [[1, 2, 3]], vocab_size=100)
    data = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-3])
    with pytest.raises(DataError, match=r"cut\.bin: .* truncated or corrupt"):
        Shard(tmp_path / "cut.bin")
    (tmp_path / "foreign.bin").write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(DataError, match=r"foreign\.bin: not a herd token shard"):
        Shard(tmp_path / "foreign.bin")
    with pytest.raises(DataError, match="outside the vocabulary"):
        write_shard(tmp_path / "c.bin", [[100]], vocab_size=100)


def _write_jsonl(path, records, extra_lines=()):
    path.write_text("\n".join([json.dumps(r) for r in records] + list(extra_lines)) + "\n")


def test_pack_groups_by_source_and_is_a_no_op_when_repeated(tmp_path) -> None:
    tok = Llama3Tokenizer()
    records = [{"text": f"document number {i} about llamas", "source": "web" if i % 3 else "code"} for i in range(30)]
    _write_jsonl(tmp_path / "in.jsonl", records, ['{"broken": ', '{"no_text": 1}'])
    cfg = PackSection(input=[str(tmp_path / "in.jsonl")], shard_tokens=50)
    m = pack(cfg, tmp_path / "out")
    assert m["total"]["docs"] == 30 and m["skipped"]["count"] == 2
    assert "in.jsonl:31: invalid JSON" in m["skipped"]["first"][0]
    assert {k: v["docs"] for k, v in m["sources"].items()} == {"code": 10, "web": 20}
    web = [Shard(tmp_path / "out" / s["path"]) for s in m["sources"]["web"]["shards"]]
    assert len(web) > 1
    first = web[0].document(0).tolist()
    assert first == [tok.bos_id, *tok.encode(records[1]["text"]), tok.eos_id]
    assert sum(s.num_tokens for s in web) == m["sources"]["web"]["tokens"]
    assert pack(cfg, tmp_path / "out").get("up_to_date") is True
    _write_jsonl(tmp_path / "in.jsonl", records[:5])
    with pytest.raises(DataError, match="packed from other inputs"):
        pack(cfg, tmp_path / "out")


def test_source_names_are_data_not_paths(tmp_path) -> None:
    """A record's source names a shard directory: `..` must not write beside the output, `a b` and `a/b` must not
    share one directory, and `tokenizer` must not land on the tokenizer's copy (issue 22)."""
    names = ["..", "a b", "a/b", "a_b", "tokenizer", "../../etc", ".hidden", "web"]
    records = [{"text": f"document {i} from {s}", "source": s} for i, s in enumerate(names * 3)]
    _write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "deep" / "out"
    m = pack(PackSection(input=[str(tmp_path / "in.jsonl")]), out)
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]  # nothing written beside it
    first = {s: m["sources"][s]["shards"][0]["path"].split("/")[0] for s in names}
    assert all(sh["path"].split("/")[0] == first[s] for s in names for sh in m["sources"][s]["shards"])
    assert len(set(first.values())) == len(names)  # one directory per source
    for s in names:
        for sh in m["sources"][s]["shards"]:
            path = (out / sh["path"]).resolve()
            assert path.is_relative_to(out.resolve()) and path.parent.name not in ("tokenizer", "out")
            assert Shard(path).num_tokens == sh["tokens"]
    assert m["sources"]["web"]["shards"][0]["path"] == "web/shard-00000.bin"  # plain names stay as they are
    assert m["sources"]["a_b"]["shards"][0]["path"] == "a_b/shard-00000.bin"
    assert (out / "tokenizer").is_dir() and not list((out / "tokenizer").glob("*.bin"))


def test_reader_skips_and_locates_bad_records(tmp_path) -> None:
    (tmp_path / "ok.jsonl").write_bytes(
        b'{"text": "fine", "id": "a", "url": "u"}\n{"text": "bad \xff utf8"}\n{not json}\n\n'
        b'{"text": "' + b"x" * 5000 + b'"}\n'
    )
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "page.html").write_text('<html><link rel="canonical" href="https://ex.org/p"><p>hi</p></html>')
    reader = RawReader(input_files([str(tmp_path)]), max_doc_bytes=1000, errors_dir=tmp_path / "err")
    docs = list(reader.run(None, 0, 1))
    assert [d.id for d in docs] == ["a", str(tmp_path / "page.html")]
    assert docs[0].metadata == {"url": "u"} and docs[1].metadata["url"] == "https://ex.org/p"
    errors = [json.loads(line) for line in (tmp_path / "err" / "00000.jsonl").read_text().splitlines()]
    assert {(e["where"].rsplit("/", 1)[-1], e["reason"]) for e in errors} == {
        ("empty.jsonl", "empty_file"),
        ("ok.jsonl:2", "bad_utf8"),
        ("ok.jsonl:3", "bad_json"),
        ("ok.jsonl:5", "too_large"),
    }
    with pytest.raises(DataError, match=r"notes\.pdf: unsupported input file type"):
        (tmp_path / "notes.pdf").write_bytes(b"%PDF")
        input_files([str(tmp_path)])


def test_mix_plan_reports_draws_and_epochs() -> None:
    from herd.data.mix import LLAMA3_MIX, parse_weights, plan_mix

    assert parse_weights("llama3") == LLAMA3_MIX
    assert parse_weights("a=1,b=3") == {"a": 0.25, "b": 0.75}
    plan = plan_mix({"a": 100, "b": 1000}, {"a": 0.5, "b": 0.5}, total_tokens=1000)
    assert plan["a"] == {"weight": 0.5, "tokens": 100, "draw": 500, "epochs": 5.0}
    assert plan["b"]["epochs"] == 0.5
    with pytest.raises(DataError, match="no tokens: \\['c'\\]"):
        plan_mix({"a": 1}, {"c": 1.0}, 10)
    with pytest.raises(DataError, match=r"source=0\.25"):
        parse_weights("a:0.5")


def test_pack_reports_the_mix(tmp_path) -> None:
    records = [{"text": f"doc {i}", "source": "web" if i % 4 else "code"} for i in range(40)]
    _write_jsonl(tmp_path / "in.jsonl", records)
    cfg = PackSection(input=[str(tmp_path / "in.jsonl")], mix="web=0.5,code=0.5")
    m = pack(cfg, tmp_path / "out")
    assert m["mix"]["code"]["epochs"] > m["mix"]["web"]["epochs"]
    assert "mix" not in json.loads((tmp_path / "out" / "manifest.json").read_text())  # a report, not a property


def test_format_pack_lists_sources_largest_first_then_skips_and_the_mix() -> None:
    from herd.data.pack import format_pack

    manifest = {
        "sources": {
            "code": {"docs": 10, "tokens": 1_000, "shards": [{}]},
            "general": {"docs": 200, "tokens": 3_000, "shards": [{}, {}]},
        },
        "total": {"docs": 210, "tokens": 4_000},
        "skipped": {"count": 2, "first": ["a.jsonl:3: invalid JSON", "a.jsonl:9: invalid JSON"]},
        "seconds": 1.5,
        "mix": {
            "general": {"weight": 0.5, "draw": 3_000, "tokens": 3_000, "epochs": 1.0},
            "code": {"weight": 0.5, "draw": 5_000, "tokens": 1_000, "epochs": 5.0},
        },
    }
    assert format_pack(manifest, "out").splitlines() == [
        "packed 210 documents, 4,000 tokens in 1.5s -> out",
        "  general                      200 docs        3,000 tokens   75.0%  2 shards",
        "  code                          10 docs        1,000 tokens   25.0%  1 shards",
        "skipped 2 records, e.g. a.jsonl:3: invalid JSON",
        "mix for 8,000 training tokens:",
        "  general                    50%  draw        3,000 of        3,000  1.00 epochs",
        "  code                       50%  draw        5,000 of        1,000  5.00 epochs"
        "  <- repeats more than 4 times",
    ]
    up_to_date = {**manifest, "up_to_date": True, "skipped": {"count": 0, "first": []}}
    del up_to_date["mix"]
    assert format_pack(up_to_date, "out").splitlines()[0] == "out is up to date (4,000 tokens); nothing to do"
    assert len(format_pack(up_to_date, "out").splitlines()) == 3
