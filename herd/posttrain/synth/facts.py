"""Factuality and refusal data by knowledge probing (Llama 3 paper, section 4.3.6).

1. Snippets: facts built at run time from data the Python install already has, so nothing is committed and nothing
   is fetched: `http.HTTPStatus` (code <-> reason phrase), `html.entities` (entity -> character), `unicodedata`
   (character -> name), `errno` + `os.strerror` (name -> message, as on this platform), `mimetypes` defaults
   (extension -> type) and `calendar` (month number <-> name). Each family mixes facts a small model may know
   (404, &amp;, .html, March) with ones it surely does not (rare codes, entities and code points).
2. Questions: one per snippet, from templates. Llama 3 has the model write questions; a 135M model cannot write
   reliable ones, so herd fills templates and the snippet carries the ground truth (`answer` plus `aliases`).
   Fictitious questions use the same templates on entities that do not exist (HTTP status 777, "&zorbquux;") and
   are always unanswerable.
3. `probe` asks each question greedily and samples more answers, and `judge`s each one: an item is "known" when the
   greedy answer and at least half the samples are correct, "unknown" when none is, and "mixed" otherwise.
4. `make_fact_data` keeps a correct answer for known items (the greedy one when it finished) and writes a refusal
   for unknown ones; mixed items are left out. `make_fact_pairs` turns those records into preference pairs in both
   directions (refusal > wrong answer, answer > refusal). `fact_eval` turns probed eval items into answerable /
   unanswerable test items.

Splits: an item's split is a hash partition (`split_of`) of its fact key ("http_status:404"), shared by every
question about that fact, so eval facts are never trained on in either direction.
"""

from __future__ import annotations

import calendar
import errno
import html.entities
import http
import mimetypes
import os
import random
import re
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any

from herd.errors import DataError
from herd.inference import Engine, SamplingParams
from herd.posttrain.synth import everyday
from herd.posttrain.synth.tasks import SPLITS, split_of

# question kind -> (family, question templates, topic for refusals); "{s}" is the question's subject
_QUESTIONS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "http_phrase": (
        "http_status",
        (
            "What is the reason phrase of HTTP status code {s}?",
            "HTTP status code {s} has which standard reason phrase? Answer briefly.",
            "What does the HTTP status code {s} mean? Give its reason phrase.",
        ),
        "the reason phrase of HTTP status code {s}",
    ),
    "http_code": (
        "http_status",
        (
            'Which HTTP status code has the reason phrase "{s}"?',
            'What is the numeric HTTP status code for "{s}"? Answer briefly.',
        ),
        'which HTTP status code is called "{s}"',
    ),
    "html_entity": (
        "html_entity",
        (
            "Which character does the HTML entity {s} stand for?",
            "What character is written as {s} in HTML? Answer briefly.",
        ),
        "which character the HTML entity {s} stands for",
    ),
    "unicode_name": (
        "unicode_name",
        (
            "What is the official Unicode name of the character {s}?",
            "Which name does the Unicode standard give to the character {s}? Answer briefly.",
        ),
        "the Unicode name of the character {s}",
    ),
    "errno": (
        "errno",
        (
            "What is the error message for the errno code {s}?",
            "What does the errno value {s} mean? Answer briefly.",
        ),
        "what the errno code {s} means",
    ),
    "mime_type": (
        "mime_type",
        (
            "What is the MIME type of files with the extension {s}?",
            "Which media type (MIME type) goes with the file extension {s}? Answer briefly.",
        ),
        "the MIME type of {s} files",
    ),
    "month_name": (
        "month",
        (
            "What is the name of month number {s} of the Gregorian calendar?",
            "Which month is month {s} of the year? Answer briefly.",
        ),
        "the name of month number {s}",
    ),
    "month_number": (
        "month",
        (
            "What is the number of the month {s} in the calendar, counting January as 1?",
            "Which month number is {s}? Answer briefly.",
        ),
        "the number of the month {s}",
    ),
}
FAMILIES = tuple(dict.fromkeys(family for family, _, _ in _QUESTIONS.values()))
"""The reference-data families (fact_items' default); everyday.FAMILIES are the everyday closed-book ones. `herd synth`
probes a mix of both (`synth.fact_families`)."""
ALL_FAMILIES = FAMILIES + everyday.FAMILIES

