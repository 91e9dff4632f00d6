import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from herd.cli import main
from herd.train.metrics import native_bf16
from herd.train.trainer import Trainer


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_tiny_model_learns_well_below_the_unigram_entropy(synthetic_shards, tmp_path, train_config, unigram_entropy):
    cfg = train_config(tmp_path / "run", synthetic_shards, "training.steps=150", "lr_schedule.warmup_steps=10")
    summary = Trainer(cfg).train()
    entropy = unigram_entropy(synthetic_shards)
    # The chain makes the next word ~90% predictable: a model beyond unigram statistics gets far below it.
    assert summary["final_loss_mean10"] < entropy - 1.0, (summary["final_loss_mean10"], entropy)
    lines = metrics(tmp_path / "run")
    assert [r["step"] for r in lines] == list(range(1, 151))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_gb"} <= lines[0].keys()
    assert not events(tmp_path / "run")  # no false spikes on a healthy run
    assert (tmp_path / "run" / "config.toml").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step-00000130", "step-00000140", "step-00000150"]  # fmt: skip


def test_nan_gradients_are_skipped_then_rolled_back_and_the_batches_left_out(synthetic_shards, tmp_path, train_config):
    # Batches 12-14 feed steps 13-15: two skips, then the third bad step in a row rolls back to step 10.
    cfg = train_config(tmp_path / "run", synthetic_shards, "faults.nan_grad_batches=[12, 13, 14]")
    summary = Trainer(cfg).train()
    ev = events(tmp_path / "run")
    assert [e["event"] for e in ev] == ["skip", "skip", "rollback"]
    assert [e["step"] for e in ev] == [12, 13, 10]  # the step each event was logged after
    assert "back to step 10" in ev[2]["reason"] and "[12, 13, 14]" in ev[2]["reason"]
    assert math.isfinite(summary["final_loss"]) and summary["rollbacks"] == 1
    lines = metrics(tmp_path / "run")
    assert [r["step"] for r in lines] == list(range(1, 31))  # the rolled-back steps were replaced
    assert all(math.isfinite(r["loss"]) and "skipped" not in r for r in lines)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000030" / "train_state.json").read_text())
    assert state["skip_batches"] == [12, 13, 14] and state["loader"]["batches"] == 33


@pytest.mark.parametrize("action", ["skip", "rollback"])
def test_an_injected_loss_spike_is_caught(synthetic_shards, tmp_path, train_config, action):
    cfg = train_config(
        tmp_path / "run", synthetic_shards, "faults.spike_batches=[24]", "recovery.spike_warmup=5",
        f"recovery.spike_action={action!r}",
    )  # fmt: skip
    summary = Trainer(cfg).train()
    ev = events(tmp_path / "run")
    assert len(ev) == 1 and ev[0]["event"] == action and "loss spike" in ev[0]["reason"]
    assert math.isfinite(summary["final_loss"])
    lines = metrics(tmp_path / "run")
    assert [r["step"] for r in lines] == list(range(1, 31))
    skipped = [r for r in lines if r.get("skipped")]
    if action == "skip":  # the step stays in the log, marked, with its update dropped
        assert [r["step"] for r in skipped] == [25] and skipped[0]["loss"] > 20
    else:  # rolled back to step 20 and replayed without batch 24
        assert not skipped and max(r["loss"] for r in lines[20:]) < 20


def test_activation_checkpointing_and_accumulation_do_not_change_the_losses(synthetic_shards, tmp_path, train_config):
    runs = {}
    for name, extra in {
        "plain": ["training.micro_batch_tokens=512"],
        "accumulate": ["training.micro_batch_tokens=128"],
        "checkpointed": ["training.activation_checkpoint=true"],
    }.items():
        cfg = train_config(tmp_path / name, synthetic_shards, "training.steps=6", *extra)
        Trainer(cfg).train()
        runs[name] = [r["loss"] for r in metrics(tmp_path / name)]
    assert runs["plain"] == pytest.approx(runs["accumulate"], rel=1e-5)
    assert runs["plain"] == pytest.approx(runs["checkpointed"], rel=1e-5)


