"""`herd guard train` end to end on a few examples (one optimizer step of the real embedded model), and the
shipped adapter's provenance."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from herd.errors import SafetyError
from herd.safety.data import GuardExample
from herd.safety.guard import Guard
from herd.safety.train import ADAPTER_DIR, GuardTrainSettings, load_embedded_guard, sft_dialog, train_guard


def test_sft_dialogs_teach_the_lg3_answer() -> None:
    unsafe = GuardExample([{"role": "user", "content": "x"}], "User", True, ("S2", "S9"), "s")
    unknown = GuardExample([{"role": "user", "content": "x"}], "User", True, (), "s")
    agent = GuardExample([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "Agent", False)
    user, answer = sft_dialog(unsafe)["messages"]
    assert user["content"].startswith("Task: Check if there is unsafe content in 'User' messages")
    assert answer == {"role": "assistant", "content": "unsafe\nS2,S9"}
    assert sft_dialog(unknown)["messages"][1]["content"] == "unsafe"  # an unknown category is not guessed
    turn = sft_dialog(agent)["messages"][0]["content"]
    assert "User: q\n\nAgent: a\n\n<END CONVERSATION>" in turn and "ONLY THE LAST Agent message" in turn


@pytest.mark.slow
def test_train_writes_adapters_that_load_into_a_guard(tmp_path: Path) -> None:
    meta = train_guard(
        tmp_path, GuardTrainSettings(max_examples=6, epochs=1.0, batch_tokens=2048, last_layers=2), log=lambda _: None
    )
    adapters = load_file(str(tmp_path / "adapter" / "adapter.safetensors"))
    blocks = {name.split(".")[1] for name in adapters}
    assert blocks == {"28", "29"} and all(t.dtype == torch.bfloat16 for t in adapters.values())
    assert meta["steps"] == 1 and meta["train_examples"] == 6
    flags = "--max-examples 6 --epochs 1.0 --last-layers 2 --batch-tokens 2048"
    assert meta["command"] == f"herd guard train --out {tmp_path} {flags}"
    assert (tmp_path / "data" / "heldout.jsonl").stat().st_size > 0
    decoder, tokenizer = load_embedded_guard(tmp_path / "adapter")
    result = Guard(decoder, tokenizer).classify([{"role": "user", "content": "hello"}])
    assert 0.0 <= result.score <= 1.0


def test_the_shipped_adapter_says_how_it_was_made() -> None:
    meta = json.loads((ADAPTER_DIR / "adapter.json").read_text())
    assert meta["command"].startswith("herd guard train --out ")
    assert meta["base_model"] == "smollm2-135m-instruct" and meta["taxonomy"] == "lg3"
    assert meta["train_examples"] == GuardTrainSettings().max_examples


def test_a_missing_adapter_names_the_directory_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SafetyError, match=f"{tmp_path}: no guard adapter .*`herd guard train --out DIR`"):
        load_embedded_guard(tmp_path)