_REFUSALS = (
    "I'm not sure about that; I don't know {topic}.",
    "Sorry, I don't know {topic}.",
    "I do not have reliable information about {topic}, so I can't answer that.",
    "I'm not sure. I don't know {topic}, and I'd rather not guess.",
)
_REFUSAL_PATTERNS = re.compile(
    "|".join(
        (
            r"\bi (?:do not|don't|dont|really don't) know\b",
            r"\bi(?:'m| am) (?:not sure|not certain|unsure|not aware|not familiar)\b",
            r"\bi (?:do not|don't) have (?:any |enough |reliable |specific |the )?"
            r"(?:information|data|knowledge|details|access to)\b",
            r"\bi have no (?:idea|information|knowledge|data)\b",
            r"\b(?:cannot|can't|can not|unable to) (?:answer|say|tell|determine|confirm)\b",
            r"\bno (?:reliable |specific |available )?information (?:about|on|regarding|available)\b",
            r"\bthere (?:is|are) no (?:such|known|standard|official)\b",
        )
    )
)
_SHORT_LEFT = "\"'`([«“‘"
_SHORT_RIGHT = "\"'`)]».,;:!?”’"


def _refusal(item: dict[str, Any], rng: random.Random) -> str:
    return rng.choice(_REFUSALS).format(topic=item["topic"])


def is_refusal(text: str) -> bool:
    """Whether the text declines to answer: "I don't know", "I'm not sure", "I do not have information", ..."""
    return _REFUSAL_PATTERNS.search(text.lower().replace("’", "'")) is not None


def judge(item: dict[str, Any], response: str) -> str:
    """ "refused", "correct" or "wrong". A refusal wins over a match: a hedged answer is not trusted as knowledge
    and must not become a kept SFT target."""
    if is_refusal(response):
        return "refused"
    answers = [] if item["answer"] is None else [item["answer"], *item["aliases"]]
    return "correct" if any(_mentions(response, a) for a in answers) else "wrong"


def score_fact(item: dict[str, Any], response: str) -> dict[str, bool]:
    verdict = judge(item, response)
    return {"refused": verdict == "refused", "correct": verdict == "correct"}


