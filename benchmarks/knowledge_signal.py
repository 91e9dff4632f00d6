"""How well can the starting model tell what it knows? An upper bound on issue 21's fact targets.

The round asks the DPO model to refuse at least 70% of unanswerable closed-book questions (ones the start gets wrong
greedily and in every sample, and made-up ones) while refusing at most 5% of the ones the start answered right
("knew before"). A model can only do that if something inside it separates the two groups. This script measures
two such signals of the starting model on the round's own questions (synth's defaults: the same families, the same
probe, the same eval questions as configs/posttrain/round.toml):

- family prior: the share of the train split's questions of that family the start knew (no look at the question);
- confidence: the mean and the lowest log-probability of the tokens of its greedy answer;
- a linear probe: logistic regression on the hidden state at the end of the prompt (where the answer starts), of the
  layer that scores best in 5-fold cross-validation on the train split, fitted on the train split's labels;
- a fine-tuned classifier: the whole model plus a linear head on that last position, trained for 3 epochs on the
  train split's labels (closest to what SFT can teach: its refusal is a decision at the first response token).

For each it reports the AUROC (knew vs unanswerable) and the operating point the issue asks for: the threshold that
refuses at most 5% of the knew set, and the share of unanswerable questions refused there. The threshold is read on
the train split (honest) and on the eval split itself (an oracle, the best any rule on that signal can do).

    .venv/bin/python benchmarks/knowledge_signal.py            # ~20 minutes on one core (float32)
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAX_KNEW_REFUSED = 0.05


def main() -> None:
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_score

    from herd.config import load
    from herd.formats import load_pretrained
    from herd.inference import Engine, SamplingParams
    from herd.posttrain.synth.facts import fact_items, probe
    from herd.train.metrics import native_bf16

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--train", type=int, default=300, help="train-split closed-book questions (the probe's fit)")
    p.add_argument("--eval", type=int, default=120, help="eval-split closed-book questions (round.toml's eval_facts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=str(ROOT / "configs" / "posttrain" / "round.toml"), help="its [synth] is used")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "knowledge_signal.json"))
    a = p.parse_args()
    s = load("round", a.config).synth
    dtype = torch.bfloat16 if native_bf16(torch.device("cpu")) else torch.float32
    loaded = load_pretrained(a.model, dtype=dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    engine = Engine(model, tokenizer, max_batch_size=s.batch_size)
    t0 = time.perf_counter()

    def measure(split: str, n: int, seed: int) -> list[dict[str, Any]]:
        items = fact_items(random.Random(seed), n, split=split, fictitious=s.fact_fictitious, families=s.fact_families)
        probed = probe(engine, items, samples=s.fact_samples, max_new_tokens=s.max_new_tokens, seed=a.seed)
        prompts = [tokenizer.encode_chat(q["messages"], add_generation_prompt=True) for q in probed]
        greedy = engine.generate(prompts, SamplingParams(max_new_tokens=s.max_new_tokens, logprobs=True))
        rows = []
        for q, ids, c in zip(probed, prompts, greedy, strict=True):
            lp = c.logprobs or [0.0]
            knew = q["greedy"] is not None and q["greedy"]["verdict"] == "correct"
            group = "knew" if knew else "unanswerable" if q["label"] == "unknown" else "mixed"
            row = {"family": q["family"], "fictitious": q["fictitious"], "group": group, "ids": ids,
                   "hidden": _layer_states(model, ids)}  # fmt: skip
            rows.append(row | {"mean_logprob": float(np.mean(lp)), "min_logprob": float(np.min(lp))})
        return rows

    # The same question draws as synth's (train seed + 3, eval seed + 7), with more train questions for the fit.
    train = measure("train", a.train, a.seed + 3)
    held = measure("eval", a.eval, a.seed + 7)
    seconds = round(time.perf_counter() - t0, 1)

    def two_groups(rows):
        rows = [r for r in rows if r["group"] != "mixed"]
        return rows, np.array([r["group"] == "knew" for r in rows])

    train2, y_train = two_groups(train)
    held2, y_held = two_groups(held)
    fictitious = np.array([r["fictitious"] for r in held2])
    prior = {f: [r["group"] == "knew" for r in train2 if r["family"] == f] for f in s.fact_families}
    prior = {f: float(np.mean(v)) if v else float(y_train.mean()) for f, v in prior.items()}

    def linear() -> LogisticRegression:
        return LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced")

    x_train = np.stack([r["hidden"] for r in train2])  # (N, layers, D)
    x_held = np.stack([r["hidden"] for r in held2])
    cv = [float(cross_val_score(linear(), x_train[:, i], y_train, cv=5, scoring="roc_auc").mean())
          for i in range(x_train.shape[1])]  # fmt: skip
    best = int(np.argmax(cv))
    probe_fit = linear().fit(x_train[:, best], y_train)
    tuned_train, tuned_held = _fine_tuned(model, train2, y_train, held2, seed=a.seed)
    scores = {
        "family_prior": ([prior[r["family"]] for r in train2], [prior[r["family"]] for r in held2]),
        "mean_logprob": ([r["mean_logprob"] for r in train2], [r["mean_logprob"] for r in held2]),
        "min_logprob": ([r["min_logprob"] for r in train2], [r["min_logprob"] for r in held2]),
        "hidden_state_probe": tuple(probe_fit.decision_function(x[:, best]) for x in (x_train, x_held)),
        "fine_tuned_classifier": (tuned_train, tuned_held),
    }
    signals = {}
    for name, (on_train, on_held) in scores.items():
        on_train, on_held = np.asarray(on_train), np.asarray(on_held)
        signals[name] = {
            "auroc_eval": round(float(roc_auc_score(y_held, on_held)), 3),
            "auroc_train": round(float(roc_auc_score(y_train, on_train)), 3),
            "threshold_from_train": _operating_point(_cut(on_train[y_train]), on_held, y_held, fictitious),
            "oracle_threshold_on_eval": _operating_point(_cut(on_held[y_held]), on_held, y_held, fictitious),
        }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    meta = {"date": time.strftime("%Y-%m-%d"), "model": a.model or "embedded SmolLM2-135M-Instruct",
            "dtype": str(dtype), "families": list(s.fact_families), "fact_samples": s.fact_samples,
            "fictitious_share": s.fact_fictitious, "seed": a.seed, "commit": commit.stdout.strip(),
            "seconds": seconds, "max_knew_refused": MAX_KNEW_REFUSED}  # fmt: skip
    counts = {}
    for split, rows in (("train", train), ("eval", held)):
        counts[split] = {g: sum(r["group"] == g for r in rows) for g in ("knew", "unanswerable", "mixed")}
        counts[split]["unanswerable_fictitious"] = sum(r["group"] == "unanswerable" and r["fictitious"] for r in rows)
    signals["hidden_state_probe"]["layer"] = best
    signals["hidden_state_probe"]["cv_auroc_train_by_layer"] = [round(v, 3) for v in cv]
    summary = {"meta": meta, "counts": counts, "signals": signals}
    Path(a.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


def _layer_states(model, ids: list[int]):
    """The residual stream after every layer at the prompt's last position, (layers, D) in float32."""
    import numpy as np
    import torch

    states = []
    hooks = [layer.register_forward_hook(lambda m, i, out: states.append(out[0, -1].float()))
             for layer in model.layers.values()]  # fmt: skip
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return np.stack([t.numpy() for t in states])


