import json

import pytest
import torch
from writers import write_dialogs

from herd.config import load
from herd.formats.load import load_pretrained, resolve_model_path
from herd.posttrain.loader import DialogLoader
from herd.posttrain.losses import IGNORE_INDEX
from herd.posttrain.sft import build_sft
from herd.tokenizer import HFTokenizer
from herd.train.average import average_to


@pytest.fixture(scope="module")
def tokenizer() -> HFTokenizer:
    return HFTokenizer.from_gguf(resolve_model_path(None))


def test_packed_dialogs_target_only_assistant_tokens_and_resume_exactly(tokenizer, tmp_path) -> None:
    write_dialogs(tmp_path / "d.jsonl")
    loader = DialogLoader([str(tmp_path / "d.jsonl")], tokenizer, seed=1, on_error="skip", work_dir=tmp_path)
    assert len(loader.examples) == 24 and "unknown role 'robot'" in loader.problems[0]
    batch = loader.next_batch(2, 128)
    assert int(batch.doc_ids[0].max()) >= 2  # several dialogs per row
    text = tokenizer.decode(batch.targets[batch.targets != IGNORE_INDEX].tolist())
    assert "plus" in text and "<|im_end|>" in text and "What is" not in text and "one sentence" not in text
    state = json.loads(json.dumps(loader.state_dict()))
    again = DialogLoader([str(tmp_path / "d.jsonl")], tokenizer, seed=1, on_error="skip", work_dir=tmp_path)
    again.load_state_dict(state)
    for _ in range(12):  # across epoch boundaries
        x, y = loader.next_batch(2, 128), again.next_batch(2, 128)
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.targets, y.targets)


def test_sft_on_the_embedded_model_learns_and_exports_with_its_tokenizer(tmp_path) -> None:
    write_dialogs(tmp_path / "d.jsonl")
    cfg = load("sft", None, [
        f"job.dump_folder='{tmp_path / 'run'}'", f"data.files=['{tmp_path / 'd.jsonl'}']",
        "training.steps=4", "training.seq_len=128", "training.batch_tokens=256", "optim.lr=1e-4",
        "lr_schedule.warmup_steps=1", "metrics.tensorboard=false", "metrics.peak_tflops=1.0", "metrics.log_interval=0",
    ])  # fmt: skip
    trainer, _ = build_sft(cfg)
    trainer.train()
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] / 2, losses
    average_to([tmp_path / "run" / "checkpoints" / "step-00000004"], tmp_path / "model", to="hf")
    model = load_pretrained(str(tmp_path / "model"))
    prompt = model.tokenizer.encode_chat([{"role": "system", "content": "Answer with one sentence."},
                                          {"role": "user", "content": "What is 5 plus 7?"}])  # fmt: skip
    assert model.tokenizer.chat_template is not None and len(prompt) > 10


def test_an_exported_chat_model_tells_transformers_where_a_turn_ends(tmp_path, smol_tokenizer) -> None:
    """config.json's eos_token_id holds the tokenizer's end-of-turn ids (SmolLM2: <|endoftext|> 0 and <|im_end|> 2),
    as Meta's and HF's chat configs do; without them transformers runs on past the reply."""
    from herd.model import ModelArgs, build_model
    from herd.posttrain.stage import write_model

    args = ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=smol_tokenizer.vocab_size,
                     multiple_of=32, tie_embeddings=True, max_seq_len=64)  # fmt: skip
    write_model(args, build_model(args, device="cpu").state_dict(), smol_tokenizer, tmp_path / "m", dtype="float32")
    for name in ("config.json", "generation_config.json"):  # transformers' generate reads the second first
        config = json.loads((tmp_path / "m" / name).read_text())
        assert config["eos_token_id"] == sorted(smol_tokenizer.stop_ids) == [0, 2]
        assert config["bos_token_id"] == smol_tokenizer.bos_id

    # A model whose every logit is 0 picks token 0 (<|endoftext|>, an end of turn) first: transformers' greedy
    # generate and herd's engine both stop there, where without the ids transformers would run to max_new_tokens.
    from transformers import AutoModelForCausalLM

    from herd.inference import Engine, SamplingParams

    sd = build_model(args, device="cpu").state_dict()
    sd["norm.weight"] = torch.zeros_like(sd["norm.weight"])
    write_model(args, sd, smol_tokenizer, tmp_path / "stops", dtype="float32")
    prompt = smol_tokenizer.encode_chat([{"role": "user", "content": "Hi"}])
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "stops").eval()
    out = ref.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt) :].tolist()
    loaded = load_pretrained(str(tmp_path / "stops"))
    ours = Engine(loaded.model, loaded.tokenizer).generate([prompt], SamplingParams(max_new_tokens=8))[0]
    assert out == [0]  # transformers keeps the stop token; herd's Completion.tokens leaves it out
    assert ours.tokens == [] and (ours.finish_reason, ours.stop_reason) == ("stop", 0)
