import http
import random
import time

import pytest

from herd.errors import DataError
from herd.posttrain.synth.facts import (
    FAMILIES,
    fact_eval,
    fact_items,
    is_refusal,
    judge,
    make_fact_data,
    make_fact_pairs,
    probe,
    score_fact,
)
from herd.posttrain.synth.tasks import check_task, make_tasks, task_dialog, task_reward


def _task(task: str, answer: str) -> dict:
    return {"kind": "task", "task": task, "key": f"{task}:x", "messages": [], "answer": answer}


def _fact(answer: str | None, aliases=(), key: str = "http_status:404") -> dict:
    return {
        "kind": "fact",
        "family": "http_status",
        "key": key,
        "split": "train",
        "messages": [{"role": "user", "content": "What is the reason phrase of HTTP status code 404?"}],
        "answer": answer,
        "aliases": list(aliases),
        "topic": "the reason phrase of HTTP status code 404",
        "fictitious": answer is None,
    }


# ---------------------------------------------------------------------------------------------
# Tasks


@pytest.mark.parametrize(
    "response", ["14", " 14 ", "14.", "`14`", '"14"', "The answer is 14.", "Answer: 14", "fourteen"]
)
def test_number_checker_accepts_the_allowed_forms(response):
    assert check_task(_task("add", "14"), response)


@pytest.mark.parametrize(
    "response", ["4", "140", "-14", "14 or 15", "1 4", "The answer is 15", "14 apples", "", "The answer is", "four"]
)
def test_number_checker_rejects_wrong_answers_and_near_misses(response):
    assert not check_task(_task("add", "14"), response)


def test_negative_numbers_and_unicode_minus():
    item = _task("subtract", "-25")
    assert check_task(item, "-25") and check_task(item, "−25") and not check_task(item, "25")


def test_formatting_checkers_are_exact():
    up = _task("uppercase", "RIVER STONE")
    assert check_task(up, "RIVER STONE") and check_task(up, '"RIVER  STONE".')
    assert not check_task(up, "River Stone") and not check_task(up, "RIVER STONES")
    rev = _task("reverse", "stone river apple")
    assert check_task(rev, "Stone river apple.") and not check_task(rev, "apple river stone")
    assert not check_task(rev, "stone, river, apple")
    srt = _task("sort", "apple, river, stone")
    assert check_task(srt, "apple, river, stone") and check_task(srt, "apple,river,stone.")
    assert not check_task(srt, "apple river stone") and not check_task(srt, "river, apple, stone")
    assert not check_task(srt, "apple, river, stone, ")


def test_extraction_checkers():
    email = _task("email", "greta.basket34@post.net")
    assert check_task(email, "greta.basket34@post.net") and check_task(email, "<Greta.Basket34@post.net>")
    assert not check_task(email, "greta.basket3@post.net") and not check_task(email, "basket34@post.net")
    assert check_task(_task("year", "1883"), "1883") and not check_task(_task("year", "1883"), "915")
    assert check_task(_task("count", "4"), "four") and not check_task(_task("count", "4"), "14")


def test_task_reward_is_one_or_zero():
    assert task_reward(_task("multiply", "42"), "42") == 1.0
    assert task_reward(_task("multiply", "42"), "24") == 0.0


def test_task_splits_are_disjoint_and_items_distinct():
    train = make_tasks(random.Random(0), 300, split="train")
    evals = make_tasks(random.Random(0), 100, split="eval")
    assert {t["key"] for t in train}.isdisjoint(t["key"] for t in evals)
    assert len({t["key"] for t in train}) == 300
    assert {t["family"] for t in train} == {"arithmetic", "formatting", "extraction"}


def test_every_task_dialog_answer_passes_the_checker():
    for item in make_tasks(random.Random(1), 300, split="train"):
        dialog = task_dialog(item)
        assert [m["role"] for m in dialog["messages"]] == ["user", "assistant"]
        assert check_task(item, dialog["messages"][-1]["content"]), item