def _fine_tuned(model, train, y_train, held, *, seed: int, epochs: int = 3, lr: float = 2e-5, batch: int = 8):
    """Scores of a copy of the model with a linear head on the prompt's last position, fine-tuned as a known/unknown
    classifier on the train rows (class-balanced logistic loss)."""
    import copy

    import numpy as np
    import torch

    torch.manual_seed(seed)
    net = copy.deepcopy(model).float().train().requires_grad_(True)
    head = torch.nn.Linear(net.args.dim, 1)
    params = [*net.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    weight = torch.tensor(float((~y_train).sum()) / max(1, int(y_train.sum())))

    def score(rows) -> torch.Tensor:
        return torch.cat([head(net(torch.tensor([r["ids"]]), return_hidden=True)[:, -1]).squeeze(1) for r in rows])

    order = np.random.default_rng(seed).permutation
    for _ in range(epochs):
        idx = order(len(train))
        for start in range(0, len(idx), batch):
            part = idx[start : start + batch]
            logits = score([train[i] for i in part])
            target = torch.tensor(y_train[part], dtype=torch.float32)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    net.eval()
    with torch.no_grad():
        return score(train).numpy(), score(held).numpy()


def _cut(knew_scores):
    """The score below which at most MAX_KNEW_REFUSED of these knew questions fall (refuse when score < cut)."""
    import numpy as np

    return float(np.quantile(knew_scores, MAX_KNEW_REFUSED, method="lower"))


def _operating_point(cut: float, scores, knew, fictitious) -> dict[str, float]:
    refuse = scores < cut
    real = ~knew & ~fictitious
    return {
        "knew_refused": round(float(refuse[knew].mean()), 3),
        "unanswerable_refused": round(float(refuse[~knew].mean()), 3),
        "real_unknown_refused": round(float(refuse[real].mean()), 3) if real.any() else None,
        "fictitious_refused": round(float(refuse[fictitious].mean()), 3) if fictitious.any() else None,
    }


if __name__ == "__main__":
    main()