def fact_items(
    rng: random.Random,
    n: int,
    *,
    split: str,
    fictitious: float = 0.1,
    families: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """n distinct fact questions of one split, families drawn evenly; a `fictitious` share asks about made-up
    entities. Each item: kind, family, key, split, messages, answer, aliases, topic, snippet, fictitious,
    open_book (False here; see `open_book_variant`)."""
    if split not in SPLITS:
        raise DataError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    if not 0 <= fictitious <= 1:
        raise DataError(f"fictitious={fictitious}: expected a share between 0 and 1")
    names = list(FAMILIES) if families is None else list(families)
    if unknown := [f for f in names if f not in ALL_FAMILIES]:
        raise DataError(f"unknown fact family {unknown[0]!r}: expected some of {', '.join(ALL_FAMILIES)}")
    n_fictitious = round(n * fictitious)
    pools = {f: _pool(f, split) for f in names}
    for pool in pools.values():
        rng.shuffle(pool)
    items: list[dict[str, Any]] = []
    for _ in range(n - n_fictitious):
        live = [f for f in names if pools[f]]
        if not live:
            raise DataError(f"only {len(items)} {split} fact questions in families {', '.join(names)}, asked for {n}")
        items.append(pools[rng.choice(live)].pop())
    seen: set[str] = set()
    for _ in range(200 * n_fictitious):
        if len(seen) == n_fictitious:
            break
        q = _fictitious(rng.choice(names), rng)
        if split_of(q["key"]) == split and q["key"] not in seen:
            seen.add(q["key"])
            items.append(q)
    if len(seen) < n_fictitious:
        raise DataError(f"could make only {len(seen)} distinct fictitious {split} questions, not {n_fictitious}")
    rng.shuffle(items)
    for q in items:
        templates = _templates(q.pop("question"), split)
        q["split"] = split
        q["open_book"] = False
        q["messages"] = [{"role": "user", "content": rng.choice(templates).format(s=q["subject"])}]
    return items


def count_questions(family: str, split: str) -> int:
    """How many distinct real questions the family has in the split (fact_items draws at most this many)."""
    return len(_pool(family, split))


def _pool(family: str, split: str) -> list[dict[str, Any]]:
    """The family's real questions whose fact falls in the split."""
    return [q for q in _questions(family) if split_of(q["key"]) == split]


def open_book_variant(item: dict[str, Any]) -> dict[str, Any]:
    """The same question with its snippet before it: answerable from the prompt. Paired with the closed-book
    question, it teaches the difference between "I was told" and "I do not know" on identical wording."""
    if item["fictitious"]:
        raise DataError(f"fact {item['key']!r} is made up and has no snippet")
    question = item["messages"][-1]["content"]
    return {**item, "key": f"{item['key']}#open", "open_book": True,
            "messages": [{"role": "user", "content": f"{item['snippet']}\n\n{question}"}]}  # fmt: skip


def probe(
    engine: Engine,
    items: Sequence[dict[str, Any]],
    *,
    samples: int = 3,
    temperature: float = 0.7,
    max_new_tokens: int = 24,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each item plus `greedy` and `samples` (each {"response", "verdict", "finish_reason"}) and `label`:

    - "known": the greedy answer is correct and at least half the samples are;
    - "unknown": the greedy answer is not correct and no sample is;
    - "mixed": anything between.

    The greedy answer is what the model says when asked (evaluation decodes greedily), the samples say how firmly
    it holds it: a small model sampled at 0.7 often strays from an answer it gives greedily, so samples alone
    would call known facts unknown and teach refusals of them. Fictitious items are unknown without sampling."""
    if samples < 1:
        raise DataError(f"samples={samples}: expected at least 1")
    prompts, params, owners = [], [], []
    for i, item in enumerate(items):
        if item["fictitious"]:
            continue
        ids = engine.tokenizer.encode_chat(item["messages"], add_generation_prompt=True)
        prompts.append(ids)
        params.append(SamplingParams(max_new_tokens=max_new_tokens))
        owners.append(i)
        for s in range(samples):
            prompts.append(ids)
            # Same seed + same prompt gives the same sample, so each sample of an item gets its own seed.
            params.append(SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + s))
            owners.append(i)
    results: list[list[dict[str, Any]]] = [[] for _ in items]
    for i, completion in zip(owners, engine.generate(prompts, params) if prompts else [], strict=True):
        verdict = judge(items[i], completion.text)
        results[i].append({"response": completion.text, "verdict": verdict, "finish_reason": completion.finish_reason})
    probed = []
    for item, answers in zip(items, results, strict=True):
        if not answers:  # fictitious: not asked
            probed.append({**item, "greedy": None, "samples": [], "label": "unknown"})
            continue
        greedy, sampled = answers[0], answers[1:]
        correct = sum(s["verdict"] == "correct" for s in sampled)
        if greedy["verdict"] == "correct":
            label = "known" if 2 * correct >= len(sampled) else "mixed"
        else:
            label = "unknown" if correct == 0 else "mixed"
        probed.append({**item, "greedy": greedy, "samples": sampled, "label": label})
    return probed


def make_fact_data(probed: Sequence[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """SFT records: a correct answer for known items, a refusal for unknown ones; mixed items are left out.

    The greedy answer is preferred when it finished, then a finished correct sample; a cut-off one is trimmed to its
    last sentence that still holds the answer, and a known item with no such text is left out too. An open-book
    question the model missed gets the snippet's answer as its target."""
    records = []
    for item in probed:
        if item["label"] == "known":
            response = _kept_answer(item, rng)
            if response is None:
                continue
        elif item.get("open_book"):
            # The snippet in the prompt holds the answer: the model should read it, not refuse.
            response = item["answer"]
        elif item["label"] == "unknown":
            response = _refusal(item, rng)
        else:
            continue
        messages = [*item["messages"], {"role": "assistant", "content": response}]
        records.append({"messages": messages, "key": item["key"], "label": item["label"]})
    return records


def make_fact_pairs(probed: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]],
                    rng: random.Random) -> list[dict[str, Any]]:  # fmt: skip
    """Preference pairs on both sides of the line, from `make_fact_data`'s records: where the model does not know,
    its refusal over one of its own wrong answers; where it knows or the snippet tells it, its answer over a
    refusal. Rejection sampling alone yields mostly the first kind (an SFT model that already answers open-book
    questions right leaves no pair to learn from), and DPO on those alone spreads refusals to answerable questions;
    Llama 3 likewise balances its safety data with borderline prompts against false refusals."""
    by_key = {item["key"]: item for item in probed}
    pairs = []
    for record in records:
        item = by_key[record["key"]]
        chosen = record["messages"][-1]["content"]
        if is_refusal(chosen):
            wrong = [s["response"].strip() for s in _answers(item) if s["verdict"] == "wrong" and s["response"].strip()]
            if not wrong:  # fictitious questions are not sampled
                continue
            rejected = rng.choice(wrong)
        else:
            rejected = _refusal(item, rng)
        pairs.append({"messages": record["messages"][:-1], "chosen": chosen, "rejected": rejected,
                      "key": item["key"]})  # fmt: skip
    return pairs


