"""`herd rs`: rejection sampling (Llama 3 §4.2.2). For each prompt, sample K responses with herd's batched engine,
score them, keep the best; the kept dialogs (with every score) are SFT data for the next round.

Scores come from a reward model (`herd rm` export) or, for prompts that carry a verifiable item, from its exact
checker (herd/posttrain/synth.py); with a checker, a prompt whose best sample still fails is dropped. Besides the
SFT file, the best and worst sample of each prompt whose scores differ are written as preference pairs (for the
reward model or DPO).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from herd.errors import DataError
from herd.formats.load import load_pretrained, parse_dtype
from herd.inference import Engine, SamplingParams
from herd.model import Transformer
from herd.posttrain.config import RejectionJobConfig, check
from herd.posttrain.data import encode_prompt, read_prompts, write_jsonl
from herd.posttrain.stage import write_config, write_json
from herd.tokenizer import Tokenizer

Scorer = Callable[[list[dict[str, Any]], list[str]], list[float]]
"""(prompt records, responses) -> scores."""


def sample(
    model: Transformer, tokenizer: Tokenizer, prompts: list[list[dict[str, Any]]], *, k: int, temperature: float,
    top_p: float, max_new_tokens: int, batch_size: int, seed: int, progress: Callable[[int, int], None] | None = None,
) -> tuple[list[list[str]], int, float]:  # fmt: skip
    """K responses per prompt (rows of one prompt share the batch), the number of generated tokens and the
    seconds the engine took."""
    engine = Engine(model, tokenizer, max_batch_size=batch_size)
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    rng = random.Random(seed)
    rows = [(i, rng.getrandbits(62)) for i in range(len(prompts)) for _ in range(k)]
    out: list[list[str]] = [[] for _ in prompts]
    tokens, t0 = 0, time.perf_counter()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=s)
                  for _, s in chunk]  # fmt: skip
        for (i, _), c in zip(chunk, engine.generate([ids[i] for i, _ in chunk], params), strict=True):
            out[i].append(c.text)
            tokens += len(c.tokens) + (c.finish_reason == "stop" and isinstance(c.stop_reason, int))
        if progress is not None:
            progress(min(start + batch_size, len(rows)), len(rows))
    return out, tokens, time.perf_counter() - t0


def select(
    records: list[dict[str, Any]], samples: list[list[str]], scores: list[list[float]], *, pass_score: float | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(SFT records of the best sample per prompt, preference pairs best vs worst). With `pass_score`, a best
    sample below it is not kept (a checker said every sample is wrong)."""
    sft, pairs = [], []
    for record, responses, s in zip(records, samples, scores, strict=True):
        best, worst = max(range(len(s)), key=s.__getitem__), min(range(len(s)), key=s.__getitem__)
        if pass_score is None or s[best] >= pass_score:
            sft.append({"messages": [*record["messages"], {"role": "assistant", "content": responses[best]}],
                        "score": s[best], "scores": s})  # fmt: skip
        if s[best] > s[worst] and responses[best].strip() != responses[worst].strip() and responses[worst].strip():
            pairs.append({"messages": record["messages"], "chosen": responses[best], "rejected": responses[worst],
                          "scores": [s[best], s[worst]]})  # fmt: skip
    return sft, pairs


def reward_model_scorer(path: str) -> Scorer:
    from herd.posttrain.reward import load_reward_model

    rm, tokenizer = load_reward_model(path)

    def score(records: list[dict[str, Any]], responses: list[str]) -> list[float]:
        with torch.autocast(rm.head.weight.device.type, dtype=torch.bfloat16):
            return rm.score(tokenizer, [r["messages"] for r in records], responses)

    return score


def checker_scorer() -> Scorer:
    from herd.posttrain.synth import verifiable_reward

    def score(records: list[dict[str, Any]], responses: list[str]) -> list[float]:
        out = []
        for r, text in zip(records, responses, strict=True):
            if "item" not in r:
                raise DataError("rs.reward_model is empty but a prompt has no verifiable 'item' to check")
            out.append(verifiable_reward(r["item"], text))
        return out

    return score


def run_rs(cfg: RejectionJobConfig) -> dict[str, Any]:
    check(cfg)
    run_dir = Path(cfg.job.dump_folder)
    records, problems = read_prompts(cfg.data.train, on_error=cfg.data.on_error)
    scorer = reward_model_scorer(cfg.rs.reward_model) if cfg.rs.reward_model else checker_scorer()
    # Sampling only: the weights go straight to the compute dtype (bf16 decodes about twice as fast as float32).
    pretrained = load_pretrained(cfg.model.init_from or None, dtype=parse_dtype(cfg.model.dtype))
    model, tokenizer = pretrained.model.eval(), pretrained.tokenizer
    write_config(run_dir, cfg)
    r = cfg.rs
    samples, tokens, seconds = sample(
        model, tokenizer, [rec["messages"] for rec in records], k=r.samples, temperature=r.temperature, top_p=r.top_p,
        max_new_tokens=r.max_new_tokens, batch_size=r.batch_size, seed=cfg.job.seed,
        progress=lambda done, total: print(f"[rs] sampled {done}/{total}", flush=True),
    )  # fmt: skip
    t0 = time.perf_counter()
    scores = [scorer([rec] * len(s), s) for rec, s in zip(records, samples, strict=True)]
    score_seconds = time.perf_counter() - t0
    sft, pairs = select(records, samples, scores, pass_score=None if r.reward_model else 1.0)
    out = Path(r.output or run_dir / "rs.jsonl")
    write_jsonl(out, sft)
    write_jsonl(out.with_name(out.stem + "_pairs.jsonl"), pairs)
    flat = [x for s in scores for x in s]
    summary = {"prompts": len(records), "samples": len(flat), "kept": len(sft), "pairs": len(pairs),
               "skipped_lines": len(problems), "problems": problems[:20], "mean_score": sum(flat) / len(flat),
               "mean_best_score": sum(max(s) for s in scores) / len(scores), "generated_tokens": tokens,
               "generation_s": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
               "samples_per_s": round(len(flat) / seconds, 2), "scoring_s": round(score_seconds, 2),
               "output": str(out), "pairs_output": str(out.with_name(out.stem + "_pairs.jsonl"))}  # fmt: skip
    write_json(run_dir / "summary.json", summary)
    return summary
