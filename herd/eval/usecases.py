"""The prompt set of `herd eval pairwise`: the 12 use cases of Llama 3's human evaluation, written by herd.

Llama 3 (section 5.3) scored about 1,800 prompts over 12 use cases by pairwise preference. herd cannot ship those
prompts, so it builds its own from templates x vocabulary written here: every way to fill a template is a prompt,
and a seed picks which ones (`build_prompts`). The passages that closed QA, extraction, rewriting, summarization and
classification need are short made-up texts written for herd, so no answer can be looked up or remembered.

Each category is a list of template families. The families are shuffled (seeded) and dealt out round-robin, so a
small set still covers every template, and a larger --per-category keeps the smaller set as its prefix.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from herd.errors import EvalError

CATEGORIES = (
    "advice", "brainstorming", "classification", "closed_qa", "coding", "creative_writing",
    "extraction", "persona", "open_qa", "reasoning", "rewriting", "summarization",
)  # fmt: skip
"""The 12 use cases, in Llama 3's order; user prompt files name them exactly so."""

TITLES = {
    "advice": "asking for advice", "brainstorming": "brainstorming", "classification": "classification",
    "closed_qa": "closed question answering", "coding": "coding", "creative_writing": "creative writing",
    "extraction": "extraction", "persona": "inhabiting a character/persona", "open_qa": "open question answering",
    "reasoning": "reasoning", "rewriting": "rewriting", "summarization": "summarization",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class UseCasePrompt:
    id: str
    category: str
    prompt: str


@dataclass(frozen=True, slots=True)
class Passage:
    kind: str
    """What the text is ("a notice", "an email"): classification asks for it."""
    text: str
    questions: tuple[str, ...]
    """Questions the passage answers (closed QA)."""
    fields: tuple[str, ...]
    """Things to pull out of it (extraction)."""


# ---------------------------------------------------------------------------------------------
# Passages: made up for herd, with made-up names, so the answer is in the text and only there.

PASSAGES = (
    Passage("an official notice", "The Brackenford town council will close Mill Lane bridge from 3 March to 28 "
        "April for repairs to its two stone arches. Pedestrians can use the temporary footbridge beside the "
        "weir, which opens on 1 March. Bus route 14 will divert through Orchard Road and add about six minutes "
        "to each trip. Questions go to the highways officer, Dana Okafor, on 01632 960 412.",
        ("How long will the bridge be closed?", "Which bus route is affected, and how?",
         "Where should pedestrians cross while the bridge is closed?", "Who answers questions about the works?"),
        ("dates", "people's names", "phone numbers")),
    Passage("a product recall", "Kettleworks is recalling its Model K2 travel kettle sold between June and "
        "September 2023, after 41 reports of the lid hinge cracking while the water boils. No injuries have been "
        "reported. Owners should stop using the kettle and return it to any store for a full refund or a "
        "replacement Model K3. Kettles with a serial number starting with 7 are not affected.",
        ("Why is the kettle being recalled?", "What can owners get in exchange?",
         "Which kettles are not affected?", "How many problem reports were there?"),
        ("product models", "numbers with what they count", "remedies offered to customers")),
    Passage("a lab notebook entry", "Day 12. The basil seedlings under the blue LED panel reached 9 cm, while "
        "those under the white panel reached 7 cm. Leaf count was similar in both trays (six to eight leaves). "
        "Tray B dried out over the weekend, so from today Priya will water both trays at 9:00 and 17:00. Next "
        "measurement on day 15.",
        ("Which seedlings grew taller?", "What went wrong over the weekend?",
         "When will the trays be watered from now on?", "When is the next measurement?"),
        ("measurements with units", "times of day", "people's names")),
    Passage("an email", "Hi team, from Monday 9 June we move to the fourth floor of the Larkin Building. Please "
        "pack your desks by Friday noon; crates are in the kitchen. IT will move monitors and docking stations, "
        "but laptops stay with you. Parking passes for the new garage are with Tomasz at reception. The old "
        "office keys go back to me by 13 June. Thanks, Elena",
        ("When does the team move?", "Who moves the monitors?",
         "Where are the parking passes?", "By when must the old keys be returned?"),
        ("dates and deadlines", "people's names", "items and who is responsible for each")),
    Passage("a museum label", "This loom, built around 1870 in the village of Harrowgate Mills, wove wool "
        "blankets for nearly sixty years. It was run by the Pell family, whose three daughters each worked it "
        "for a decade. The loom was donated to the museum in 1952 and restored in 2019 by volunteers, who "
        "replaced the treadles but kept the original oak frame.",
        ("What did the loom make?", "When was it donated to the museum?",
         "Which parts were replaced in the restoration?", "Who ran the loom?"),
        ("years", "places", "parts of the loom")),
    Passage("a research abstract", "We tested whether short walking breaks improve afternoon concentration in "
        "office workers. Sixty volunteers were split into two groups: one took a ten-minute walk at 14:00, the "
        "other stayed at their desks. On a standard attention test at 15:00, the walking group made 18 percent "
        "fewer errors. The effect faded by 17:00. We did not measure sleep, which may confound the results.",
        ("How many volunteers took part?", "What did the walking group do?",
         "How long did the effect last?", "What limitation do the authors mention?"),
        ("numbers with what they describe", "times", "the groups and what each did")),
    Passage("a complaint letter", "Dear Sunrise Furniture, on 2 May I ordered an oak dining table (order "
        "58213) with delivery promised for 16 May. It arrived on 30 May with a deep scratch across the top, and "
        "the driver left before I could point it out. I have sent photos twice without a reply. I would like "
        "the table replaced or a refund of the full 640 pounds. Regards, Malik Haddad",
        ("What was wrong with the table?", "How late was the delivery?",
         "What does the customer want?", "What is the order number?"),
        ("dates", "amounts of money", "the customer's requests")),
    Passage("a match report", "Eastvale Rovers beat Corran Athletic 3-2 on Saturday in a game that swung "
        "twice. Corran led 2-0 at half time through goals from Ines Varga. Rovers' substitute Kofi Mensah scored "
        "twice in ten minutes after the break, and captain Ruth Adler headed the winner in the 88th minute. "
        "Rovers move up to fourth in the table.",
        ("Who won, and by what score?", "Who scored for Corran?",
         "Who scored the winning goal, and when?", "Where are Rovers in the table now?"),
        ("players and their teams", "goals with the minute or period they came in", "scores")),
    Passage("a recipe note", "These oat biscuits keep for a week in a tin. Melt 100 g of butter with 2 "
        "tablespoons of honey, then stir in 150 g of rolled oats, 80 g of flour and a pinch of salt. Press the "
        "mixture into a lined tin and bake at 180 C for 18 minutes, until golden at the edges. Cut into squares "
        "while warm, but leave them in the tin until cold or they crumble.",
        ("How long do the biscuits bake?", "When should they be cut?",
         "Why leave them in the tin until cold?", "How long do they keep?"),
        ("ingredients with quantities", "temperatures and times", "steps in order")),
    Passage("a software release note", "Version 4.2 of the Fieldbook app adds offline maps for up to five "
        "regions, stored on the phone. Sync is now about twice as fast on slow connections. The export menu "
        "moved from Settings to the Share button. Support for Android 8 ends with this release; those devices "
        "keep working on version 4.1 but get no updates.",
        ("What is new in version 4.2?", "Where did the export menu go?",
         "What happens to Android 8 devices?", "How many offline regions can be stored?"),
        ("features", "version numbers", "changes for users of old devices")),
)  # fmt: skip

SNIPPETS = {  # short texts to classify, with the labels they are classified into
    ("customer review", "positive, negative or mixed"): (
        "The blender is loud, but it crushes ice in seconds and cleans up easily.",
        "Stopped working after two weeks and support never answered my emails.",
        "Exactly the size I hoped for. The fabric feels sturdy and the colour is lovely.",
        "Great hotel location; shame the room smelled of smoke.",
        "I have bought this tea for years and it has never disappointed.",
        "The app crashes every time I try to upload a photo.",
        "Fast delivery, though the box was crushed and one cup was chipped.",
        "Comfortable shoes from the first day. I ordered a second pair.",
    ),
    ("news headline", "politics, business, science, sport or culture"): (
        "Parliament passes budget after all-night session",
        "Local bakery chain opens its fiftieth shop",
        "Telescope spots water vapour around distant planet",
        "Underdogs reach cup final after penalty shoot-out",
        "Film festival honours veteran documentary maker",
        "Central bank holds interest rates steady",
        "New species of frog found in cloud forest",
        "Mayor resigns over housing contract inquiry",
    ),
    ("support message", "billing, technical problem, account access or feature request"): (
        "I was charged twice for my March subscription.",
        "The password reset email never arrives.",
        "Could you add a dark mode to the desktop version?",
        "The export button gives an error 500 since yesterday.",
        "Why did my bill go up by five dollars this month?",
        "I am locked out after too many login attempts.",
        "It would be great to schedule reports every Monday.",
        "Videos stutter on my phone but play fine on the laptop.",
    ),
    ("sentence", "formal or informal"): (
        "We regret to inform you that your application was unsuccessful.",
        "gonna be late, traffic is nuts",
        "Kindly find attached the minutes of the previous meeting.",
        "That movie was so good, you have to see it!",
        "The committee shall convene on the first Tuesday of each month.",
        "no worries, grab me a coffee if you pass by",
        "Please do not hesitate to contact us should you require assistance.",
        "lol that cat video made my day",
    ),
}


# ---------------------------------------------------------------------------------------------
# Families: a template and the slots it is filled from; every combination is a prompt.

Slots = Sequence[Mapping[str, str]]


def _each(name: str, values: Sequence[str]) -> list[dict[str, str]]:
    return [{name: v} for v in values]


def _fill(template: str, *slots: Slots) -> list[str]:
    """Every way to fill `template` with one mapping from each of `slots`."""
    out = []
    for combo in itertools.product(*slots):
        out.append(template.format(**{k: v for m in combo for k, v in m.items()}))
    return out


_TEXTS = _each("text", [p.text for p in PASSAGES])


def _advice() -> list[list[str]]:
    situations = _each("s", [
        "I just started my first job as a nurse and feel overwhelmed by night shifts.",
        "I want to start running but have never exercised regularly.",
        "My flatmate keeps eating my food and I do not want a fight.",
        "I have two job offers: one pays more, the other has a shorter commute.",
        "I keep putting off studying for an exam that is three weeks away.",
        "My elderly father refuses to stop driving even though his eyesight is getting worse.",
        "I want to ask my manager for a raise but do not know how to bring it up.",
        "My teenage son spends most nights gaming until 2 a.m.",
        "I am moving to a country where I do not speak the language.",
        "I lent a friend a large sum of money a year ago and she has not mentioned it since.",
        "I have 3,000 dollars saved and no idea whether to invest it or keep it as a cushion.",
        "I am nervous about giving a ten-minute talk at a friend's wedding.",
        "My small garden gets almost no sun and everything I plant dies.",
        "I want to learn to cook but only have a microwave and one hob.",
        "A coworker keeps taking credit for my ideas in meetings.",
        "I feel lonely since moving to a new city for work.",
        "I have to choose between two universities that seem equally good.",
        "My dog barks every time I leave the flat and the neighbours complain.",
        "I want to cut down on my phone use in the evenings.",
        "I have been offered a promotion that means managing my former teammates.",
    ])  # fmt: skip
    asks = _each(
        "ask",
        [
            "What should I do?",
            "What would you suggest, step by step?",
            "What are my options, and which would you pick?",
            "How should I approach this?",
        ],
    )
    return [_fill("{s} {ask}", situations, asks), _fill("{s} {ask} Keep it short.", situations, asks)]


def _brainstorming() -> list[list[str]]:
    subjects = _each("s", [
        "a birthday party for a seven-year-old who loves dinosaurs", "names for a bakery that only sells bread",
        "cheap weekend activities for a family of four", "ways to reuse glass jars",
        "themes for a school science fair", "side dishes for a summer barbecue",
        "gifts for a friend who has everything",
        "ways to make a long train journey pass quickly", "slogans for a bicycle repair shop",
        "team-building activities that do not feel awkward", "rainy-day games for children without screens",
        "names for a podcast about local history", "ways to save water at home",
        "fundraising ideas for a community garden", "plot twists for a mystery novel set on a ship",
        "questions to ask at the end of a job interview", "uses for a spare room",
        "ways to welcome a new neighbour", "topics for a beginner's blog about photography",
        "low-cost date ideas",
    ])  # fmt: skip
    counts = _each("n", ["five", "eight", "ten"])
    return [
        _fill("Give me {n} ideas for {s}.", counts, subjects),
        _fill("Brainstorm {n} {s}, one line each.", counts, subjects),
        _fill("I need {s}. Come up with {n}, and mark your favourite.", subjects, counts),
    ]


def _classification() -> list[list[str]]:
    families = []
    templates = (
        "Classify this {kind} as {labels}. Answer with the label only.\n\n{item}",
        "Is the following {kind} {labels}? Give the label and a one-sentence reason.\n\n{item}",
        '{kind_cap}: "{item}"\nWhich label fits best: {labels}? Explain briefly.',
        "Label the {kind} below ({labels}) and say how confident you are.\n\n{item}",
    )
    for (kind, labels), items in SNIPPETS.items():
        label = [{"kind": kind, "kind_cap": kind.capitalize(), "labels": labels}]
        for t in templates:
            families.append(_fill(t, label, _each("item", items)))
    kinds = "an official notice, a product recall, an email, a museum label, a research abstract, a letter, a news report, a recipe or a release note"  # noqa: E501
    families.append(_fill("What kind of text is this: " + kinds + "? Answer in one word or phrase.\n\n{text}", _TEXTS))
    families.append(_fill("Classify the tone of this text as neutral, friendly, urgent or upset, and explain.\n\n"
                          "{text}", _TEXTS))  # fmt: skip
    families.append(_fill("Does this text ask the reader to do something? Answer yes or no, then say what.\n\n{text}",
                          _TEXTS))  # fmt: skip
    return families


def _closed_qa() -> list[list[str]]:
    pairs = [{"text": p.text, "q": q} for p in PASSAGES for q in p.questions]
    return [
        _fill("Answer the question using only the passage.\n\nPassage: {text}\n\nQuestion: {q}", pairs),
        _fill("{text}\n\nBased on the text above: {q}", pairs),
        _fill("Read this:\n{text}\n\n{q} Quote the sentence that supports your answer.", pairs),
        _fill("{q} The answer is in this text; say so if it is not.\n\n{text}", pairs),
    ]


def _coding() -> list[list[str]]:
    tasks = _each("task", [
        "reverses the order of words in a sentence", "checks whether a string is a palindrome, ignoring case",
        "merges two sorted lists into one sorted list", "counts how often each word appears in a text",
        "returns the n-th Fibonacci number without recursion", "flattens an arbitrarily nested list",
        "removes duplicates from a list while keeping the original order", "groups a list of words into anagrams",
        "run-length encodes a string (\"aaabb\" -> \"a3b2\")", "rotates a square matrix by 90 degrees",
        "finds the second largest number in a list", "converts a Roman numeral to an integer",
        "checks whether the brackets in a string are balanced", "splits a list into chunks of size n",
        "returns the longest common prefix of a list of strings", "converts a duration in seconds to \"HH:MM:SS\"",
        "validates that a string is a plausible IPv4 address", "computes the moving average of a list",
        "finds all prime numbers below n", "performs binary search on a sorted list",
    ])  # fmt: skip
    langs = _each("lang", ["Python", "JavaScript", "Go", "Rust", "C"])
    return [
        _fill("Write a {lang} function that {task}.", langs, tasks),
        _fill("Write a {lang} function that {task}. Include two short tests.", langs, tasks),
        _fill(
            "In {lang}, how would I write a function that {task}? Explain the approach and its time complexity.",
            langs,
            tasks,
        ),
    ]


def _creative_writing() -> list[list[str]]:
    forms = _each("form", [
        "a short poem", "a haiku", "a limerick", "a 150-word story", "a diary entry", "a short dialogue",
        "a song chorus", "a fairy tale opening", "a letter", "a six-line rhyming verse",
    ])  # fmt: skip
    subjects = _each("subject", [
        "a lighthouse keeper's last night on duty", "a robot learning to cook", "the first snow of the year",
        "a lost umbrella trying to get home", "two old friends meeting after twenty years", "a city before dawn",
        "a cat who thinks it owns the house", "the last day of summer holidays", "a library after closing time",
        "a grandmother's kitchen", "a ship in a bottle", "moving house", "a kite that will not come down",
        "the sound of rain on a tin roof", "a street market at dawn", "an astronaut missing home",
    ])  # fmt: skip
    return [_fill("Write {form} about {subject}.", forms, subjects)]


def _extraction() -> list[list[str]]:
    pairs = [{"text": p.text, "field": f} for p in PASSAGES for f in p.fields]
    formats = _each("fmt", ["a JSON array", "a bulleted list", "a two-column table", "one comma-separated line"])
    return [
        _fill("List all the {field} in the text below as {fmt}.\n\n{text}", pairs, formats),
        _fill("{text}\n\nExtract the {field} from this text. Return {fmt} and nothing else.", pairs, formats),
    ]


def _persona() -> list[list[str]]:
    characters = _each("who", [
        "a 19th-century ship's captain", "a grumpy medieval blacksmith", "a cheerful tour guide on Mars",
        "a detective in a 1940s noir film", "a patient kindergarten teacher", "a dragon who guards a library",
        "an overexcited sports commentator", "a retired wizard who now runs a tea shop",
        "a Victorian botanist", "a pirate who is afraid of water", "a time traveller from the year 3000",
        "a very polite robot butler",
    ])  # fmt: skip
    requests = _each("req", [
        "Tell me about your day.", "Give me directions to the nearest market.", "Explain how a compass works.",
        "What do you think of smartphones?", "Recommend a book to me.", "Describe your favourite meal.",
        "Give me advice on making friends.", "What is the best thing about your job?",
        "Teach me one useful skill.", "Tell me a short story from your past.", "How do you spend your holidays?",
        "What are you most afraid of?", "Describe the view from your window.", "Convince me to visit your home.",
    ])  # fmt: skip
    return [
        _fill("You are {who}. Stay in character for the whole answer. {req}", characters, requests),
        _fill("Pretend to be {who} and answer in their voice: {req}", characters, requests),
    ]


def _open_qa() -> list[list[str]]:
    questions = _each("q", [
        "Why is the sky blue?", "How do vaccines train the immune system?", "What causes the seasons?",
        "How does a refrigerator keep food cold?", "Why do we dream?", "What is inflation?",
        "How do airplanes stay in the air?", "Why does bread go stale?", "What is the difference between weather "
        "and climate?", "How does GPS know where I am?", "Why do cats purr?", "What is a black hole?",
        "How does compound interest work?", "Why do leaves change colour in autumn?",
        "What is the difference between a virus and a bacterium?", "How do noise-cancelling headphones work?",
        "Why is the ocean salty?", "How does a bill become law in a parliament?", "What makes a rainbow?",
        "How do bees make honey?", "Why do we have time zones?", "What is machine learning?",
        "How does a solar panel make electricity?", "Why is sleep important?", "How do earthquakes happen?",
        "What is the placebo effect?", "How are tides caused?", "Why does ice float?",
        "How does a credit score work?", "What is photosynthesis?",
    ])  # fmt: skip
    framings = _each(
        "f",
        [
            "{q}",
            "{q} Explain it to a curious twelve-year-old.",
            "{q} Answer in under 100 words.",
            "{q} Give the short answer first, then the details.",
            "Quick question: {q}",
        ],
    )
    return [[f["f"].format(q=q["q"]) for f in framings for q in questions]]


def _reasoning() -> list[list[str]]:
    nums = lambda name, values: _each(name, [str(v) for v in values])  # noqa: E731
    names = ["Ana", "Ben", "Chidi", "Dora", "Emil"]
    people = [{"p1": a, "p2": b, "p3": c} for a, b, c in itertools.permutations(names, 3)]
    relation = [{"rel": r, "inv": i} for r, i in (("taller", "shorter"), ("older", "younger"), ("faster", "slower"))]
    return [
        _fill("A shop sells pencils at {a} cents each and erasers at {b} cents each. Maya buys {n} pencils and "
              "{m} erasers and pays with a 10-dollar note. How much change does she get? Show your reasoning.",
              nums("a", (15, 20, 35)), nums("b", (40, 55, 70)), nums("n", (3, 4, 6)), nums("m", (2, 5))),
        _fill("Two trains start {d} km apart and travel toward each other at {v1} km/h and {v2} km/h. After how "
              "many minutes do they meet? Explain step by step.",
              nums("d", (90, 120, 150)), nums("v1", (40, 50, 60)), nums("v2", (30, 45, 70))),
        _fill("{p1} is {rel} than {p2}, and {p2} is {rel} than {p3}. Is {p3} {inv} than {p1}? Explain.",
              people, relation),
        _fill("{w} workers paint {f} fences in {h} hours. Working at the same rate, how long do {w2} workers take "
              "to paint {f2} fences?",
              nums("w", (2, 3, 4)), nums("f", (6, 12)), nums("h", (4, 6)), nums("w2", (5, 6)), nums("f2", (10, 15))),
        _fill("If today is {day}, what day of the week will it be in {n} days? Show how you worked it out.",
              _each("day", ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]),
              nums("n", (10, 23, 45, 100, 365))),
    ]  # fmt: skip


