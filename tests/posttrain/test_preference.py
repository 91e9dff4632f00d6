import json

import pytest
import torch
from writers import write_pairs

from herd.config import ConfigError, load
from herd.data.loader import IGNORE_INDEX
from herd.errors import DataError
from herd.posttrain.dpo import pair_logps, run_dpo
from herd.posttrain.preference import encode_response, load_pairs, pad
from herd.posttrain.reward import load_reward_model, run_rm
from herd.tokenizer import load_tokenizer


def test_dpo_targets_are_the_final_response_without_header_or_end_of_turn(smol_tokenizer) -> None:
    messages = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "earlier answer"},
                {"role": "user", "content": "Q2"}]  # fmt: skip
    for tokenizer in (smol_tokenizer, load_tokenizer("llama3")):
        side = encode_response(tokenizer, messages, "the final answer", content_only=True)
        kept = [t for t in side.targets if t != IGNORE_INDEX]
        assert tokenizer.decode(kept) == "the final answer"
        full = encode_response(tokenizer, messages, "the final answer", content_only=False)
        text = tokenizer.decode([t for t in full.targets if t != IGNORE_INDEX])
        assert text.startswith("the final answer") and "earlier" not in text and len(text) > len("the final answer")
        assert any(t in tokenizer.stop_ids for t in full.targets)


def test_pairs_are_checked_per_line_and_split_by_prompt(smol_tokenizer, tmp_path) -> None:
    write_pairs(tmp_path / "p.jsonl")
    data = load_pairs([str(tmp_path / "p.jsonl")], smol_tokenizer, on_error="skip", max_seq_len=256,
                      eval_fraction=0.25, seed=0, content_only=False)  # fmt: skip
    assert len(data.train) + len(data.held_out) == 48 and 4 <= len(data.held_out) <= 20
    assert {p.key for p in data.train}.isdisjoint(p.key for p in data.held_out)
    assert [p.split(": ", 1)[1] for p in data.problems] == [
        "chosen and rejected responses are identical", "invalid JSON (Expecting property name enclosed in double "
        "quotes at column 2)"]  # fmt: skip
    assert data.problems[0].startswith(f"{tmp_path / 'p.jsonl'}:49")
    with pytest.raises(DataError, match=r"p.jsonl:49: chosen and rejected"):
        load_pairs([str(tmp_path / "p.jsonl")], smol_tokenizer, on_error="stop", max_seq_len=256, eval_fraction=0.25,
                   seed=0, content_only=False)  # fmt: skip


def test_reward_model_learns_the_preference_and_reloads_with_the_same_scores(tiny_chat_model, tmp_path) -> None:
    write_pairs(tmp_path / "p.jsonl", edited=True)
    cfg = load("rm", None, [
        f"job.dump_folder='{tmp_path / 'rm'}'", f"model.init_from='{tiny_chat_model}'", "model.dtype=float32",
        f"data.files=['{tmp_path / 'p.jsonl'}']", "data.eval_fraction=0.25", "optim.lr=3e-3", "training.epochs=3",
        "training.batch_size=8", "training.micro_batch_size=8", "metrics.tensorboard=false", "metrics.peak_tflops=1",
    ])  # fmt: skip
    summary = run_rm(cfg)
    assert summary["held_out_accuracy_after"] == 1.0 and summary["skipped_lines"] == 2
    rm, tokenizer = load_reward_model(tmp_path / "rm" / "model")
    prompt = [{"role": "user", "content": "What is 3 plus 4?"}]
    good, bad = rm.score(tokenizer, [prompt, prompt], ["3 plus 4 is 7.", "No idea, sorry."])
    assert good > bad
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["held_out_accuracy_after"] == 1.0


def test_dpo_raises_the_chosen_margin_on_held_out_pairs_and_caches_the_reference(tiny_chat_model, tmp_path) -> None:
    write_pairs(tmp_path / "p.jsonl")
    overrides = [
        f"job.dump_folder='{tmp_path / 'dpo'}'", f"model.init_from='{tiny_chat_model}'", "model.dtype=float32",
        f"data.files=['{tmp_path / 'p.jsonl'}']", "data.eval_fraction=0.25", "optim.lr=3e-3", "training.epochs=2",
        "training.batch_size=8", "training.micro_batch_size=8", "lora.rank=8", "metrics.tensorboard=false",
        "metrics.peak_tflops=1",
    ]  # fmt: skip
    summary = run_dpo(load("dpo", None, overrides))
    before, after = summary["held_out_before"], summary["held_out_after"]
    assert before["eval_reward_margin"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    assert after["eval_reward_margin"] > 0.2 and after["eval_reward_accuracy"] == 1.0
    assert after["eval_loss"] < before["eval_loss"]
    cache = torch.load(tmp_path / "dpo" / "reference_logps.pt", weights_only=True)
    assert len(cache) == summary["train_pairs"] + summary["held_out_pairs"]
    # The export has LoRA merged: it loads as a plain model whose held-out log-probs moved toward chosen.
    from herd.formats.load import load_pretrained

    exported = load_pretrained(str(tmp_path / "dpo" / "model"))
    assert not any("lora" in k for k in exported.model.state_dict())


def test_dpo_log_probs_and_gradients_equal_the_full_logits_computation(tiny_chat_model, tmp_path) -> None:
    """pair_logps runs the output layer at target positions only; the dense version scores every position."""
    from herd.formats.load import load_pretrained

    write_pairs(tmp_path / "p.jsonl", n=4)
    loaded = load_pretrained(tiny_chat_model)
    model = loaded.model.float()
    pairs = load_pairs([str(tmp_path / "p.jsonl")], loaded.tokenizer, on_error="skip", max_seq_len=512,
                       eval_fraction=0.0, seed=0, content_only=True).train  # fmt: skip
    chosen, rejected, n_chosen, n_rejected = pair_logps(model, pairs)
    (chosen.sum() - 2 * rejected.sum()).backward()
    sparse_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    tokens, targets, _ = pad([p.chosen for p in pairs] + [p.rejected for p in pairs])
    logp = torch.log_softmax(model(tokens), dim=-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    dense = (logp * (targets != IGNORE_INDEX)).sum(-1)
    (dense[:4].sum() - 2 * dense[4:].sum()).backward()
    torch.testing.assert_close(torch.cat([chosen, rejected]), dense.detach(), rtol=1e-5, atol=1e-5)
    assert torch.cat([n_chosen, n_rejected]).tolist() == (targets != IGNORE_INDEX).sum(-1).tolist()
    for p, g in zip(model.parameters(), sparse_grads, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_bad_stage_config_names_the_key() -> None:
    from herd.config import check_layout

    with pytest.raises(ConfigError, match=r"dpo\.beta"):
        load("dpo", None, ["data.files=['x.jsonl']", "dpo.beta=0"])
    with pytest.raises(ConfigError, match=r"training\.batch_size=6"):
        cfg = load("rm", None, ["data.files=['x.jsonl']", "training.batch_size=6", "training.micro_batch_size=4"])
        check_layout(cfg, "rm", world_size=1, tp=1, pp=1)
    with pytest.raises(ConfigError, match=r"data\.files"):
        load("rm", None, [])
