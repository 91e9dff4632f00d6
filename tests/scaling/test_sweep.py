import json
import random

import pytest
import torch
import torch.nn.functional as F

from herd.config import load
from herd.model import build_model, get_preset
from herd.scaling.sweep import SweepError, run_sweep
from herd.scaling.task import build_items, evaluate
from herd.tokenizer.train import read_corpus, save_ranks, train_bpe

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "po", "ri") for b in ("t", "sa", "vo", "ne", "x")]


def markov_text(rng: random.Random, n: int) -> str:
    i, out = rng.randrange(len(WORDS)), []
    for _ in range(n):
        out.append(WORDS[i])
        i = (i * 7 + 3) % len(WORDS) if rng.random() < 0.85 else rng.randrange(len(WORDS))
    return " ".join(out) + "."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    rng = random.Random(0)
    lines = [json.dumps({"text": markov_text(rng, rng.randint(40, 200)), "domain": "ab"[i % 2]}) for i in range(300)]
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    save_ranks(train_bpe(read_corpus([root / "docs.jsonl"]), 512 + 96), root / "tokenizer.model")
    return root


def test_items_hold_the_true_continuation_among_distractors() -> None:
    rng = random.Random(1)
    docs = [("a" if i % 2 else "b", [rng.randrange(100) for _ in range(80)]) for i in range(20)]
    items = build_items(docs, num_items=50, context_tokens=10, answer_tokens=5, seed=3)
    assert items == build_items(docs, num_items=50, context_tokens=10, answer_tokens=5, seed=3)
    for item in items:
        assert len(item.choices) == 4 and all(len(c) == 5 for c in item.choices)
        doc = next(toks for _, toks in docs if _contains(toks, item.context + item.choices[item.answer]))
        assert doc  # the context is followed by the answer in one document
    assert len({item.answer for item in items}) == 4  # the answer's slot varies
    for mode in ("any", "same"):
        assert len(build_items(docs, num_items=20, context_tokens=10, answer_tokens=5, distractors=mode)) == 20
    # "other": every distractor comes from a document of another source.
    for item in items:
        src = next(s for s, toks in docs if _contains(toks, item.context + item.choices[item.answer]))
        for c, choice in enumerate(item.choices):
            if c != item.answer:
                assert all(s != src for s, toks in docs if _contains(toks, choice))


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_task_nll_and_accuracy_equal_a_direct_computation() -> None:
    rng = random.Random(2)
    docs = [("a", [rng.randrange(64) for _ in range(40)]) for _ in range(10)]
    items = build_items(docs, num_items=12, context_tokens=8, answer_tokens=4, distractors="any", seed=0)
    model = build_model(get_preset("tiny").replace(vocab_size=64))
    got = evaluate(model, items, batch_size=5)
    nlls, correct = [], 0
    for item in items:
        scores = []
        for choice in item.choices:
            tokens = torch.tensor([item.context + choice])
            logits = model(tokens)[0, -len(choice) - 1 : -1]
            scores.append(float(F.cross_entropy(logits.detach(), torch.tensor(choice))))
        nlls.append(scores[item.answer])
        correct += min(range(4), key=scores.__getitem__) == item.answer
    assert got["task_nll"] == pytest.approx(sum(nlls) / len(nlls), rel=1e-5)
    assert got["task_acc"] == correct / len(items)


def test_sweep_records_every_run_resumes_and_refuses_other_settings(corpus, tmp_path) -> None:
    out = tmp_path / "sweep"
    overrides = [
        f"job.dump_folder={json.dumps(str(out))}", f"pack.input=[{json.dumps(str(corpus / 'docs.jsonl'))}]",
        f"pack.tokenizer={json.dumps(str(corpus / 'tokenizer.model'))}", "scaling.budgets=[2e9, 4e9]",
        "scaling.holdout_budget=0", "training.seq_len=32", "training.batch_tokens=256", "scaling.val_fraction=0.1",
        "scaling.eval_batches=2", "scaling.task_items=40",
        "scaling.sizes=[{dim=16, n_layers=1}, {dim=32, n_layers=1}, {dim=48, n_layers=2}]",
    ]  # fmt: skip
    cfg = load("scaling", None, overrides)
    lines: list[str] = []
    manifest = run_sweep(cfg, log=lines.append)
    runs = manifest["runs"]
    assert len(runs) == 6 and all(r["status"] == "done" for r in runs)
    for r in runs:
        assert r["flops"] == pytest.approx(r["budget"], rel=0.35)  # whole steps of 256 tokens
        assert r["tokens"] == r["steps"] * 256 and 0 <= r["task_acc"] <= 1 and r["val_loss"] > 0
    assert json.loads((out / "manifest.json").read_text())["runs"] == runs
    # Same budget: the smaller model trains on more tokens.
    b2 = sorted((r for r in runs if r["budget"] == 2e9), key=lambda r: r["n"])
    assert b2[0]["tokens"] > b2[-1]["tokens"]

    again: list[str] = []
    assert run_sweep(cfg, log=again.append)["runs"] == runs and not again  # everything done: nothing retrained

    other = load("scaling", None, [*overrides, "optim.lr=0.01"])
    with pytest.raises(SweepError, match="other settings"):
        run_sweep(other)


def test_herd_plan_prints_the_paper_comparison_and_refuses_no_budget(capsys) -> None:
    from herd.cli import main

    assert main(["plan", "--gpus", "16384"]) == 1
    assert "give --flops C, or --gpus N and --days D" in capsys.readouterr().err
    assert main(["plan", "--flops", "3.8e25"]) == 0
    out = capsys.readouterr().out
    assert "16.29T" in out and "(paper: 16.55T, -1.5%)" in out and "388.7B" in out and "why they differ" in out
    assert main(["plan", "--gpus", "16384", "--days", "54", "--tp", "8", "--pp", "16", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["memory"]["gib"]["total"] < 80


def test_format_sweep_names_the_runs_and_the_failed_ones() -> None:
    from types import SimpleNamespace

    from herd.scaling.sweep import format_sweep_done, format_sweep_start

    scaling = SimpleNamespace(budgets=[1e12, 2e12], sizes=["s", "m", "l"], holdout_budget=6e12)
    cfg = SimpleNamespace(scaling=scaling, job=SimpleNamespace(dump_folder="runs/s"))
    assert format_sweep_start(cfg) == "herd scaling sweep: 2 budgets x 3 shapes + 1 held-out run (7 runs) -> runs/s"
    runs = [{"name": "a", "status": "done"}, {"name": "b", "status": "failed"}, {"name": "c"}]
    assert format_sweep_done(cfg, {"runs": runs}, 61.4).splitlines() == [
        "done in 61s: 3 runs in runs/s/manifest.json; failed: b, c",
        "next: herd scaling fit runs/s",
    ]
    scaling.holdout_budget = 0
    assert format_sweep_start(cfg) == "herd scaling sweep: 2 budgets x 3 shapes (6 runs) -> runs/s"
    assert "failed" not in format_sweep_done(cfg, {"runs": runs[:1]}, 1)
