"""The default downstream task for tiny models: pick the true continuation of a held-out passage among four.

Each item takes a held-out document, a context of `context_tokens` tokens from it, the `answer_tokens` that
follow (the correct answer), and three spans of the same length from other held-out documents (the distractors).
A model answers by the lowest mean NLL per answer token; chance is 25%. Where the distractors come from sets the
difficulty: `distractors="other"` (the default) takes them from other sources (code, maths, prose, other
languages), so a model must tell what kind of text continues the context, which tiny models learn gradually;
"any" takes them from any other document, and "same" from the same source only (the hardest).

The "normalized NLL of the correct answer" that Llama 3's two-step predictor maps to accuracy is the mean NLL
per token of the correct answer, averaged over items. Nothing is downloaded: items come from the sweep's own
held-out split of the corpus it trains on, built at run time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from herd.model import Transformer


@dataclass(frozen=True, slots=True)
class Item:
    context: list[int]
    choices: list[list[int]]
    answer: int
    """Index of the correct choice."""


def build_items(
    docs: list[tuple[str, list[int]]],
    *,
    num_items: int,
    context_tokens: int = 48,
    answer_tokens: int = 16,
    num_choices: int = 4,
    distractors: str = "other",
    seed: int = 0,
) -> list[Item]:
    """Items from held-out (source, tokens) documents; see the module docstring for `distractors`."""
    if distractors not in ("other", "any", "same"):
        raise ValueError(f"distractors={distractors!r}: expected other, any or same")
    rng = random.Random(seed)
    need = context_tokens + answer_tokens
    usable = [(src, toks) for src, toks in docs if len(toks) >= need]

    def pool(i: int) -> list[int]:
        src = usable[i][0]
        return [j for j, (s, _) in enumerate(usable) if j != i and (
            distractors == "any" or (s == src) == (distractors == "same"))]  # fmt: skip

    pools = {i: pool(i) for i in range(len(usable))}
    candidates = [i for i in range(len(usable)) if len(pools[i]) >= num_choices - 1]
    if not candidates:
        raise ValueError(f"no held-out document has {num_choices - 1} distractor documents ({distractors!r}) of at "
                         f"least {need} tokens")  # fmt: skip
    items = []
    for _ in range(num_items):
        i = rng.choice(candidates)
        toks = usable[i][1]
        start = rng.randrange(0, len(toks) - need + 1)
        context, answer = toks[start : start + context_tokens], toks[start + context_tokens : start + need]
        others = rng.sample(pools[i], num_choices - 1)
        wrong = []
        for j in others:
            other = usable[j][1]
            k = rng.randrange(context_tokens, len(other) - answer_tokens + 1)
            wrong.append(other[k : k + answer_tokens])
        slot = rng.randrange(num_choices)
        choices = [*wrong[:slot], answer, *wrong[slot:]]
        items.append(Item(context=context, choices=choices, answer=slot))
    return items


@torch.no_grad()
def evaluate(model: Transformer, items: list[Item], *, batch_size: int = 64) -> dict[str, float]:
    """Accuracy and the mean per-token NLL of the correct answers."""
    model.eval()
    rows = [(n, c, item.context + choice, len(choice)) for n, item in enumerate(items)
            for c, choice in enumerate(item.choices)]  # fmt: skip
    nll = torch.empty(len(items), len(items[0].choices), dtype=torch.float64)
    device = next(model.parameters()).device
    for b in range(0, len(rows), batch_size):
        chunk = rows[b : b + batch_size]
        tokens = torch.tensor([r[2] for r in chunk], device=device)  # every row has the same length
        logits = model(tokens)
        answer_len = chunk[0][3]
        pred = logits[:, -answer_len - 1 : -1].float()
        target = tokens[:, -answer_len:]
        losses = F.cross_entropy(pred.flatten(0, 1), target.flatten(), reduction="none").view(len(chunk), -1)
        for (n, c, _, _), value in zip(chunk, losses.mean(dim=1).double(), strict=True):
            nll[n, c] = value
    answers = torch.tensor([item.answer for item in items])
    correct_nll = nll[torch.arange(len(items)), answers]
    model.train()
    return {
        "task_acc": float((nll.argmin(dim=1) == answers).double().mean()),
        "task_nll": float(correct_nll.mean()),
    }
