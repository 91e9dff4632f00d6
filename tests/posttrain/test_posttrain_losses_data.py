import json
import math

import pytest
import torch

from herd.errors import DataError
from herd.formats.load import resolve_model_path
from herd.posttrain.data import encode_dialog, preference_example, read_jsonl, sft_example
from herd.posttrain.losses import IGNORE_INDEX, dpo_loss, reward_loss, sequence_logps
from herd.tokenizer import HFTokenizer, Llama3Tokenizer

DIALOG = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
    {"role": "ipython", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "21 degrees."},
]


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_loss_equals_the_formula_term_by_term() -> None:
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=g) * 3 for _ in range(4))
    nll = torch.rand(5, generator=g) * 2
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta=0.1, chosen_nll=nll, nll_coef=0.2)
    expected = 0.0
    for i in range(5):  # Rafailov et al. eq. 7, plus Llama 3's 0.2 x NLL of the chosen response
        margin = 0.1 * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item()
        expected += -_log_sigmoid(margin) / 5
    expected += 0.2 * nll.mean().item()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["reward_accuracy"].item() == ((pc - rc) > (pr - rr)).float().mean().item()


def test_reward_loss_is_bradley_terry_and_ranks_an_edit_above_both() -> None:
    chosen, rejected = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5])
    expected = sum(-_log_sigmoid(c - r) for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)) / 3
    assert reward_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    edited, has_edit = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([True, False, False])
    three_way = (-_log_sigmoid(1.0) - _log_sigmoid(3.0 - 1.0) - _log_sigmoid(3.0 - 0.0)
                 - _log_sigmoid(-1.0) - _log_sigmoid(-0.5)) / 3  # fmt: skip
    assert reward_loss(chosen, rejected, edited, has_edit).item() == pytest.approx(three_way, rel=1e-6)


def test_sequence_logps_sum_only_the_targets() -> None:
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[1, IGNORE_INDEX, 3, 0], [IGNORE_INDEX] * 4])
    total, count = sequence_logps(logits[targets != IGNORE_INDEX], targets)
    logp = torch.log_softmax(logits, -1)
    assert total[0].item() == pytest.approx((logp[0, 0, 1] + logp[0, 2, 3] + logp[0, 3, 0]).item(), rel=1e-6)
    assert total[1].item() == 0 and count.tolist() == [3, 0]


def _assistant_text(tokenizer, ids: list[int], mask: list[bool]) -> str:
    return tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])


def test_llama3_sft_mask_covers_exactly_the_assistant_tokens() -> None:
    from herd.tokenizer.chat_format import ChatFormat, Message

    tok = Llama3Tokenizer()
    ids, mask = encode_dialog(tok, DIALOG)
    chat = ChatFormat(tok)
    expected_ids, expected_mask = [tok.bos_id], [False]
    for i, m in enumerate(DIALOG):  # assemble the dialog message by message from the renderer's pieces
        header, body = chat.encode_message(Message.from_dict(m, index=i))
        expected_ids += header + body
        expected_mask += [False] * len(header) + [m["role"] == "assistant"] * len(body)
    assert (ids, mask) == (expected_ids, expected_mask)
    text = _assistant_text(tok, ids, mask)
    assert text.startswith("4<|eot_id|>") and text.endswith("21 degrees.<|eot_id|>") and "get_weather" in text
    inputs, targets = sft_example(tok, DIALOG)
    assert len(inputs) == len(targets) == len(ids) - 1
    assert [t for t in targets if t != IGNORE_INDEX] == [t for t, m in zip(ids, mask, strict=True) if m]


def test_template_sft_mask_covers_the_assistant_turns_of_smollm2() -> None:
    tok = HFTokenizer.from_gguf(resolve_model_path(None))
    plain = [m for m in DIALOG if "tool_calls" not in m and m["role"] != "ipython"]
    ids, mask = encode_dialog(tok, plain)
    assert ids == tok.encode_chat(plain, add_generation_prompt=False)  # the same tokens the model sees
    assert _assistant_text(tok, ids, mask) == "4<|im_end|>\n21 degrees.<|im_end|>\n"
    record = {"messages": plain[:2], "chosen": "4", "rejected": "5"}
    _, targets = preference_example(tok, record, record["chosen"])
    assert tok.decode([t for t in targets if t != IGNORE_INDEX]) == "4<|im_end|>\n"


def test_bad_lines_are_reported_with_file_and_line_or_stop(tmp_path) -> None:
    path = tmp_path / "pairs.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}], "chosen": "hello", "rejected": "go away"}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "messages": [{"role": "robot", "content": "x"}]}),
        json.dumps({**good, "chosen": "  "}),
        json.dumps({**good, "rejected": "hello"}),
        json.dumps([1, 2]),
    ]
    path.write_text("\n".join(lines) + "\n")
    result = read_jsonl(path, kind="preference")
    assert len(result.records) == 1
    assert [p.split(": ", 1)[0] for p in result.problems] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert "unknown role 'robot'" in result.problems[1] and "identical" in result.problems[3]
    assert "empty or missing 'chosen'" in result.problems[2]
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: invalid JSON"):
        read_jsonl(path, kind="preference", on_error="stop")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}))
    assert "empty assistant response" in read_jsonl(sft, kind="sft").problems[0]
