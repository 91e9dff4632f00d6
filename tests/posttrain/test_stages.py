"""The stages wired end to end on a tiny model with SmolLM2's chat format: LoRA SFT with a merged export,
rejection sampling scored by a reward model, PPO against it, and the round's checkers."""

import json
import random

import pytest
import torch
from writers import write_pairs, write_prompts

from herd.config import load
from herd.formats.load import load_pretrained
from herd.posttrain.ppo import run_ppo
from herd.posttrain.rejection import agreement, load_sampler, run_rs, select
from herd.posttrain.reward import load_reward_model, run_rm
from herd.posttrain.sft import run_sft
from herd.posttrain.synth import verifiable_reward
from herd.posttrain.synth.facts import fact_items
from herd.posttrain.synth.tasks import make_tasks
from herd.posttrain.synth.tools import make_tool_eval


@pytest.fixture(scope="module")
def tiny_rm(tiny_chat_model, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("rm")
    write_pairs(tmp / "p.jsonl")
    run_rm(load("rm", None, [
        f"job.dump_folder='{tmp / 'rm'}'", f"model.init_from='{tiny_chat_model}'", "model.dtype=float32",
        f"data.files=['{tmp / 'p.jsonl'}']", "optim.lr=3e-3", "training.epochs=2", "training.micro_batch_size=8",
        "metrics.tensorboard=false", "metrics.peak_tflops=1",
    ]))  # fmt: skip
    return str(tmp / "rm" / "model")


def test_lora_sft_trains_adapters_and_exports_a_merged_model(tiny_chat_model, tmp_path) -> None:
    from writers import write_dialogs

    write_dialogs(tmp_path / "d.jsonl")
    cfg = load("sft", None, [
        f"job.dump_folder='{tmp_path / 'run'}'", f"data.files=['{tmp_path / 'd.jsonl'}']",
        f"model.init_from='{tiny_chat_model}'", "lora.rank=8", "training.steps=6",
        "training.seq_len=128", "training.batch_tokens=512", "optim.lr=1e-2", "lr_schedule.warmup_steps=1",
        "metrics.tensorboard=false",
        "metrics.peak_tflops=1.0", "metrics.log_interval=0",
    ])  # fmt: skip
    summary = run_sft(cfg)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0], losses
    base, tuned = load_pretrained(tiny_chat_model).model, load_pretrained(summary["model"]).model
    assert set(tuned.state_dict()) == set(base.state_dict())  # merged: no adapter tensors left
    changed = {k for k, v in tuned.state_dict().items() if not (v == base.state_dict()[k]).all()}
    assert changed and all(k.split(".")[-2] in ("wq", "wk", "wv", "wo", "w1", "w2", "w3") for k in changed)


def test_rejection_sampling_ranks_by_checker_then_reward_model_and_writes_pairs(
    tiny_chat_model, tiny_rm, tmp_path
) -> None:  # fmt: skip
    write_prompts(tmp_path / "prompts.jsonl", checked=3)
    cfg = load("rs", None, [
        f"job.dump_folder='{tmp_path / 'rs'}'", f"model.init_from='{tiny_chat_model}'",
        f"data.files=['{tmp_path / 'prompts.jsonl'}']", f"rs.reward_model='{tiny_rm}'", "rs.samples=3",
        "rs.max_new_tokens=8", "rs.batch_size=6", "rs.temperature=1.0",
    ])  # fmt: skip
    s = run_rs(cfg)
    assert s["prompts"] == 6 and s["samples"] == 18 and s["skipped_lines"] == 1
    assert "the prompt ends with an assistant turn" in s["problems"][0]
    assert s["ranked_by"] == "checker, then reward model" and "rm_checker_agreement" in s
    rm, tokenizer = load_reward_model(tiny_rm)
    kept = [json.loads(line) for line in (tmp_path / "rs" / "rs.jsonl").read_text().splitlines()]
    unchecked = [r for r in kept if "rewards" not in r]  # the three prompts without a checker: the reward model's best
    assert len(unchecked) == 3 and len(kept) == 3 + sum(r["score"] == 1.0 for r in kept if "rewards" in r)
    for record in unchecked:
        assert record["score"] == max(record["scores"])
        rescored = rm.score(tokenizer, [record["messages"][:-1]], [record["messages"][-1]["content"]])[0]
        assert rescored == pytest.approx(record["score"], rel=1e-2)  # bf16 autocast in rs vs float32 here
    pairs = [json.loads(x) for x in (tmp_path / "rs" / "rs_pairs.jsonl").read_text().splitlines()]
    assert all(p["scores"][0] > p["scores"][1] and p["chosen"] != p["rejected"] for p in pairs)


def test_rejection_sampling_with_int8_weights_samples_on_a_decode_model(tiny_chat_model, tmp_path, monkeypatch) -> None:
    from herd.inference.decode_model import DecodeModel
    from herd.model import Transformer
    from herd.posttrain import rejection

    models = []

    class RecordingEngine(rejection.Engine):  # the real engine; it only notes the model it was given
        def __init__(self, model, *args, **kwargs) -> None:
            models.append(model)
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(rejection, "Engine", RecordingEngine)
    write_prompts(tmp_path / "prompts.jsonl", n=3)
    overrides = [f"job.dump_folder='{tmp_path / 'rs'}'", f"model.init_from='{tiny_chat_model}'",
                 f"data.files=['{tmp_path / 'prompts.jsonl'}']", "rs.samples=2", "rs.max_new_tokens=4",
                 "training.device=cpu"]  # fmt: skip
    s = run_rs(load("rs", None, [*overrides, "rs.quant=int8"]))
    assert s["samples"] == 6 and s["ranked_by"] == "checker"
    (model,) = models
    assert isinstance(model, DecodeModel) and (model.quant, model.dtype) == ("int8", torch.bfloat16)
    assert model.layers[0].wqkv.packed.kind == "int8"  # quantized weights, not a float copy
    assert 'quant = "int8"' in (tmp_path / "rs" / "config.toml").read_text()
    assert isinstance(load_sampler(load("rs", None, overrides))[0], Transformer)  # rs.quant=none: as before