def test_make_tasks_rejects_a_bad_split_and_unknown_task():
    with pytest.raises(DataError):
        make_tasks(random.Random(0), 3, split="test")
    with pytest.raises(DataError):
        make_tasks(random.Random(0), 3, split="train", tasks=["divide"])


# ---------------------------------------------------------------------------------------------
# Facts


@pytest.mark.parametrize(
    "text",
    [
        "I don't know.",
        "I'm not sure about that.",
        "I do not have information about that code.",
        "Sorry, I cannot answer that.",
        "There is no information about this entity.",
        "I have no idea.",
        "I’m not certain what that means.",
        "There is no such status code.",
    ],
)
def test_refusal_detector_finds_refusals(text):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "HTTP 404 is Not Found.",
        "The server knows the request but refuses it.",
        "No Content: the server returns no body.",
        "It stands for &.",
        "I know: it is 200 OK.",
    ],
)
def test_refusal_detector_passes_answers(text):
    assert not is_refusal(text)


def test_judge_correct_wrong_refused():
    item = _fact("Not Found")
    assert judge(item, "HTTP status code 404 (Not Found) means the page is missing.") == "correct"
    assert judge(item, "It means NOT FOUND.") == "correct"
    assert judge(item, "It means Bad Request.") == "wrong"
    assert judge(item, "I'm not sure; it might be Not Found.") == "refused"
    assert judge(_fact(None), "It means Teapot Overflow.") == "wrong"
    assert score_fact(item, "Not found.") == {"refused": False, "correct": True}
    assert score_fact(item, "I don't know.") == {"refused": True, "correct": False}


def test_judge_needs_a_whole_token():
    code = _fact("404")
    assert judge(code, "It is 404.") == "correct"
    assert judge(code, "It is 4040.") == "wrong" and judge(code, "It is 1404") == "wrong"
    amp = _fact("&", aliases=["AMPERSAND"])
    assert judge(amp, "The entity &amp; stands for &.") == "correct"
    assert judge(amp, "The entity &amp; is used in HTML.") == "wrong"
    assert judge(amp, "It is the ampersand sign.") == "correct"
    quote = _fact('"', aliases=["QUOTATION MARK"])
    assert judge(quote, 'It stands for "quot", a symbol.') == "wrong"
    lt = _fact("<", aliases=["LESS-THAN SIGN"])
    assert judge(lt, "It is the less than sign.") == "correct"
    assert judge(_fact("þ"), "It is Þ.") == "wrong"


def _probed(label: str, verdicts: list[str], responses: list[str], finish=None, key="http_status:404") -> dict:
    finish = finish or ["stop"] * len(verdicts)
    samples = [
        {"response": r, "verdict": v, "finish_reason": f} for r, v, f in zip(responses, verdicts, finish, strict=True)
    ]
    return {**_fact("Not Found", key=key), "samples": samples, "label": label}


def test_make_fact_data_keeps_answers_refuses_unknowns_and_drops_mixed():
    known = _probed("known", ["correct", "correct", "wrong"], ["It is Not Found.", "Not Found.", "Gone."])
    unknown = _probed("unknown", ["wrong", "wrong", "refused"], ["Gone.", "OK.", "I don't know."], key="b")
    mixed = _probed("mixed", ["correct", "wrong", "wrong"], ["Not Found.", "Gone.", "OK."], key="c")
    records = make_fact_data([known, unknown, mixed], random.Random(0))
    assert [r["key"] for r in records] == ["http_status:404", "b"]
    assert records[0]["messages"][-1]["content"] in ("It is Not Found.", "Not Found.")
    refusal = records[1]["messages"][-1]["content"]
    assert is_refusal(refusal) and "HTTP status code 404" in refusal
    assert all(r["messages"][0]["role"] == "user" and r["messages"][-1]["role"] == "assistant" for r in records)