def fact_eval(probed: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Eval items from probed eval-split questions. Answerable: open-book ones, and closed-book ones the model
    answers correctly when asked greedily (the "knew before" set: what evaluation would have scored right). Not
    answerable: unknown and fictitious ones. The rest (greedy wrong, some sample right) are left out, because the
    base model neither knows nor surely misses them."""
    items = []
    for item in probed:
        if item["split"] != "eval":
            raise DataError(f"fact {item['key']!r} is from the {item['split']} split; fact_eval takes eval items only")
        greedy = item.get("greedy") or {}
        knew = greedy.get("verdict") == "correct"
        if not (knew or item["label"] == "unknown" or item.get("open_book")):
            continue
        items.append(
            {
                "kind": "fact",
                "family": item["family"],
                "key": item["key"],
                "messages": item["messages"],
                "answer": item["answer"],
                "aliases": item["aliases"],
                "answerable": knew or bool(item.get("open_book")),
                "open_book": bool(item.get("open_book")),
                "fictitious": item["fictitious"],
            }
        )
    return items


# ---------------------------------------------------------------------------------------------
# Matching


def _mentions(text: str, answer: str) -> bool:
    """Whether `answer` appears in `text` as a whole token.

    Answers of one or two characters ("&", "þ", "OK", "3") match case-sensitively and only when standing alone
    (between spaces, quotes, brackets or sentence punctuation), because such characters also occur inside other
    words and entities. Longer answers match case-insensitively between non-word characters, with hyphens read as
    spaces ("less-than sign" = "LESS-THAN SIGN" = "less than sign")."""
    if len(answer) <= 2:
        left, right = re.escape(_SHORT_LEFT), re.escape(_SHORT_RIGHT)
        pattern = rf"(?:^|(?<=[\s{left}])){re.escape(answer)}(?=$|[\s{right}])"
        return re.search(pattern, text.replace("’", "'")) is not None
    return re.search(rf"(?<!\w){re.escape(_fold(answer))}(?!\w)", _fold(text)) is not None


def _fold(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").replace("-", " ").split())


def _answers(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The greedy answer (when probed) and the samples."""
    return ([item["greedy"]] if item.get("greedy") else []) + list(item["samples"])


def _kept_answer(item: dict[str, Any], rng: random.Random) -> str | None:
    """The SFT target of a known item: its greedy answer when that finished, else a finished correct sample, else
    a correct answer cut at its last sentence that still holds the answer."""
    correct = [s for s in _answers(item) if s["verdict"] == "correct"]
    if correct and correct[0] is item.get("greedy") and correct[0]["finish_reason"] == "stop":
        return str(correct[0]["response"]).strip()
    finished = [s["response"].strip() for s in correct if s["finish_reason"] == "stop"]
    if finished:
        return rng.choice(finished)
    for sample in correct:
        text = sample["response"]
        ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
        for end in reversed(ends):
            if judge(item, text[:end]) == "correct":
                return text[:end].strip()
    return None


# ---------------------------------------------------------------------------------------------
# Snippets and questions from installed data


def _templates(kind: str, split: str) -> tuple[str, ...]:
    """A kind's question templates for the split: the everyday kinds phrase eval questions unlike train ones."""
    return everyday.templates(kind, split) if kind in everyday.QUESTIONS else _QUESTIONS[kind][1]


def _question(
    kind: str, key: str, subject: str, answer: str | None, snippet: str | None, aliases: Sequence[str] = ()
) -> dict[str, Any]:
    if kind in everyday.QUESTIONS:
        family, _, _, topic = everyday.QUESTIONS[kind]
    else:
        family, _, topic = _QUESTIONS[kind]
    return {
        "kind": "fact",
        "family": family,
        "key": key,
        "question": kind,
        "subject": subject,
        "answer": answer,
        "aliases": list(aliases),
        "topic": topic.format(s=subject),
        "snippet": snippet,
        "fictitious": answer is None,
    }


def _char_subject(ch: str) -> str:
    return f"'{ch}' (U+{ord(ch):04X})"


_ORDINALS: tuple[str, ...] = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")
_ORDINALS += ("tenth", "eleventh", "twelfth")
_ORDINAL_SUFFIX = {1: "st", 2: "nd", 3: "rd"}
_UNICODE_BLOCKS = ((0x21, 0x7E), (0xA1, 0xFF), (0x391, 0x3C9), (0x20A0, 0x20C0), (0x2190, 0x21FF), (0x2200, 0x22FF))


def _questions(family: str) -> Iterator[dict[str, Any]]:
    if family in everyday.FAMILIES:
        for fact in everyday.facts(family):
            yield _question(*fact)
    elif family == "http_status":
        for status in http.HTTPStatus:
            code, phrase = str(status.value), status.phrase
            snippet = f"HTTP status {code} is {phrase}" + (f": {status.description}" if status.description else "")
            yield _question("http_phrase", f"http_status:{code}", code, phrase, snippet)
            yield _question("http_code", f"http_status:{code}", phrase, code, snippet)
    elif family == "html_entity":
        for name, cp in html.entities.name2codepoint.items():
            ch = chr(cp)
            if unicodedata.category(ch) in ("Zs", "Cf"):  # invisible: the model could only answer by name
                continue
            char_name = unicodedata.name(ch)
            snippet = f"The HTML entity &{name}; stands for the character {ch} (U+{cp:04X} {char_name})."
            yield _question("html_entity", f"html_entity:{name}", f"&{name};", ch, snippet, [char_name])
    elif family == "unicode_name":
        for lo, hi in _UNICODE_BLOCKS:
            for cp in range(lo, hi + 1):
                ch = chr(cp)
                if (uname := unicodedata.name(ch, None)) is None:
                    continue
                snippet = f"The character {ch} (U+{cp:04X}) is named {uname} in Unicode {unicodedata.unidata_version}."
                yield _question("unicode_name", f"unicode_name:{cp:04X}", _char_subject(ch), uname, snippet)
    elif family == "errno":
        for errnum, name in sorted(errno.errorcode.items()):
            message = os.strerror(errnum)
            snippet = f"errno {name} ({errnum} on this system) means: {message}."
            yield _question("errno", f"errno:{name}", name, message, snippet)
    elif family == "mime_type":
        for ext, mime in sorted(mimetypes.MimeTypes().types_map[True].items()):
            snippet = f"Files ending in {ext} have the MIME type {mime}."
            yield _question("mime_type", f"mime_type:{ext}", ext, mime, snippet)
    elif family == "month":
        for number in range(1, 13):
            name = calendar.month_name[number]
            snippet = f"Month {number} of the Gregorian calendar is {name}."
            yield _question("month_name", f"month:{number}", str(number), name, snippet)
            ordinals = [_ORDINALS[number - 1], f"{number}{_ORDINAL_SUFFIX.get(number, 'th')}"]
            yield _question("month_number", f"month:{number}", name, str(number), snippet, ordinals)


_SYLLABLES = ("zor", "bli", "quu", "vex", "tra", "mip", "gol", "nax", "fen", "dru", "kel", "sop")


def _made_up_word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts))


