"""lm-eval with herd's model (herd/eval/lm_eval_model.py), herd's local tasks and `herd eval harness`: the
log-likelihoods and greedy text equal lm-eval's own `hf` model on one checkpoint, the task data builds the same
every time, a bad jsonl line names its file and line, and one run end to end writes herd result files."""

import json

import pytest

from herd.cli import main
from herd.errors import EvalError
from herd.eval import harness
from herd.eval.results import read_result
from herd.eval.tasks import BUILDERS, jsonl_dataset, task_files


@pytest.fixture(autouse=True)
def _task_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HERD_EVAL_TASKS_DIR", str(tmp_path / "task_data"))


def test_loglikelihoods_and_greedy_text_equal_hf(tiny_chat_model) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from herd.eval.lm_eval_model import HerdLM

    def requests(kind, args):
        return [Instance(kind, {}, a, i) for i, a in enumerate(args)]

    pairs = [
        ("Question: What month comes after May?\nAnswer:", " June"),
        ("Question: What month comes after May?\nAnswer:", " July"),  # shares the forward of the one above
        ("The capital of France is ", "Paris"),  # the trailing space moves to the continuation
        ("", "an empty context is conditioned on the prefix token"),
        ("x", " a longer continuation of several tokens"),
        ("<|im_start|>user\nhi<|im_end|>\n", "<|im_start|>assistant"),  # special-token text is the token
    ]
    docs = [("A document long enough to need several rolling windows of 32 tokens. " * 6,), ("short",)]
    gens = [
        ("Question: What is 2 + 2?\nAnswer:", {"until": ["\n"], "max_gen_toks": 10, "do_sample": False}),
        ("Once upon a time", {"until": ["."], "max_gen_toks": 12}),
        ("Hello", {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}),
    ]
    out = {}
    settings = {"pretrained": tiny_chat_model, "dtype": "float32", "batch_size": 2, "max_length": 32, "device": "cpu"}
    for name, cls in (("hf", HFLM), ("herd", HerdLM)):
        lm = cls(**settings)
        out[name] = (
            lm.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True),
            lm.loglikelihood_rolling(requests("loglikelihood_rolling", docs), disable_tqdm=True),
            lm.generate_until(requests("generate_until", gens), disable_tqdm=True),
        )
    (hf_ll, hf_roll, hf_gen), (ll, roll, gen) = out["hf"], out["herd"]
    for (a, greedy_a), (b, greedy_b) in zip(hf_ll, ll, strict=True):
        assert b == pytest.approx(a, abs=1e-4) and greedy_a == greedy_b
    assert roll == pytest.approx(hf_roll, abs=1e-4)
    assert gen == hf_gen


def test_model_args_are_checked() -> None:
    from herd.eval.lm_eval_model import HerdLM

    with pytest.raises(EvalError, match="unknown model_args nonsense"):
        HerdLM(pretrained="unused", nonsense=1)


def test_task_data_is_built_once_and_reads_back(tmp_path) -> None:
    for name in BUILDERS:
        files = task_files(name, tmp_path)
        first = {split: p.read_text() for split, p in files.items()}
        files[next(iter(files))].unlink()  # without its done marker a half-built task is built again...
        (tmp_path / f"{name}.v1.done").unlink()
        assert {split: p.read_text() for split, p in task_files(name, tmp_path).items()} == first  # ...the same
    rows = [json.loads(line) for line in (tmp_path / "herd_sequences.v1.test.jsonl").read_text().splitlines()]
    assert len(rows) > 150 and all(len(r["choices"]) == 4 for r in rows)
    march = next(r for r in rows if r["id"] == "month-after-March")
    assert march["choices"][march["answer"]] == "April"


def test_bad_user_jsonl_line_names_file_and_line(tmp_path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "1 + 1", "answer": "2"}\n{"question": "2 + 2"}\n')
    with pytest.raises(EvalError, match=r"qa\.jsonl:2: missing field 'answer'"):
        jsonl_dataset(str(data), fields=["question", "answer"])
    data.write_text('{"question": "1 + 1", "answer": "2"}\n\n{"question": \n')
    with pytest.raises(EvalError, match=r"qa\.jsonl:3: not JSON"):
        jsonl_dataset({"test": str(data)})


def test_metrics_keep_filter_names_only_when_several() -> None:
    one = {"alias": "t", "exact_match,first-number": 0.5, "exact_match_stderr,first-number": 0.1}
    assert harness._metrics(one) == ({"exact_match": 0.5, "exact_match_stderr": 0.1}, ["first-number"])
    two = {"exact_match,strict": 0.25, "exact_match,flexible": 0.5, "bits_per_byte_stderr,strict": "N/A"}
    metrics, _ = harness._metrics(two)
    assert metrics == {"exact_match,strict": 0.25, "exact_match,flexible": 0.5}


@pytest.mark.slow
def test_herd_eval_harness_end_to_end(tiny_chat_model, tmp_path) -> None:
    out = tmp_path / "results"
    argv = ["eval", "harness", "--tasks", "herd_sequences", "--model_args", f"pretrained={tiny_chat_model}",
            "--batch_size", "4", "--limit", "4", "--herd-out", str(out)]  # fmt: skip
    assert main(argv) == 0
    r = read_result(out / "herd_sequences.json")
    assert (r.benchmark, r.model, r.kind) == ("herd_sequences", tiny_chat_model, "harness")
    assert r.meta["output_type"] == "multiple_choice" and r.meta["item_score"] == "acc"
    assert [it.id for it in r.items] == ["0", "1", "2", "3"]
    assert r.items[0].text == "Question: What month comes after January?\nAnswer: February"
    assert all(it.score in (0.0, 1.0) for it in r.items)
    assert r.metrics["acc"] == pytest.approx(r.mean_score())
    assert list((out / "lm_eval").rglob("samples_herd_sequences_*.jsonl"))  # lm-eval's own files stay beside
