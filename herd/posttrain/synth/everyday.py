"""Everyday closed-book facts for knowledge probing (issue 21): what a small chat model may well know unprompted.

The families of facts.py (HTTP codes, HTML entities, Unicode names...) are mostly things a 135M model does not know,
so the probe labels few of them "known" and the round learns to refuse their shape of question. These families ask
what people ask a chat model every day, so the probe finds knowledge to keep as well as gaps:

- "language": the official language of a country; "currency": the currency it uses. Both from the CLDR data that
  babel ships (territory names, official and de facto languages, the currency in use on a fixed date, English
  display names), read at run time.
- "continent": the continent of a country, from the time zones CLDR lists for it (Europe/Paris).
- "time_unit": how many of one unit of time make another (60 seconds in a minute, 7 days in a week...); "unit":
  the same for measures and counts people learn at school (100 centimeters in a meter, 8 legs on a spider).
- "opposite": the antonym of a common word (a table written for herd).
- "weekday": the day after or before a day of the week (`calendar`).
- "arithmetic": products of one-digit numbers and sums of two-digit numbers.

Each question kind has templates for the train split and different ones for the eval split, so a held-out question
is phrased unlike anything trained on (whole phrasing families held out, not single strings). Made-up subjects
(countries, units and days that do not exist) are always unanswerable.

facts.py owns the item format, probing and judging; this module gives it kinds (`QUESTIONS`, `templates`), facts
(`facts`) and made-up subjects (`made_up`).
"""

from __future__ import annotations

import calendar
import datetime
import functools
import random
from collections import Counter
from collections.abc import Iterator

# question kind -> (family, train templates, eval templates, topic for refusals); "{s}" is the subject
QUESTIONS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {
    "language": (
        "language",
        ("What language do people speak in {s}?", "What is the official language of {s}? Answer briefly."),
        ("I'm travelling to {s} soon. Which language will I hear there?", "{s}: main language?"),
        "which language is spoken in {s}",
    ),
    "currency": (
        "currency",
        ("What is the currency of {s}?", "Which currency is used in {s}? Answer briefly."),
        ("If I go shopping in {s}, what money do I pay with?", "{s} uses which currency?"),
        "which currency {s} uses",
    ),
    "time_unit": (
        "time_unit",
        ("How many {s}? Answer with a number.", "Tell me how many {s}."),
        ("Quick question: how many {s}?", "Do you know how many {s}?"),
        "how many {s}",
    ),
    "weekday_after": (
        "weekday",
        ("Which day of the week comes after {s}?", "What day follows {s}? Answer briefly."),
        ("If today is {s}, what day is it tomorrow?", "Tomorrow, when today is {s}, is which day?"),
        "which day comes after {s}",
    ),
    "weekday_before": (
        "weekday",
        ("Which day of the week comes before {s}?", "What day precedes {s}? Answer briefly."),
        ("If today is {s}, what day was it yesterday?", "Yesterday, when today is {s}, was which day?"),
        "which day comes before {s}",
    ),
    "continent": (
        "continent",
        ("Which continent is {s} in?", "On what continent is {s}? Answer briefly."),
        ("Looking at a world map, where would I find {s}: on which continent?", "{s} is part of which continent?"),
        "which continent {s} is in",
    ),
    "unit": (
        "unit",
        ("How many {s}? Answer with a number.", "Tell me how many {s}."),
        ("Quick question: how many {s}?", "Do you know how many {s}?"),
        "how many {s}",
    ),
    "opposite": (
        "opposite",
        ("What is the opposite of the word '{s}'?", "Give the antonym of '{s}'. Answer with one word."),
        ("If something is not {s} but the reverse, what is it?", "'{s}' is the opposite of what word?"),
        "the opposite of '{s}'",
    ),
    "product": (
        "arithmetic",
        ("What is {s}? Answer with a number.", "Compute {s}."),
        ("Can you tell me what {s} makes?", "{s} = ?"),
        "what {s} is",
    ),
    "sum": (
        "arithmetic",
        ("What is {s}? Answer with a number.", "Compute {s}."),
        ("Can you tell me what {s} makes?", "{s} = ?"),
        "what {s} is",
    ),
}
FAMILIES = tuple(dict.fromkeys(family for family, *_ in QUESTIONS.values()))

