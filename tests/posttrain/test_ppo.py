"""PPO: the tensor functions against hand-written loops, the value-head wrapper, and short runs on a tiny model."""

import copy
import json
import math
import string
from dataclasses import replace

import pytest
import torch

from herd.config import JobConfig, defaults
from herd.inference import Completion, Engine, SamplingParams
from herd.model import ModelArgs, build_model
from herd.posttrain.ppo import (
    PPO,
    PolicyWithValue,
    _response_batch,
    gae,
    kl_penalized_rewards,
    ppo_loss_sums,
    token_logps,
    whiten,
)
from herd.tokenizer import Llama3Tokenizer
from herd.tokenizer.train import save_ranks
from herd.train.trainer import Trainer

MASK = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 0, 1, 0, 0]], dtype=torch.bool)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Llama3Tokenizer:
    """Byte-level: the 256 bytes and no merges, so 512 ids with the special tokens."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    save_ranks({bytes([i]): i for i in range(256)}, path)
    return Llama3Tokenizer(path)


def tiny_model(tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tokenizer.vocab_size, multiple_of=32, max_seq_len=64)
    return build_model(args)


def test_token_logps_equal_log_softmax_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g) * 2
    tokens = torch.tensor([[0, 4, 2], [3, 3, 1]])
    got = token_logps(logits, tokens)
    for b in range(2):
        for t in range(3):
            row = logits[b, t].tolist()
            expected = row[tokens[b, t]] - math.log(sum(math.exp(x) for x in row))
            assert got[b, t].item() == pytest.approx(expected, abs=1e-5)


def test_kl_penalized_rewards_put_the_score_on_each_rows_last_response_token() -> None:
    g = torch.Generator().manual_seed(1)
    logps, ref_logps = -torch.rand(3, 6, generator=g), -torch.rand(3, 6, generator=g)
    scores = torch.tensor([1.5, -2.0, 0.25])
    got = kl_penalized_rewards(scores, logps, ref_logps, MASK, kl_coef=0.1)
    last = {0: 3, 1: 5, 2: 3}
    for b in range(3):
        for t in range(6):
            expected = -0.1 * (logps[b, t] - ref_logps[b, t]).item() if MASK[b, t] else 0.0
            expected += scores[b].item() if t == last[b] else 0.0
            assert got[b, t].item() == pytest.approx(expected, abs=1e-6)


def test_gae_equals_the_textbook_recursion_over_response_tokens() -> None:
    g = torch.Generator().manual_seed(2)
    rewards, values = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    gamma, lam = 0.9, 0.8
    advantages, returns = gae(rewards, values, MASK, gamma, lam)
    for b in range(3):
        # Masked-out positions are skipped: the recursion runs over the response tokens alone, V = 0 after them.
        idx = MASK[b].nonzero().flatten().tolist()
        r, v = [rewards[b, t].item() for t in idx], [values[b, t].item() for t in idx]
        expected, running = [0.0] * len(idx), 0.0
        for k in reversed(range(len(idx))):
            next_v = v[k + 1] if k + 1 < len(idx) else 0.0
            running = r[k] + gamma * next_v - v[k] + gamma * lam * running
            expected[k] = running
        for t in range(6):
            a = expected[idx.index(t)] if t in idx else 0.0
            ret = a + values[b, t].item() if t in idx else 0.0
            assert advantages[b, t].item() == pytest.approx(a, abs=1e-5)
            assert returns[b, t].item() == pytest.approx(ret, abs=1e-5)


def test_ppo_losses_equal_the_clipped_objectives_by_hand() -> None:
    g = torch.Generator().manual_seed(3)
    old_logps = -torch.rand(3, 6, generator=g) * 3
    logps = (old_logps + torch.randn(3, 6, generator=g) * 0.4).requires_grad_()
    advantages, old_values, returns = (torch.randn(3, 6, generator=g) for _ in range(3))
    values = old_values + torch.randn(3, 6, generator=g) * 0.5
    policy_sum, value_sum, stats = ppo_loss_sums(logps, old_logps, whiten(advantages, MASK), values, old_values,
                                                 returns, MASK, clip_ratio=0.2, value_clip=0.3)  # fmt: skip
    tokens = int(MASK.sum())

    idx = MASK.nonzero().tolist()
    adv = [advantages[b, t].item() for b, t in idx]
    mean = sum(adv) / len(adv)
    std = math.sqrt(sum((a - mean) ** 2 for a in adv) / len(adv))
    pl, vl, clipped, kl = [], [], [], []
    for (b, t), a in zip(idx, adv, strict=True):
        a = (a - mean) / std
        log_ratio = logps[b, t].item() - old_logps[b, t].item()
        ratio = math.exp(log_ratio)
        plain, clip = -a * ratio, -a * min(max(ratio, 0.8), 1.2)
        pl.append(max(plain, clip))
        clipped.append(clip > plain)
        kl.append(0.5 * log_ratio**2)
        v, old, ret = values[b, t].item(), old_values[b, t].item(), returns[b, t].item()
        v_clip = old + min(max(v - old, -0.3), 0.3)
        vl.append(0.5 * max((v - ret) ** 2, (v_clip - ret) ** 2))
    assert policy_sum.item() / tokens == pytest.approx(sum(pl) / len(pl), abs=1e-5)
    assert value_sum.item() / tokens == pytest.approx(sum(vl) / len(vl), abs=1e-5)
    assert 0 < sum(clipped) < len(clipped)
    assert stats["clipfrac"].item() / tokens == pytest.approx(sum(clipped) / len(clipped))
    assert stats["approx_kl"].item() / tokens == pytest.approx(sum(kl) / len(kl), abs=1e-6)
    # The clip's point: a token whose ratio already moved past the clip in its advantage's favour gets no gradient.
    policy_sum.backward()
    for (b, t), was_clipped in zip(idx, clipped, strict=True):
        assert (logps.grad[b, t] == 0) == was_clipped
    assert (logps.grad[~MASK] == 0).all()


def test_policy_with_value_gives_the_bare_models_logits_also_after_the_engine_used_it(tokenizer) -> None:
    model = tiny_model(tokenizer)
    policy = PolicyWithValue(model)
    tokens = torch.randint(0, tokenizer.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    logits, values = policy(tokens)
    assert torch.equal(logits, model(tokens)) and values.shape == (2, 7) and not values.any()
    Engine(model, tokenizer).generate([[1, 2, 3]], SamplingParams(max_new_tokens=4, temperature=1.0, seed=0))
    again, _ = policy(tokens)  # no KV cache left behind, no inference tensors in the way of autograd
    assert torch.equal(again, logits)
    again.logsumexp(-1).sum().backward()
    assert model.output.weight.grad is not None


def test_response_rows_keep_the_stop_token_and_mask_only_the_response() -> None:
    stopped = Completion(prompt_tokens=[5, 6, 7], tokens=[8, 9], finish_reason="stop", stop_reason=265)
    cut = Completion(prompt_tokens=[5], tokens=[10, 11, 12], finish_reason="length")
    inputs, targets, mask = _response_batch([stopped, cut], pad_id=0, device=torch.device("cpu"))
    assert inputs.tolist() == [[5, 6, 7, 8, 9], [5, 10, 11, 12, 0]]
    assert targets.tolist() == [[6, 7, 8, 9, 265], [10, 11, 12, 0, 0]]
    assert mask.tolist() == [[False, False, True, True, True], [True, True, True, False, False]]


def ppo_config(run_dir, *, steps: int, batch: int, max_new_tokens: int, lr: float, seed: int, lora: int = 0):
    """A PPO config composed in Python, as `herd round` composes its stages."""
    cfg = defaults("ppo")
    return replace(
        cfg, job=replace(cfg.job, dump_folder=str(run_dir), seed=seed), optim=replace(cfg.optim, lr=lr),
        lora=replace(cfg.lora, rank=lora), training=replace(cfg.training, steps=steps, batch_size=batch, device="cpu"),
        ppo=replace(cfg.ppo, max_new_tokens=max_new_tokens), checkpoint=replace(cfg.checkpoint, interval=0),
        metrics=replace(cfg.metrics, tensorboard=False, peak_tflops=1.0, log_interval=0),
    )  # fmt: skip


def train_ppo(cfg: JobConfig, tokenizer, prompts, reward_fn) -> tuple[Trainer, list[dict]]:
    model = tiny_model(tokenizer)
    trainer = Trainer(cfg, PPO(cfg, prompts, reward_fn, tokenizer, copy.deepcopy(model)), command="ppo",
                      initial=model)  # fmt: skip
    trainer.train()
    return trainer, [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]


def test_ppo_trains_only_trainable_parameters_and_is_reproducible(tokenizer, tmp_path) -> None:
    prompts = [tokenizer.encode(w, bos=True) for w in ("cat", "dog", "sun")]
    runs = []
    for name in ("a", "b"):
        cfg = ppo_config(tmp_path / name, steps=4, batch=2, max_new_tokens=4, lr=1e-2, seed=5, lora=4)
        trainer, records = train_ppo(cfg, tokenizer, prompts, lambda i, text: float(i))
        start = tiny_model(tokenizer).state_dict()
        changed = {k for k, v in trainer.model.state_dict().items() if k.startswith("model.") and
                   "lora" not in k and not torch.equal(v, start[k.removeprefix("model.")])}  # fmt: skip
        assert not changed  # LoRA trains its adapters (and the value head) only
        assert any(p.requires_grad for n, p in trainer.model.named_parameters() if "lora" in n)
        runs.append([{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu", "step_s", "mem_gb")}
                     for r in records])  # fmt: skip
    assert runs[0] == runs[1]
    assert {"score", "kl", "policy_loss", "value_loss", "clipfrac", "approx_kl", "response_len"} <= set(runs[0][0])


def test_ppo_raises_the_reward_on_a_tiny_model(tokenizer, tmp_path) -> None:
    """Reward: uppercase letters in the response (a special token's text has none), about 0.3 at the start."""
    prompts = [tokenizer.encode(w, bos=True) for w in ("cat", "dog", "sun", "sea", "up", "hi", "ok", "no")]

    def uppercase(index: int, text: str) -> float:
        return sum(c in string.ascii_uppercase for c in text)

    cfg = ppo_config(tmp_path, steps=60, batch=8, max_new_tokens=8, lr=1e-2, seed=0)
    _, records = train_ppo(cfg, tokenizer, prompts, uppercase)
    scores = [r["score"] for r in records[:: cfg.ppo.epochs]]  # one per rollout
    assert len(scores) == 30
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > max(2.0, 4 * first), scores
    assert records[-1]["kl"] > records[0]["kl"]
