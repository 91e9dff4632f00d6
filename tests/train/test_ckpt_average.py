import json
from pathlib import Path

import pytest
import torch

from herd.cli import main
from herd.errors import CheckpointError
from herd.formats import read_checkpoint
from herd.formats.load import load_pretrained
from herd.tokenizer import load_tokenizer
from herd.train.average import average_to, read_weights
from herd.train.trainer import Trainer


@pytest.fixture(scope="module")
def trained_run(synthetic_shards, tmp_path_factory):
    from herd.config import load

    run = tmp_path_factory.mktemp("avg") / "run"
    cfg = load("train", None, [
        f"job.dump_folder='{run}'", f"data.shards=['{synthetic_shards}']", "model.dim=32", "model.n_layers=2",
        "model.n_heads=4", "model.n_kv_heads=2", "training.steps=20", "training.seq_len=32",
        "training.batch_tokens=256", "lr_schedule.warmup_steps=2", "checkpoint.interval=10",
        "metrics.tensorboard=false", "metrics.peak_tflops=1.0", "metrics.log_interval=0",
    ])  # fmt: skip
    Trainer(cfg).train()
    return run


def test_average_is_the_elementwise_mean_and_loads_for_generation(trained_run, tmp_path, capsys) -> None:
    steps = [trained_run / "checkpoints" / f"step-{s:08d}" for s in (10, 20)]
    out = tmp_path / "avg"
    assert main(["ckpt", "average", *map(str, steps), "--out", str(out)]) == 0
    assert "averaged 2 checkpoints" in capsys.readouterr().out
    (_, a), (_, b) = read_weights(steps[0]), read_weights(steps[1])
    assert not torch.equal(a["layers.0.attention.wq.weight"], b["layers.0.attention.wq.weight"])
    averaged = read_checkpoint(out)
    assert averaged.format == "meta"
    for name, tensor in averaged.state_dict.items():
        torch.testing.assert_close(tensor, (a[name] + b[name]) / 2, rtol=0, atol=1e-7)
    loaded = load_pretrained(str(out))  # tokenizer.model came along from the training checkpoint
    assert loaded.tokenizer.vocab_size == loaded.model.args.vocab_size
    ids = loaded.tokenizer.encode("amber basil", bos=True)
    assert loaded.model(torch.tensor([ids])).shape[-1] == loaded.model.args.vocab_size


def test_one_checkpoint_exports_unchanged_and_mismatched_shapes_are_refused(trained_run, tmp_path) -> None:
    step = trained_run / "checkpoints" / "step-00000020"
    average_to([step], tmp_path / "hf", to="hf")
    exported = read_checkpoint(tmp_path / "hf")
    for name, tensor in read_weights(step)[1].items():
        assert torch.equal(exported.state_dict[name], tensor)
    tokenizer = load_tokenizer(step)  # the run's tiktoken tokenizer.model: eos and end-of-turn ids in the configs
    assert exported.metadata["eos_token_id"] == tokenizer.generation_ids()["eos_token_id"] is not None
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation == {k: v for k, v in tokenizer.generation_ids().items() if v is not None}
    other = tmp_path / "other"
    average_to([step], other, to="meta")
    ckpt = read_checkpoint(other)
    ckpt.args = ckpt.args.replace(n_layers=1)
    ckpt.state_dict = {k: v for k, v in ckpt.state_dict.items() if not k.startswith("layers.1.")}
    from herd.formats import write_checkpoint

    write_checkpoint(tmp_path / "shallow", ckpt, "meta")
    with pytest.raises(CheckpointError, match="shape differs"):
        average_to([step, tmp_path / "shallow"], tmp_path / "bad")


def test_export_of_a_run_packed_with_a_gguf_tokenizer_carries_that_tokenizer(tmp_path) -> None:
    """Shards packed with a .gguf file's tokenizer (a continued-pretraining run of the embedded model): the
    training checkpoint holds that file, and the export writes its tokenizer as tokenizer.json + template."""
    from herd.config import PackSection, load
    from herd.data.pack import pack
    from herd.formats.load import resolve_model_path
    from herd.tokenizer import HFTokenizer

    gguf = resolve_model_path(None)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Document {i}: the cat sat on mat number {i}."}) + "\n"
                            for i in range(200)))  # fmt: skip
    pack(PackSection(input=[str(docs)], tokenizer=str(gguf)), tmp_path / "shards")
    cfg = load("train", None, [
        f"job.dump_folder='{tmp_path / 'run'}'", f"data.shards=['{tmp_path / 'shards'}']", "model.dim=32",
        "model.n_layers=1", "model.n_heads=4", "model.n_kv_heads=2", "training.steps=2", "training.seq_len=32",
        "training.batch_tokens=64", "lr_schedule.warmup_steps=0", "metrics.tensorboard=false",
        "metrics.peak_tflops=1.0", "metrics.log_interval=0",
    ])  # fmt: skip
    checkpoint = Trainer(cfg).train()["checkpoint"]
    average_to([Path(checkpoint)], tmp_path / "hf", to="hf")
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    loaded = load_pretrained(str(tmp_path / "hf"))
    source = HFTokenizer.from_gguf(gguf)
    dialog = [{"role": "user", "content": "Hi there!"}]
    assert loaded.tokenizer.encode_chat(dialog) == source.encode_chat(dialog)
    assert loaded.tokenizer.encode("the cat sat", bos=False) == source.encode("the cat sat", bos=False)
    # transformers stops at SmolLM2's end-of-turn ids: <|endoftext|> 0 and <|im_end|> 2
    for name in ("config.json", "generation_config.json"):
        ids = json.loads((tmp_path / "hf" / name).read_text())
        assert ids["eos_token_id"] == sorted(source.stop_ids) == [0, 2] and ids["bos_token_id"] == source.bos_id