# (kind, key, subject, answer, snippet, aliases); answer None: made up
Fact = tuple[str, str, str, str | None, str | None, tuple[str, ...]]

_CURRENCY_DATE = datetime.date(2024, 1, 1)  # a fixed date: the currency data lists each territory's history
_TIME_UNITS = (  # (how many, what is counted): the question's subject is "{what}"
    (60, "seconds are in a minute"),
    (60, "minutes are in an hour"),
    (24, "hours are in a day"),
    (7, "days are in a week"),
    (12, "months are in a year"),
    (365, "days are in a year that is not a leap year"),
    (366, "days are in a leap year"),
    (52, "weeks are in a year"),
    (10, "years are in a decade"),
    (100, "years are in a century"),
    (1000, "years are in a millennium"),
    (3600, "seconds are in an hour"),
    (1440, "minutes are in a day"),
    (1000, "milliseconds are in a second"),
    (14, "days are in a fortnight"),
    (28, "days February has in a year that is not a leap year"),
    (31, "days January has"),
    (30, "days April has"),
    (4, "quarters are in a year"),
)
_UNITS = (  # (how many, what is counted), as for _TIME_UNITS
    (100, "centimeters are in a meter"), (10, "millimeters are in a centimeter"), (1000, "meters are in a kilometer"),
    (1000, "grams are in a kilogram"), (1000, "milliliters are in a liter"), (12, "inches are in a foot"),
    (3, "feet are in a yard"), (16, "ounces are in a pound"), (12, "eggs are in a dozen"), (5280, "feet are in a mile"),
    (100, "cents are in a dollar"), (2, "pints are in a quart"), (4, "quarts are in a gallon"),
    (1000, "kilograms are in a metric ton"), (8, "bits are in a byte"), (1024, "bytes are in a kibibyte"),
    (90, "degrees are in a right angle"), (360, "degrees are in a full circle"),
    (180, "degrees are in a straight angle"),
    (3, "sides does a triangle have"), (4, "sides does a square have"), (6, "sides does a hexagon have"),
    (8, "sides does an octagon have"), (5, "sides does a pentagon have"), (8, "legs does a spider have"),
    (6, "legs does an insect have"), (52, "cards are in a standard deck without jokers"), (26, "letters are in the "
    "English alphabet"), (64, "squares are on a chessboard"), (11, "players are on a soccer team on the field"),
)  # fmt: skip
_OPPOSITES = (  # (word, its usual antonym, other accepted antonyms)
    ("hot", "cold", ()), ("big", "small", ("little", "tiny")), ("up", "down", ()), ("day", "night", ()),
    ("happy", "sad", ("unhappy",)), ("fast", "slow", ()), ("open", "closed", ("close", "shut")),
    ("light", "dark", ("heavy",)), ("tall", "short", ()), ("full", "empty", ()), ("wet", "dry", ()),
    ("early", "late", ()), ("rich", "poor", ()), ("strong", "weak", ()), ("young", "old", ()),
    ("left", "right", ()), ("win", "lose", ()), ("buy", "sell", ()), ("push", "pull", ()),
    ("inside", "outside", ()), ("begin", "end", ("finish",)), ("north", "south", ()), ("east", "west", ()),
    ("true", "false", ()), ("hard", "soft", ("easy",)), ("love", "hate", ()), ("friend", "enemy", ("foe",)),
    ("clean", "dirty", ()), ("cheap", "expensive", ()), ("loud", "quiet", ("soft", "silent")),
    ("thick", "thin", ()), ("sweet", "sour", ("bitter", "salty")), ("above", "below", ("beneath", "under")),
    ("arrive", "leave", ("depart",)), ("remember", "forget", ()), ("question", "answer", ()),
    ("ancient", "modern", ()), ("asleep", "awake", ()), ("floor", "ceiling", ()), ("entrance", "exit", ()),
    ("victory", "defeat", ("loss",)), ("accept", "reject", ("refuse", "decline")), ("increase", "decrease", ()),
    ("maximum", "minimum", ()), ("visible", "invisible", ()), ("polite", "rude", ("impolite",)),
)  # fmt: skip
# CLDR has no continents; babel's territory -> time zone table does (Europe/Paris), except that "America" is both
# Americas, split here by the South American countries, and ocean regions (Atlantic, Indian) say nothing. Countries
# on two continents are left out.
_ZONE_CONTINENT = {"Europe": "Europe", "Asia": "Asia", "Africa": "Africa", "Australia": "Oceania", "Pacific": "Oceania"}
_SOUTH_AMERICA = {"AR", "BO", "BR", "CL", "CO", "EC", "GY", "PY", "PE", "SR", "UY", "VE", "GF", "FK"}
_CONTINENT_ALIASES = {  # an answer with the adjective ("a European country") says the same
    "Europe": ("European",), "Asia": ("Asian",), "Africa": ("African",), "North America": ("North American",),
    "South America": ("South American",), "Oceania": ("Australia", "Pacific", "Oceanian"),
}  # fmt: skip
_OCEAN_ZONES = ("Antarctica/", "Atlantic/", "Indian/")
_TRANSCONTINENTAL = {"RU", "TR", "KZ", "EG", "AZ", "GE", "CY", "AM", "PA", "ID", "TL", "PG"}
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 10: "ten",
                 11: "eleven", 12: "twelve", 14: "fourteen", 16: "sixteen", 24: "twenty-four", 26: "twenty-six",
                 28: "twenty-eight", 30: "thirty", 31: "thirty-one", 52: "fifty-two", 60: "sixty", 64: "sixty-four",
                 90: "ninety", 100: "a hundred", 1000: "a thousand"}  # fmt: skip


