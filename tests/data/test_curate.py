"""`herd data curate` end to end on the embedded corpus: each step against the planted ground truth,
determinism across worker counts, resume after a crash, bad input, and the report files."""

import json
import shutil

import pytest

from herd.config import CurateSection
from herd.data.evaluate import read_jsonl
from herd.data.pipeline import Curator
from herd.errors import DataError

pytestmark = pytest.mark.slow


def _config(corpus, workers=1) -> CurateSection:
    # The LLM-judged quality classifier has its own tests (tests/data/test_quality.py); it takes minutes here.
    cfg = CurateSection(input=[str(corpus.path)], tasks=4, workers=workers)
    cfg.quality.enabled = False
    return cfg


@pytest.fixture(scope="module")
def run(embedded_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("curate") / "out"
    report = Curator(_config(embedded_corpus), out, log=lambda _: None).run()
    return out, report


def test_every_step_meets_its_ground_truth(run) -> None:
    _, report = run
    truth = report["ground_truth"]
    dedup = truth["dedup (exact + near duplicates)"]
    assert dedup["recall"] >= 0.95, dedup  # planted exact and near duplicates caught
    distinct_reached = report["output"]["documents"]
    assert dedup["fp"] <= 0.01 * distinct_reached, dedup  # <= 1% false drops
    assert truth["pii scrubbing (planted items)"]["recall"] == 1.0
    assert truth["url filter (blocked domains)"] == {"precision": 1.0, "recall": 1.0, "tp": 20, "fp": 0, "fn": 0}
    assert truth["line dedup (planted boilerplate lines)"]["recall"] >= 0.95
    assert truth["quality filters (low quality + adult)"]["recall"] >= 0.95
    assert truth["html extraction"]["main_text_line_recall"] >= 0.9
    assert truth["html extraction"]["pages_with_boilerplate_left"] == 0
    assert truth["language id (kept documents)"]["accuracy"] >= 0.95
    assert truth["domain tagging (kept documents)"]["accuracy"] >= 0.85


def test_report_files_and_histograms(run) -> None:
    out, report = run
    from herd.data.report import write_report

    write_report(report, out)
    saved = json.loads((out / "report.json").read_text())
    assert saved["output"]["documents"] == len(read_jsonl(out / "kept"))
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Data curation report" in (out / "report.html").read_text()
    assert len(saved["output"]["languages"]) > 20 and set(saved["output"]["domains"]) >= {"code", "math", "general"}
    steps = {s["step"]: s for s in saved["steps"]}
    assert steps["url filter"]["dropped"] == {"blocked_domain": 20}


def test_two_workers_give_byte_identical_output(run, embedded_corpus, tmp_path) -> None:
    out, _ = run
    Curator(_config(embedded_corpus, workers=2), tmp_path / "w2", log=lambda _: None).run()
    for name in sorted(p.name for p in (out / "kept").glob("*.jsonl")):
        assert (out / "kept" / name).read_bytes() == (tmp_path / "w2" / "kept" / name).read_bytes()


def test_crash_resume_neither_duplicates_nor_loses(run, embedded_corpus, tmp_path) -> None:
    out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "config.toml").write_text((out / "config.toml").read_text().replace(str(out), str(copy)))
    # A task of the last stage died: no completion marker, a half-written output file.
    (copy / "logs" / "quality" / "completions" / "00002").unlink()
    kept = copy / "kept" / "00002.jsonl"
    kept.write_text(kept.read_text()[: len(kept.read_text()) // 2])
    Curator(_config(embedded_corpus), copy, log=lambda _: None).run()
    for name in sorted(p.name for p in (out / "kept").glob("*.jsonl")):
        assert (out / "kept" / name).read_bytes() == (copy / "kept" / name).read_bytes()


def test_output_of_another_config_is_refused(run, embedded_corpus) -> None:
    out, _ = run
    cfg = _config(embedded_corpus)
    cfg.dedup.minhash = False
    with pytest.raises(DataError, match="made by another config"):
        Curator(cfg, out).run()


def test_corrupt_input_is_counted_with_its_location(tmp_path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    good = (
        "The lighthouse keeper climbed the stairs every evening to light the lamp. Ships passing the rocky coast "
        "relied on its beam to find the harbour entrance, and the village depended on the ships for its trade. "
        "In winter the storms were fierce, and the keeper kept a careful log of the wind, the tides and the "
        "vessels that sailed by. Years later, historians used those notebooks to study how the weather of the "
        "region had changed over a century, and they found the records remarkably precise."
    )
    (raw / "a.jsonl").write_bytes(
        json.dumps({"id": "ok", "text": good}).encode()
        + b'\n{"id": "utf", "text": "bad \xff"}\n{"id": "json", "text": \n'
        + json.dumps({"id": "huge", "text": "word " * 300_000}).encode()
        + b"\n"
    )
    (raw / "empty.jsonl").write_bytes(b"")
    cfg = CurateSection(input=[str(raw)], tasks=1, fit_sample=10, max_doc_bytes=1 << 20)
    # One good document: nothing to fit the token reference or the domain classifier on.
    cfg.quality.enabled = cfg.heuristics.token_kl = cfg.quality.domain = False
    report = Curator(cfg, tmp_path / "out", log=lambda _: None).run()
    assert report["input"]["skipped"] == {"bad_utf8": 1, "bad_json": 1, "too_large": 1, "empty_file": 1}
    errors = (tmp_path / "out" / "errors" / "00000.jsonl").read_text()
    assert "a.jsonl:2" in errors and "a.jsonl:3" in errors and "empty.jsonl" in errors
    assert [d["id"] for d in read_jsonl(tmp_path / "out" / "kept")] == ["ok"]


def test_cli_curate_then_pack(embedded_corpus, tmp_path, capsys) -> None:
    from herd.cli import main

    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(embedded_corpus.path / "part-000.jsonl", part)
    shutil.copy(embedded_corpus.path / "part-001.jsonl", part)
    out = tmp_path / "cur"
    code = main(["data", "curate", "-i", str(part), "-o", str(out), "--tasks", "2", "--no-quality",
                 "--curate.dedup.semantic=false", "--curate.language.min_score=0.4"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "kept " in printed and "against the corpus's ground truth" in printed
    assert (out / "report.html").exists()
    assert "min_score = 0.4" in (out / "config.toml").read_text()
    code = main(["data", "pack", "-i", str(out / "kept"), "-o", str(tmp_path / "shards"), "--source-field", "domain"])
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert code == 0 and set(manifest["sources"]) <= {"code", "math", "general", "multilingual"}
    assert manifest["total"]["docs"] == len(read_jsonl(out / "kept"))
    assert (
        main(["data", "pack", "-i", str(out / "kept"), "-o", str(tmp_path / "shards"), "--source-field", "domain"]) == 0
    )
    assert "up to date" in capsys.readouterr().out


def test_same_pipeline_on_ray_gives_the_local_output(run, embedded_corpus, tmp_path) -> None:
    """The executor is a setting: the stages, and so the output, are the same on a (local) Ray cluster."""
    pytest.importorskip("ray")
    out, _ = run
    cfg = _config(embedded_corpus, workers=2)
    cfg.executor = "ray"
    Curator(cfg, tmp_path / "ray", log=lambda _: None).run()
    for name in sorted(p.name for p in (out / "kept").glob("*.jsonl")):
        assert (out / "kept" / name).read_bytes() == (tmp_path / "ray" / "kept" / name).read_bytes()
