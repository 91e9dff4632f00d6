"""Small jsonl inputs for the post-training stages, written by tests: dialogs, preference pairs, prompts."""

import json
import random

from herd.posttrain.synth.tasks import make_tasks


def write_dialogs(path, n: int = 24, seed: int = 0) -> None:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": "Answer with one sentence."},
            {"role": "user", "content": f"What is {a} plus {b}?"},
            {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
        ]}))  # fmt: skip
    lines.append('{"messages": [{"role": "robot", "content": "beep"}]}')
    path.write_text("\n".join(lines) + "\n")


def write_pairs(path, n: int = 48, seed: int = 0, edited: bool = False) -> None:
    """Chosen answers state the sum; rejected ones decline. Learnable from the tokens alone."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        record = {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                  "chosen": f"{a} plus {b} is {a + b}.", "rejected": "No idea, sorry."}  # fmt: skip
        if edited:
            record["edited"] = f"The sum of {a} and {b} is {a + b}."
        lines.append(json.dumps(record))
    lines.append('{"messages": [{"role": "user", "content": "hi"}], "chosen": "same", "rejected": "same"}')
    lines.append("{not json")
    path.write_text("\n".join(lines) + "\n")


def write_prompts(path, n: int = 6, *, checked: int | None = None) -> None:
    """`n` task prompts, the first `checked` (default all) with their verifiable item, and one bad line."""
    items = make_tasks(random.Random(0), n, split="train", tasks=["add"])
    checked = n if checked is None else checked
    records = [{"messages": it["messages"], **({"item": it} if i < checked else {})} for i, it in enumerate(items)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records)
                    + '{"messages": [{"role": "assistant", "content": "hi"}]}\n')  # fmt: skip