def test_make_fact_data_trims_a_cut_off_answer_to_a_sentence():
    cut = _probed("known", ["correct", "correct"], ["It is Not Found. The server could", "Not Found means the"])
    for s in cut["samples"]:
        s["finish_reason"] = "length"
    [record] = make_fact_data([cut], random.Random(0))
    assert record["messages"][-1]["content"] == "It is Not Found."
    cut["samples"] = cut["samples"][1:]
    assert make_fact_data([cut], random.Random(0)) == []


def test_fact_pairs_prefer_refusals_where_unknown_and_answers_over_refusals_where_known():
    known = _probed("known", ["correct", "correct", "wrong"], ["It is Not Found.", "Not Found.", "Gone."])
    unknown = _probed("unknown", ["wrong", "wrong", "refused"], ["Gone.", "OK.", "I don't know."], key="b")
    made_up = {**_fact(None, key="c"), "samples": [], "label": "unknown"}  # not sampled: no wrong answer to reject
    opened = {**_probed("unknown", ["wrong"], ["Gone."], key="d"), "open_book": True}
    probed = [known, unknown, made_up, opened]
    pairs = make_fact_pairs(probed, make_fact_data(probed, random.Random(0)), random.Random(0))
    by_key = {p["key"]: p for p in pairs}
    assert set(by_key) == {"http_status:404", "b", "d"}
    assert by_key["http_status:404"]["chosen"] in ("It is Not Found.", "Not Found.")
    assert by_key["d"]["chosen"] == "Not Found"  # open-book: the snippet's answer
    for key in ("http_status:404", "d"):
        assert is_refusal(by_key[key]["rejected"]) and not is_refusal(by_key[key]["chosen"])
    assert is_refusal(by_key["b"]["chosen"]) and by_key["b"]["rejected"] in ("Gone.", "OK.")
    for pair in pairs:  # the prompt without the response
        assert [m["role"] for m in pair["messages"]] == ["user"]


def test_every_refusal_target_is_detected():
    items = fact_items(random.Random(0), 60, split="train", fictitious=0.3)
    probed = [{**item, "samples": [], "label": "unknown"} for item in items]
    for record in make_fact_data(probed, random.Random(0)):
        assert is_refusal(record["messages"][-1]["content"]), record


def test_fact_snippets_come_from_installed_data():
    items = fact_items(random.Random(0), 50, split="train", fictitious=0.0, families=["http_status"])
    for item in items:
        status = http.HTTPStatus(int(item["key"].removeprefix("http_status:")))
        assert item["answer"] in (status.phrase, str(status.value))
        assert item["snippet"].startswith(f"HTTP status {status.value} is {status.phrase}")


def test_fact_items_cover_families_with_answers_and_fictitious_ones():
    items = fact_items(random.Random(0), 120, split="train", fictitious=0.2)
    assert {i["family"] for i in items} == set(FAMILIES)
    fictitious = [i for i in items if i["fictitious"]]
    assert len(fictitious) == 24 and all(i["answer"] is None and i["snippet"] is None for i in fictitious)
    for i in items:
        if not i["fictitious"]:
            assert i["answer"] and i["answer"] not in i["messages"][0]["content"]
    assert len({(i["key"], i["messages"][0]["content"]) for i in items}) == 120


def test_fact_splits_are_disjoint_by_fact_key():
    train = fact_items(random.Random(0), 800, split="train", fictitious=0.1)
    evals = fact_items(random.Random(1), 150, split="eval", fictitious=0.1)
    assert {i["key"] for i in train}.isdisjoint(i["key"] for i in evals)
    with pytest.raises(DataError):
        fact_items(random.Random(0), 10_000, split="eval")


def _greedy(verdict: str) -> dict:
    return {"response": "", "verdict": verdict, "finish_reason": "stop"}