def _fictitious(family: str, rng: random.Random) -> dict[str, Any]:
    """A question from the family's templates about something that does not exist."""
    if family in everyday.FAMILIES:
        return _question(*everyday.made_up(family, rng, _made_up_word(rng, 2)))
    while True:
        if family == "http_status":
            code = rng.randint(600, 999)  # HTTP defines no status at or above 600
            return _question("http_phrase", f"http_status:{code}", str(code), None, None)
        if family == "html_entity":
            name = _made_up_word(rng, 2)
            if f"{name};" not in html.entities.html5:
                return _question("html_entity", f"html_entity:{name}", f"&{name};", None, None)
        elif family == "unicode_name":
            cp = rng.randint(0x370, 0x2FFF)
            if unicodedata.category(chr(cp)) == "Cn":  # unassigned in this Unicode version
                return _question("unicode_name", f"unicode_name:{cp:04X}", _char_subject(chr(cp)), None, None)
        elif family == "errno":
            name = "E" + _made_up_word(rng, 2).upper()
            if not hasattr(errno, name):
                return _question("errno", f"errno:{name}", name, None, None)
        elif family == "mime_type":
            ext = "." + _made_up_word(rng, 1) + rng.choice("qxz")
            if mimetypes.guess_type("file" + ext, strict=False)[0] is None:
                return _question("mime_type", f"mime_type:{ext}", ext, None, None)
        elif family == "month":
            number = rng.randint(13, 99)
            return _question("month_name", f"month:{number}", str(number), None, None)
        else:
            raise DataError(f"unknown fact family {family!r}")
