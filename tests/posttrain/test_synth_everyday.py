"""Everyday closed-book facts (herd/posttrain/synth/everyday.py): answers from CLDR (babel) and arithmetic, held-out
questions phrased unlike the train ones, made-up subjects, and the "knew before" metrics of `evaluate`."""

import random

import pytest

from herd.errors import DataError
from herd.posttrain.synth import everyday
from herd.posttrain.synth.facts import fact_eval, fact_items, judge


def _fact(family: str, key: str) -> dict:
    [item] = [q for q in _all(family) if q["key"] == key]
    return item


def _all(family: str) -> list[dict]:
    from herd.posttrain.synth.facts import _questions

    return list(_questions(family))


def test_everyday_facts_hold_the_answers_people_expect() -> None:
    japan = _fact("language", "language:JP")
    assert japan["subject"] == "Japan" and judge(japan, "People in Japan speak Japanese.") == "correct"
    assert judge(japan, "They speak Korean.") == "wrong" and judge(japan, "I'm not sure.") == "refused"
    india = _fact("language", "language:IN")  # several official languages: any of them counts
    assert judge(india, "Hindi") == judge(india, "English is official there.") == "correct"
    yen = _fact("currency", "currency:JP")
    assert yen["answer"] == "Japanese Yen" and judge(yen, "The yen.") == judge(yen, "JPY") == "correct"
    assert judge(_fact("currency", "currency:FR"), "France uses the euro.") == "correct"
    hours = _fact("time_unit", "time_unit:hours_are_in_a_day")
    assert judge(hours, "There are 24 hours in a day.") == judge(hours, "Twenty-four.") == "correct"
    assert judge(hours, "12") == "wrong"
    assert judge(_fact("weekday", "weekday:Monday+1"), "Tuesday comes next.") == "correct"
    assert judge(_fact("weekday", "weekday:Monday-1"), "Sunday") == "correct"
    assert judge(_fact("arithmetic", "product:7x8"), "7 times 8 is 56.") == "correct"
    assert judge(_fact("arithmetic", "sum:14+33"), "47") == "correct"
    assert len(_all("language")) > 150 and len(_all("currency")) > 150  # CLDR's countries, not a hand-picked few


def test_continents_come_from_time_zones_and_skip_what_they_cannot_settle() -> None:
    expected = {"FR": "Europe", "JP": "Asia", "KE": "Africa", "PE": "South America", "BR": "South America",
                "MX": "North America", "US": "North America", "NZ": "Oceania", "AU": "Oceania"}  # fmt: skip
    for code, continent in expected.items():
        assert _fact("continent", f"continent:{code}")["answer"] == continent, code
    keys = {q["key"] for q in _all("continent")}
    # Spanning two continents (Russia, Turkey, Egypt), or only island zones that name an ocean (Iceland, Maldives).
    assert not {"continent:RU", "continent:TR", "continent:EG", "continent:IS", "continent:MV"} & keys
    latvia = _fact("continent", "continent:LV")
    assert judge(latvia, "Latvia is a European country.") == judge(latvia, "Europe") == "correct"
    assert judge(_fact("continent", "continent:PE"), "Peru is in North America.") == "wrong"
    assert len(keys) > 150


def test_units_and_opposites() -> None:
    assert judge(_fact("unit", "unit:centimeters_are_in_a_meter"), "A meter has 100 centimeters.") == "correct"
    assert judge(_fact("unit", "unit:bits_are_in_a_byte"), "A byte has 16 bits.") == "wrong"
    hot = _fact("opposite", "opposite:hot")
    assert judge(hot, "The opposite of 'hot' is 'cold'.") == "correct" and judge(hot, "warm") == "wrong"
    assert judge(_fact("opposite", "opposite:big"), "little") == "correct"  # other antonyms count


def test_held_out_questions_are_phrased_unlike_any_train_question() -> None:
    for kind, (_, train, held_out, _) in everyday.QUESTIONS.items():
        assert train and held_out and not set(train) & set(held_out), kind
    train = fact_items(random.Random(0), 120, split="train", fictitious=0.1, families=everyday.FAMILIES)
    evals = fact_items(random.Random(1), 60, split="eval", fictitious=0.1, families=everyday.FAMILIES)
    assert {q["family"] for q in evals} == set(everyday.FAMILIES)
    assert {q["key"] for q in train}.isdisjoint(q["key"] for q in evals)

    def phrasings(split: str) -> set[str]:
        return {t.format(s=q["subject"]) for q in train + evals for kind in everyday.QUESTIONS
                for t in everyday.templates(kind, split)}  # fmt: skip

    assert all(q["messages"][0]["content"] in phrasings("train") for q in train)
    assert not any(q["messages"][0]["content"] in phrasings("train") for q in evals)


def test_made_up_subjects_have_no_answer_and_unknown_families_are_refused_by_name() -> None:
    rng = random.Random(3)
    for family in everyday.FAMILIES:
        q = fact_items(rng, 5, split="train", fictitious=1.0, families=[family])[0]
        assert q["fictitious"] and q["answer"] is None and q["snippet"] is None, q
    with pytest.raises(DataError, match="unknown fact family 'capitals'"):
        fact_items(rng, 5, split="train", families=["capitals"])


def test_evaluate_reports_the_knew_before_set_apart_from_open_book_questions(tiny_chat_model) -> None:
    from herd.formats import load_pretrained
    from herd.posttrain.synth.facts import open_book_variant
    from herd.posttrain.synth.run import evaluate

    closed = fact_items(random.Random(0), 3, split="eval", fictitious=0.0, families=["arithmetic"])
    greedy = [{"response": "", "verdict": v, "finish_reason": "stop"} for v in ("correct", "wrong", "correct")]
    probed = [{**q, "greedy": g, "samples": [], "label": label}
              for q, g, label in zip(closed, greedy, ["known", "unknown", "mixed"], strict=True)]  # fmt: skip
    probed.append({**open_book_variant(closed[1]), "greedy": greedy[1], "samples": [], "label": "unknown"})
    items = fact_eval(probed)
    loaded = load_pretrained(tiny_chat_model)
    metrics = evaluate(loaded.model, loaded.tokenizer, items, max_new_tokens=4)
    counts = metrics["counts"]
    assert counts["fact_answerable_correct"] == 3  # two known closed-book questions and the open-book one
    assert counts["fact_knew_correct"] == counts["fact_knew_refused"] == 2  # the closed-book ones the start knew
    assert counts["fact_unanswerable_refused"] == 1
