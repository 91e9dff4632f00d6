"""`herd rs`: rejection sampling (Llama 3 §4.2.2). For each prompt, sample K responses with herd's batched engine,
rank them, keep the best; the kept dialogs (with every score) are SFT data for the next round.

Llama 3 ranks samples with its reward model. Here a prompt that carries a verifiable item is ranked by its exact
checker first (herd/posttrain/synth) and by the reward model (`rs.reward_model`) among samples the checker
scores alike; a prompt without one by the reward model alone. With a checker, a prompt whose best sample still
fails is dropped. Besides the SFT file, the best and worst sample of each prompt are written as a preference pair
(for the reward model or DPO) when the checker, or without one the reward model, tells them apart. Where both
score a prompt, the summary reports how often the reward model orders two samples as the checker does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from herd.config import JobConfig, save
from herd.errors import DataError
from herd.formats import load_pretrained, parse_dtype
from herd.inference import Engine, SamplingParams
from herd.inference.decode_model import DecodeModel
from herd.inference.load import load_decoder
from herd.model import Transformer
from herd.posttrain.data import encode_prompt, format_problems, read_prompts, write_jsonl
from herd.posttrain.stage import write_json
from herd.tokenizer import Tokenizer
from herd.train.metrics import native_bf16
from herd.train.trainer import resolve_device

Scorer = Callable[[list[dict[str, Any]], list[str]], list[float]]
"""(prompt records, responses) -> scores."""


def sample(
    model: Transformer | DecodeModel, tokenizer: Tokenizer, prompts: list[list[dict[str, Any]]], *, k: int,
    temperature: float, top_p: float, max_new_tokens: int, batch_size: int, seed: int,
    progress: Callable[[int, int], None] | None = None,
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
    records: list[dict[str, Any]], samples: list[list[str]], checks: list[list[float] | None],
    rewards: list[list[float]] | None, *, pass_score: float = 1.0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """(SFT records of the best sample per prompt, preference pairs best vs worst).

    `checks[i]` holds the checker's score of each sample of prompt i (None: the prompt has no checker), `rewards`
    the reward model's (None: no reward model). Samples rank by (checker, reward). A checked prompt keeps its best
    only if it reaches `pass_score`, and gives a pair only when the checker tells best from worst."""
    sft, pairs = [], []
    for i, (record, responses) in enumerate(zip(records, samples, strict=True)):
        check, reward = checks[i], rewards[i] if rewards is not None else None
        if check is None and reward is None:
            raise DataError("a prompt has no verifiable 'item' to check and rs.reward_model is empty")
        key = [(check[j] if check else 0.0, reward[j] if reward else 0.0) for j in range(len(responses))]
        best, worst = max(range(len(key)), key=key.__getitem__), min(range(len(key)), key=key.__getitem__)
        primary = check if check is not None else reward
        assert primary is not None
        extra = {"rewards": reward} if check is not None and reward is not None else {}
        if check is None or check[best] >= pass_score:
            sft.append({"messages": [*record["messages"], {"role": "assistant", "content": responses[best]}],
                        "score": primary[best], "scores": primary, **extra})  # fmt: skip
        apart = primary[best] > primary[worst]
        if apart and responses[best].strip() != responses[worst].strip() and responses[worst].strip():
            pairs.append({"messages": record["messages"], "chosen": responses[best], "rejected": responses[worst],
                          "scores": [primary[best], primary[worst]]})  # fmt: skip
    return sft, pairs


def agreement(checks: list[list[float] | None], rewards: list[list[float]]) -> dict[str, float | int]:
    """How often the reward model orders two samples of a prompt as its checker does, over every pair of samples
    the checker tells apart (a tie in reward counts as a disagreement)."""
    agree = total = 0
    for check, reward in zip(checks, rewards, strict=True):
        if check is None:
            continue
        for a in range(len(check)):
            for b in range(a + 1, len(check)):
                if check[a] != check[b]:
                    total += 1
                    agree += (check[a] > check[b]) == (reward[a] > reward[b]) and reward[a] != reward[b]
    return {"rm_checker_agreement": agree / total if total else float("nan"), "rm_checker_pairs": total}


def reward_model_scorer(path: str) -> Scorer:
    from herd.posttrain.reward import load_reward_model

    rm, tokenizer = load_reward_model(path)

    def score(records: list[dict[str, Any]], responses: list[str]) -> list[float]:
        device = rm.head.weight.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=native_bf16(device)):
            return rm.score(tokenizer, [r["messages"] for r in records], responses)

    return score


def checker_scorer() -> Scorer:
    from herd.posttrain.synth import verifiable_reward

    def score(records: list[dict[str, Any]], responses: list[str]) -> list[float]:
        out = []
        for r, text in zip(records, responses, strict=True):
            if "item" not in r:
                raise DataError("a prompt has no verifiable 'item' to check and no reward model scores it")
            out.append(verifiable_reward(r["item"], text))
        return out

    return score


def load_sampler(cfg: JobConfig) -> tuple[Transformer | DecodeModel, Tokenizer]:
    """The model that samples, loaded for that only: its weights go straight to model.dtype (bf16 decodes about
    twice as fast as float32). With rs.quant int8/int4, a DecodeModel on herd's CPU kernels, read from the
    checkpoint without building a Transformer first (a GGUF file's stored blocks reused where at least as precise)."""
    dtype = parse_dtype(cfg.model.dtype)
    if cfg.rs.quant == "none":
        pretrained = load_pretrained(cfg.model.init_from, dtype=dtype, device=str(resolve_device(cfg.training.device)))
        return pretrained.model.eval(), pretrained.tokenizer
    decoder = load_decoder(cfg.model.init_from, dtype=dtype, quant=cfg.rs.quant)
    return decoder.model, decoder.tokenizer


def run_rs(cfg: JobConfig) -> dict[str, Any]:
    run_dir = Path(cfg.job.dump_folder)
    r = cfg.rs
    records, problems = read_prompts(cfg.data.files, on_error=cfg.data.on_error)
    reward = reward_model_scorer(r.reward_model) if r.reward_model else None
    if reward is None and (bad := next((i for i, rec in enumerate(records) if "item" not in rec), None)) is not None:
        raise DataError(f"prompt {bad + 1} of {', '.join(cfg.data.files)} has no verifiable 'item' to check; set "
                        "rs.reward_model to rank its samples")  # fmt: skip
    model, tokenizer = load_sampler(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save(cfg, "rs", run_dir / "config.toml")
    samples, tokens, seconds = sample(
        model, tokenizer, [rec["messages"] for rec in records], k=r.samples, temperature=r.temperature, top_p=r.top_p,
        max_new_tokens=r.max_new_tokens, batch_size=r.batch_size, seed=cfg.job.seed,
        progress=lambda done, total: print(f"[rs] sampled {done}/{total}", flush=True),
    )  # fmt: skip
    del model
    t0 = time.perf_counter()
    checker = checker_scorer()
    checks = [checker([rec] * len(s), s) if "item" in rec else None for rec, s in zip(records, samples, strict=True)]
    rewards = [reward([rec] * len(s), s) for rec, s in zip(records, samples, strict=True)] if reward else None
    score_seconds = time.perf_counter() - t0
    sft, pairs = select(records, samples, checks, rewards)
    write_jsonl(run_dir / "rs.jsonl", sft)
    write_jsonl(run_dir / "rs_pairs.jsonl", pairs)
    primary: list[list[float]] = []  # the checker's scores where the prompt has one, else the reward model's
    for i, check in enumerate(checks):
        if check is None:
            assert rewards is not None  # prompts without an item were refused above unless a reward model ranks
            check = rewards[i]
        primary.append(check)
    flat = [x for s in primary for x in s]
    summary = {"prompts": len(records), "samples": len(flat), "kept": len(sft), "pairs": len(pairs),
               "skipped_lines": len(problems), "problems": problems[:20], "mean_score": sum(flat) / len(flat),
               "mean_best_score": sum(max(s) for s in primary) / len(primary),
               "ranked_by": "checker, then reward model" if reward else "checker",
               **(agreement(checks, rewards) if rewards is not None else {}), "generated_tokens": tokens,
               "generation_s": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
               "samples_per_s": round(len(flat) / seconds, 2), "scoring_s": round(score_seconds, 2),
               "output": str(run_dir / "rs.jsonl"), "pairs_output": str(run_dir / "rs_pairs.jsonl")}  # fmt: skip
    write_json(run_dir / "summary.json", summary)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    agree = (f"; reward model agrees with the checkers on {s['rm_checker_agreement']:.3f} of {s['rm_checker_pairs']} "
             "sample pairs") if "rm_checker_agreement" in s else ""  # fmt: skip
    return "\n".join([*format_problems(s["problems"]), (
        f"done: {s['samples']} samples for {s['prompts']} prompts ({s['samples_per_s']} samples/s, "
        f"{s['tokens_per_s']} tokens/s); mean score {s['mean_score']:.3f}, best-of-K {s['mean_best_score']:.3f}"
        f"{agree}; kept {s['kept']} -> {s['output']}, {s['pairs']} pairs -> {s['pairs_output']}")])  # fmt: skip