def test_fact_eval_answerable_is_what_the_model_answers_right_greedily():
    items = fact_items(random.Random(0), 4, split="eval", fictitious=0.0)
    probed = [
        {**i, "greedy": _greedy(g), "samples": [], "label": label}
        for i, g, label in zip(items, ["correct", "wrong", "wrong", "correct"], ["known", "unknown", "mixed", "mixed"],
                               strict=True)
    ]  # fmt: skip
    evals = fact_eval(probed)
    # Greedy right is the "knew before" set even when the samples stray (mixed); greedy wrong and some sample
    # right is left out.
    assert [(e["key"], e["answerable"]) for e in evals] == [(items[0]["key"], True), (items[1]["key"], False),
                                                            (items[3]["key"], True)]  # fmt: skip
    assert all(e["kind"] == "fact" and "aliases" in e for e in evals)
    with pytest.raises(DataError):
        fact_eval([{**probed[0], "split": "train"}])


class _FakeTokenizer:
    def encode_chat(self, messages, *, add_generation_prompt=True):
        return [1, 2, 3]


class _FakeEngine:
    """Answers the prompts with fixed replies in turn, so probing is tested without a model."""

    def __init__(self, replies):
        self.tokenizer = _FakeTokenizer()
        self.replies = replies

    def generate(self, prompts, params):
        from herd.inference import Completion

        assert params[0].temperature == 0  # the greedy answer first, then the samples
        assert len({p.seed for p in params[1:4]}) == 3  # each sample of an item has its own seed
        return [Completion(prompt_tokens=p, text=self.replies[i % len(self.replies)], finish_reason="stop")
                for i, p in enumerate(prompts)]  # fmt: skip


def test_probe_labels_from_the_greedy_answer_and_the_samples():
    item = _fact("Not Found")
    fictitious = {**_fact(None, key="http_status:777")}

    def label(replies: list[str]) -> str:  # replies: the greedy answer, then three samples
        return probe(_FakeEngine(replies), [item], samples=3)[0]["label"]

    assert label(["Not Found."]) == "known"
    assert label(["Not Found.", "Not Found.", "Not Found.", "Gone."]) == "known"
    assert label(["Not Found.", "Not Found.", "Gone.", "Gone."]) == "mixed"
    # Greedy right and every sample astray: the model says it when asked, so it is not "unknown" (no refusal).
    assert label(["Not Found.", "Gone.", "Gone.", "Gone."]) == "mixed"
    assert label(["Gone.", "Not Found.", "Not Found.", "Not Found."]) == "mixed"
    assert label(["I don't know.", "Gone."]) == "unknown"
    [probed] = probe(_FakeEngine(["Not Found.", "Gone."]), [item], samples=3)
    assert probed["greedy"]["response"] == "Not Found." and [s["response"] for s in probed["samples"]] == [
        "Gone.", "Not Found.", "Gone."]  # fmt: skip
    [result] = probe(_FakeEngine(["Not Found."]), [fictitious], samples=3)
    assert result["label"] == "unknown" and result["samples"] == [] and result["greedy"] is None


@pytest.mark.slow
def test_probe_with_the_embedded_model():
    from herd.formats import load_pretrained
    from herd.inference import Engine

    pretrained = load_pretrained()
    engine = Engine(pretrained.model, pretrained.tokenizer, max_batch_size=16)
    items = fact_items(random.Random(0), 8, split="eval", fictitious=0.25)
    start = time.perf_counter()
    probed = probe(engine, items, samples=2, temperature=0.7, max_new_tokens=16, seed=0)
    print(f"probed {len(items)} questions x 2 samples in {time.perf_counter() - start:.1f} s")
    assert len(probed) == 8
    assert all(p["label"] in ("known", "unknown", "mixed") for p in probed)
    for p in probed:
        assert len(p["samples"]) == (0 if p["fictitious"] else 2)
        assert all(s["verdict"] in ("correct", "wrong", "refused") for s in p["samples"])
    assert sum(p["fictitious"] for p in probed) == 2
    records = make_fact_data(probed, random.Random(0))
    assert len(records) <= sum(p["label"] != "mixed" for p in probed)
    assert all(r["messages"][-1]["role"] == "assistant" for r in records)
    kept = [p for p in probed if p["label"] == "unknown" or (p["greedy"] or {}).get("verdict") == "correct"]
    assert len(fact_eval(probed)) == len(kept)