def _rewriting() -> list[list[str]]:
    short = _each("text", [
        "hey, the meeting got moved to 3 so dont be late and bring the thing we talked about",
        "Our product is the best on the market and everyone should buy it right now.",
        "The results of the survey were analyzed by the team and a report was written by them.",
        "I can't come to your party because I have too much work, sorry.",
        "Customers who have not yet renewed their membership are reminded that renewal is required.",
        "The new park has swings, a pond, and lots of benches, and it is open every day until dusk.",
        "We are sorry for the delay. Your order will ship next week.",
        "Please stop leaving dirty dishes in the office sink.",
    ])  # fmt: skip
    styles = _each("style", [
        "in a formal tone", "so that a ten-year-old understands it", "as three bullet points",
        "in half the length", "in the active voice", "as a friendly message to a colleague",
        "as a tweet under 280 characters", "in plain English without jargon", "in a more polite tone",
        "as a short headline",
    ])  # fmt: skip
    return [
        _fill("Rewrite the following text {style}.\n\n{text}", _TEXTS, styles),
        _fill('Rewrite this {style}: "{text}"', short, styles),
    ]


def _summarization() -> list[list[str]]:
    forms = _each("form", [
        "in one sentence", "in three bullet points", "in at most 30 words", "for a busy executive",
        "as a headline and a one-line summary", "for a child", "keeping only what a reader must act on",
        "in two sentences, without numbers",
    ])  # fmt: skip
    return [
        _fill("Summarize the following text {form}.\n\n{text}", _TEXTS, forms),
        _fill("{text}\n\nSummarize the text above {form}.", _TEXTS, forms),
    ]