def test_select_ranks_by_the_checker_then_the_reward_model() -> None:
    records = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(3)]
    samples = [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    checks = [[1.0, 1.0, 0.0], [0.0, 0.0], None]
    rewards = [[0.2, 0.9, 5.0], [3.0, 1.0], [0.5, -0.5]]
    sft, pairs = select(records, samples, checks, rewards)
    # q0: b passes and the reward model prefers it to a; c fails however high it scores. q1: nothing passes.
    # q2: no checker, the reward model alone.
    assert [r["messages"][-1]["content"] for r in sft] == ["b", "f"]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("b", "c"), ("f", "g")]
    assert pairs[0]["scores"] == [1.0, 0.0] and pairs[1]["scores"] == [0.5, -0.5]
    only_checker, _ = select(records[:2], samples[:2], checks[:2], None)
    assert [r["messages"][-1]["content"] for r in only_checker] == ["a"]  # ties keep the first sample


def test_agreement_counts_the_sample_pairs_the_checker_tells_apart() -> None:
    checks = [[1.0, 0.0, 0.0], [1.0, 1.0], None]
    rewards = [[2.0, 1.0, 3.0], [0.0, 1.0], [5.0, 0.0]]
    # Told apart: (0,1) agrees, (0,2) disagrees; the rest are ties of the checker or unchecked.
    assert agreement(checks, rewards) == {"rm_checker_agreement": 0.5, "rm_checker_pairs": 2}


def test_ppo_runs_against_a_reward_model_and_exports_the_policy(tiny_chat_model, tiny_rm, tmp_path) -> None:
    write_prompts(tmp_path / "prompts.jsonl")
    s = run_ppo(load("ppo", None, [
        f"job.dump_folder='{tmp_path / 'ppo'}'", f"model.init_from='{tiny_chat_model}'", "lora.rank=4",
        f"data.files=['{tmp_path / 'prompts.jsonl'}']", f"ppo.reward_model='{tiny_rm}'", "training.steps=4",
        "training.batch_size=4", "ppo.max_new_tokens=6", "checkpoint.interval=2", "metrics.tensorboard=false",
        "metrics.peak_tflops=1",
    ]))  # fmt: skip
    records = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert s["steps"] == 4 and len(records) == 4
    assert records[0]["score"] == records[1]["score"] != records[2]["score"]  # a new rollout every ppo.epochs=2
    assert not any("lora" in k for k in load_pretrained(s["model"]).model.state_dict())


def test_verifiable_reward_follows_each_checker() -> None:
    task = make_tasks(random.Random(0), 1, split="eval", tasks=["add"])[0]
    assert verifiable_reward(task, task["answer"]) == 1.0 and verifiable_reward(task, task["answer"] + "1") == 0.0
    tool = make_tool_eval(random.Random(0), 1, fmt="json", max_tools=1)[0]
    call = json.dumps({"name": tool["tool"], "arguments": tool["arguments"]})
    assert verifiable_reward(tool, call) == 1.0 and verifiable_reward(tool, "I would call a tool.") == 0.0
    fake = fact_items(random.Random(0), 4, split="eval", fictitious=1.0)[0]
    fake["answerable"] = False
    assert verifiable_reward(fake, "I'm not sure; I don't know.") == 1.0
    assert verifiable_reward(fake, "It is 42.") == 0.0


def test_sparse_logits_give_the_dense_loss_and_gradients(tiny_chat_model, tmp_path) -> None:
    """SFT batches target few positions: the trainer projects only those to logits; same loss, same gradients."""
    import torch
    from writers import write_dialogs

    from herd.posttrain.sft import build_sft
    from herd.train.objective import summed_cross_entropy

    write_dialogs(tmp_path / "d.jsonl")
    cfg = load("sft", None, [
        f"job.dump_folder='{tmp_path / 'run'}'", f"data.files=['{tmp_path / 'd.jsonl'}']",
        f"model.init_from='{tiny_chat_model}'", "training.steps=1", "training.seq_len=128",
        "training.batch_tokens=256", "lr_schedule.warmup_steps=0", "metrics.tensorboard=false",
        "metrics.peak_tflops=1.0",
    ])  # fmt: skip
    trainer, loader = build_sft(cfg)
    batch = loader.next_batch(2, 128)
    n = int((batch.targets != -100).sum())
    assert n < batch.targets.numel() / 2  # the sparse path is taken
    sparse_loss, _ = trainer.forward_backward(batch, n)
    sparse_grads = {k: p.grad.clone() for k, p in trainer.model.named_parameters()}
    trainer.model.zero_grad()
    from herd.model import document_mask, document_positions

    logits = trainer.model(batch.tokens, positions_BT=document_positions(batch.doc_ids),
                           mask=document_mask(batch.doc_ids))  # fmt: skip
    dense_loss = summed_cross_entropy(logits, batch.targets)
    (dense_loss / n).backward()
    assert float(sparse_loss) == pytest.approx(float(dense_loss.detach()), rel=1e-5)
    for k, p in trainer.model.named_parameters():
        torch.testing.assert_close(sparse_grads[k], p.grad, rtol=1e-4, atol=1e-6)
    trainer.shutdown()