def facts(family: str) -> Iterator[Fact]:
    if family in ("language", "currency"):
        yield from _country_facts(family)
    elif family in ("time_unit", "unit"):  # both "how many X?" tables: the kind is the family's name
        for n, what in _TIME_UNITS if family == "time_unit" else _UNITS:
            aliases = (_NUMBER_WORDS[n],) if n in _NUMBER_WORDS else ()
            yield family, f"{family}:" + "_".join(what.split()), what, str(n), f"How many {what}? {n}.", aliases
    elif family == "opposite":
        for word, antonym, others in _OPPOSITES:
            snippet = f"The opposite of '{word}' is '{antonym}'."
            yield "opposite", f"opposite:{word}", word, antonym, snippet, others
    elif family == "continent":
        yield from _continent_facts()
    elif family == "weekday":
        days = list(calendar.day_name)
        for i, day in enumerate(days):
            after, before = days[(i + 1) % 7], days[(i - 1) % 7]
            yield "weekday_after", f"weekday:{day}+1", day, after, f"The day after {day} is {after}.", ()
            yield "weekday_before", f"weekday:{day}-1", day, before, f"The day before {day} is {before}.", ()
    elif family == "arithmetic":
        for a in range(2, 10):
            for b in range(a, 10):
                yield "product", f"product:{a}x{b}", f"{a} times {b}", str(a * b), f"{a} times {b} is {a * b}.", ()
        for a in range(11, 40, 3):
            for b in range(12, 60, 7):
                yield "sum", f"sum:{a}+{b}", f"{a} plus {b}", str(a + b), f"{a} plus {b} is {a + b}.", ()