_FAMILIES: dict[str, Callable[[], list[list[str]]]] = {
    "advice": _advice, "brainstorming": _brainstorming, "classification": _classification, "closed_qa": _closed_qa,
    "coding": _coding, "creative_writing": _creative_writing, "extraction": _extraction, "persona": _persona,
    "open_qa": _open_qa, "reasoning": _reasoning, "rewriting": _rewriting, "summarization": _summarization,
}  # fmt: skip
assert tuple(_FAMILIES) == CATEGORIES


def pool(category: str, *, seed: int = 0) -> list[str]:
    """Every prompt of a category, in the seeded order: families shuffled, then dealt out round-robin."""
    if category not in _FAMILIES:
        raise EvalError(f"unknown category {category!r}: expected one of {', '.join(CATEGORIES)}")
    rng = random.Random(f"herd-usecases/{seed}/{category}")  # a str seed hashes the same in every process
    families = _FAMILIES[category]()
    for family in families:
        rng.shuffle(family)
    rng.shuffle(families)
    out: list[str] = []
    seen: set[str] = set()
    for row in itertools.zip_longest(*families):
        for prompt in row:
            if prompt is not None and prompt not in seen:
                seen.add(prompt)
                out.append(prompt)
    return out


def build_prompts(
    per_category: int = 15, *, seed: int = 0, categories: Sequence[str] = CATEGORIES
) -> list[UseCasePrompt]:
    """`per_category` prompts of each category, interleaved (one of each category, then the next one of each), so
    that the first k prompts cover k categories. Ids are `<category>-<index>`: stable for a seed."""
    if per_category < 1:
        raise EvalError(f"--per-category {per_category}: expected >= 1")
    chosen = {}
    for cat in categories:
        prompts = pool(cat, seed=seed)
        if per_category > len(prompts):
            raise EvalError(f"--per-category {per_category}: herd's {cat} set has {len(prompts)} prompts")
        chosen[cat] = prompts[:per_category]
    return [UseCasePrompt(f"{cat}-{i:03d}", cat, chosen[cat][i]) for i in range(per_category) for cat in categories]