def test_bfloat16_autocast_trains_with_float32_master_weights(synthetic_shards, tmp_path, train_config):
    cfg = train_config(tmp_path / "run", synthetic_shards, "training.steps=20", "model.dtype='bfloat16'")
    trainer = Trainer(cfg)
    trainer.train()
    lines = metrics(tmp_path / "run")
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.optimizer.state.values())
    # On a CPU whose bf16 matmul is torch's slow fallback, the run says so once.
    events_file = tmp_path / "run" / "events.jsonl"
    events = [json.loads(x)["event"] for x in events_file.read_text().splitlines()] if events_file.is_file() else []
    assert events.count("precision") == (0 if native_bf16(torch.device("cpu")) else 1)


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("[training]\nstepz = 3\n", "unknown key 'stepz' in [training]"),
        ("[training]\nsteps = 'many'\n", "training.steps must be int"),
        ('[data]\nshards = ["{missing}"]\n', "manifest.json: not found"),
        ("[model]\npreset = 'llama9'\n", "model.preset='llama9': unknown"),
    ],
)
def test_a_bad_config_fails_before_training_with_one_line(tmp_path, capsys, line, named):
    config = tmp_path / "bad.toml"
    run_dir = tmp_path / "run"
    config.write_text(f'[job]\ndump_folder = "{run_dir}"\n' + line.format(missing=tmp_path / "nowhere"))
    assert main(["train", "--config", str(config), "--data.shards=['x']"] if "shards" not in line else
                ["train", "--config", str(config)]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("herd: error:")
    assert named in err
    assert not run_dir.exists()


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(synthetic_shards, tmp_path, train_config):
    runs = {}
    for name, compile_ in (("eager", "false"), ("compiled", "true")):
        cfg = train_config(
            tmp_path / name,
            synthetic_shards,
            "training.steps=4",
            "lr_schedule.warmup_steps=1",
            f"training.compile={compile_}",
        )
        Trainer(cfg).train()
        runs[name] = [r["loss"] for r in metrics(tmp_path / name)]
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=1e-4)


def test_herd_train_prints_a_summary_and_resumes_a_finished_run_as_a_no_op(synthetic_shards, tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(
        f'[job]\ndump_folder = "{tmp_path / "run"}"\n[data]\nshards = ["{synthetic_shards}"]\n'
        "[model]\ndim = 32\nn_layers = 1\n[training]\nsteps = 8\nseq_len = 32\nbatch_tokens = 128\n"
        "[lr_schedule]\nwarmup_steps = 2\n[metrics]\ntensorboard = true\npeak_tflops = 1.0\n"
    )
    assert main(["train", "--config", str(config), "--checkpoint.interval=4"]) == 0
    out = capsys.readouterr().out
    assert "8 steps, 1,024 tokens" in out and "done: 8 steps" in out and "final loss" in out
    assert "[checkpoint]\ninterval = 4" in (tmp_path / "run" / "config.toml").read_text()
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    final = out.split("final loss ")[1].split(" ")[0]
    assert main(["train", "--config", str(config)]) == 0  # everything done: resumes at the end, trains nothing
    again = capsys.readouterr().out
    assert "resuming at step 8" in again and f"final loss {final}" in again
    assert len(metrics(tmp_path / "run")) == 8
    # Starting over in a directory that holds a run is refused rather than overwriting it.
    assert main(["train", "--config", str(config), "--checkpoint.resume=false"]) == 1
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err


def test_pretraining_continues_from_an_exported_checkpoint_with_model_init_from(synthetic_shards, tmp_path,
                                                                                 train_config):  # fmt: skip
    from herd.train.average import average_to

    Trainer(train_config(tmp_path / "first", synthetic_shards)).train()
    average_to([tmp_path / "first" / "checkpoints" / "step-00000030"], tmp_path / "export", to="hf")
    fresh = metrics(tmp_path / "first")[0]["loss"]
    cfg = train_config(tmp_path / "more", synthetic_shards)
    cfg = replace(cfg, model=replace(cfg.model, init_from=str(tmp_path / "export"), dim=None, n_layers=None,
                                     n_heads=None, n_kv_heads=None))  # fmt: skip
    trainer = Trainer(cfg)
    assert trainer.model_args.dim == 32 and trainer.model_args.n_layers == 2  # the checkpoint's shape
    trainer.train()
    # It starts where the first run ended (its lr warms up again), far below a new model's first loss.
    assert metrics(tmp_path / "more")[0]["loss"] < metrics(tmp_path / "first")[-1]["loss"] + 0.5 < fresh - 1.0