@functools.cache
def _countries() -> tuple[tuple[str, str, tuple[str, ...], str | None, str | None], ...]:
    """(code, English name, official languages' English names, currency's English name, code) for countries: CLDR
    territories with a two-letter code, at least one official language and a currency in use."""
    from babel import Locale
    from babel.languages import get_official_languages
    from babel.numbers import get_territory_currencies

    en = Locale("en")
    out = []
    for code, name in sorted(en.territories.items()):
        if len(code) != 2 or not code.isalpha() or code in ("ZZ", "EU", "EZ", "UN", "QO", "XA", "XB"):
            continue
        languages = tuple(dict.fromkeys(n for lang in get_official_languages(code, de_facto=True)
                                        if (n := en.languages.get(lang.split("_")[0]))))  # fmt: skip
        currencies = get_territory_currencies(code, _CURRENCY_DATE, tender=True)
        if languages and currencies:
            currency = currencies[0]
            out.append((code, name, languages, en.currencies.get(currency), currency))
    return tuple(out)


def _continent_facts() -> Iterator[Fact]:
    from babel.core import get_global

    zones = get_global("territory_zones")
    for code, name, *_ in _countries():
        # Outlying islands aside (Hawaii is a US zone), the region of most of the country's zones.
        regions = Counter(z.split("/")[0] for z in zones.get(code, ()) if not z.startswith(_OCEAN_ZONES))
        if not regions or code in _TRANSCONTINENTAL:
            continue
        region, count = regions.most_common(1)[0]
        if 2 * count <= regions.total():
            continue
        if region == "America":
            continent = "South America" if code in _SOUTH_AMERICA else "North America"
        elif (continent := _ZONE_CONTINENT.get(region, "")) == "":
            continue
        aliases = _CONTINENT_ALIASES[continent]
        yield "continent", f"continent:{code}", name, continent, f"{name} is in {continent}.", aliases


def _country_facts(family: str) -> Iterator[Fact]:
    for code, name, languages, currency, currency_code in _countries():
        if family == "language":
            snippet = f"The official language{'s' if len(languages) > 1 else ''} of {name}: {', '.join(languages)}."
            yield "language", f"language:{code}", name, languages[0], snippet, languages[1:]
        elif currency and currency_code:
            # "Japanese Yen": the answer; "yen" alone and the ISO code also count.
            aliases = tuple(dict.fromkeys(a for a in (currency.split()[-1], currency_code) if a != currency))
            snippet = f"{name} uses the {currency} ({currency_code})."
            yield "currency", f"currency:{code}", name, currency, snippet, aliases


def made_up(family: str, rng: random.Random, word: str) -> Fact:
    """A question of the family about something that does not exist, named after the made-up `word` (facts.py makes
    its made-up words for every family)."""
    if family in ("language", "currency"):
        country = word.capitalize() + rng.choice(("ia", "land", "stan", "ovia"))
        return family, f"{family}:{country}", country, None, None, ()
    if family == "continent":
        return "continent", f"continent:{word}", word.capitalize() + rng.choice(("ia", "land", "stan")), None, None, ()
    if family == "unit":
        subject = f"{word}s are in a {rng.choice(('meter', 'kilogram', 'liter', 'mile'))}"
        return "unit", f"unit:{word}", subject, None, None, ()
    if family == "opposite":
        return "opposite", f"opposite:{word}", word, None, None, ()
    if family == "time_unit":
        subject = f"{word}s are in a {rng.choice(('week', 'day', 'year'))}"
        return "time_unit", f"time_unit:{word}", subject, None, None, ()
    if family == "weekday":
        day = word.capitalize() + "day"
        return rng.choice(("weekday_after", "weekday_before")), f"weekday:{day}", day, None, None, ()
    if family == "arithmetic":  # a number that is not one
        return "product", f"product:{word}", f"{word} times {rng.randint(2, 9)}", None, None, ()
    raise ValueError(f"unknown everyday fact family {family!r}")


def templates(kind: str, split: str) -> tuple[str, ...]:
    _, train, held_out, _ = QUESTIONS[kind]
    return held_out if split == "eval" else train
