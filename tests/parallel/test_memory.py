"""The per-device memory and step-time estimator (herd/parallel/memory.py) and its `herd model info` view."""

import json

import pytest

from herd.cli import main
from herd.model import ModelArgs, count_params, flops_per_token, get_preset
from herd.parallel.dims import ParallelDims, ParallelError
from herd.parallel.memory import GIB, PARTS, estimate_memory, format_memory, parallel_plan, stage_layers, step_time

H100_BYTES = 80e9
"""An H100's "80 GB", read as 80e9 bytes: below the 79.6 GiB the device reports, which leaves some head-room."""
PAPER_BATCH = 16 * 2**20
"""Llama 3 405B's global batch at 8K context: 2048 sequences of 8192 tokens."""


def small() -> ModelArgs:
    # h=8, q = 2 heads x 4 = 8, kv = 1 head x 4 = 4, f=16, vocab 16: numbers small enough to add by hand.
    return ModelArgs(dim=8, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=4, vocab_size=16, ffn_hidden_dim=16)


def dims(*, tp: int = 1, pp: int = 1, dp_shard: int = 1, dp_replicate: int = 1) -> ParallelDims:
    world = tp * pp * dp_shard * dp_replicate
    return ParallelDims(tp=tp, pp=pp, dp_shard=dp_shard, dp_replicate=dp_replicate, world_size=world)


def paper_405b(**overrides) -> dict:
    """Llama 3.1 405B at 8K context with the paper's choices: TP 8 + sequence parallel, PP 16, FSDP 128, flash
    attention, no activation checkpointing, parameters kept gathered between forward and backward."""
    layout = {k: overrides.pop(k) for k in ("tp", "pp", "dp_shard", "dp_replicate") if k in overrides}
    kw = {"tp": 8, "pp": 16, "dp_shard": 128} | layout
    options = {"activation_checkpoint": "none", "reshard_after_forward": False} | overrides
    return estimate_memory(get_preset("llama3.1-405b"), dims(**kw), seq_len=8192, micro_batch=1, **options)


def test_small_case_matches_the_hand_count() -> None:
    m = estimate_memory(small(), dims(), seq_len=4, micro_batch=1, activation_checkpoint="none")
    # Parameters: per layer wq 64 + wk 32 + wv 32 + wo 64 + SwiGLU 3*8*16=384 + two norms 16 = 592;
    # two layers 1184 + embedding 128 + final norm 8 + output 128 = 1448.
    assert m["params_per_device"] == 1448 == count_params(small())["total"]
    # Activations per layer, 4 tokens: norms 4*4*8=128 + q and attention output 2*4*8=64 + k, v 2*4*4=32
    # + w1 x, w3 x, product 3*4*16=192 = 416 bf16 elements = 832 bytes; two layers 1664; the last stage adds
    # the final norm's input and output 2*2*4*8=128 bytes and the fp32 log-probs 4*4*16=256: 2048.
    assert m["activation_bytes_per_layer"] == 832
    assert m["bytes"] == {
        "params": 2 * 1448,
        "master": 4 * 1448,
        "grads": 4 * 1448,
        "optimizer": 8 * 1448,
        "fsdp_buffers": 0,
        "activations": 2048,
        "total": (2 + 4 + 4 + 8) * 1448 + 2048,
    }
    # Materialized scores add the softmax output, heads * s^2 = 2 * 16 elements = 64 bytes per layer.
    scores = estimate_memory(
        small(), dims(), seq_len=4, micro_batch=1, activation_checkpoint="none", attention_scores=True
    )
    assert scores["activation_bytes_per_layer"] == 832 + 64
    assert m["gib"]["total"] == m["bytes"]["total"] / GIB


def test_fsdp_over_8_ranks_divides_params_grads_and_optimizer_by_8_exactly() -> None:
    for args, kw in ((small(), {}), (get_preset("llama3.1-405b"), {"tp": 8, "pp": 16})):
        one = estimate_memory(args, dims(**kw), seq_len=8192, micro_batch=1)
        eight = estimate_memory(args, dims(dp_shard=8, **kw), seq_len=8192, micro_batch=1)
        assert one["params_per_device"] % 8 == 0
        for part in ("params", "master", "grads", "optimizer"):
            assert eight["bytes"][part] * 8 == one["bytes"][part], part
        assert eight["bytes"]["activations"] == one["bytes"]["activations"]
        # Replicas hold whole copies: dp_replicate divides nothing.
        replicated = estimate_memory(args, dims(dp_replicate=8, **kw), seq_len=8192, micro_batch=1)
        assert replicated["bytes"] == one["bytes"]


def test_tensor_parallel_with_sequence_parallel_divides_activations_by_tp() -> None:
    args = get_preset("llama3-8b")
    one = estimate_memory(args, dims(), seq_len=8192, micro_batch=2, activation_checkpoint="none")
    four = estimate_memory(args, dims(tp=4), seq_len=8192, micro_batch=2, activation_checkpoint="none")
    assert four["activation_bytes_per_layer"] * 4 == one["activation_bytes_per_layer"]
    assert four["bytes"]["activations"] * 4 == one["bytes"]["activations"]
    # Without sequence parallelism the norm activations stay whole on every rank.
    no_sp = estimate_memory(
        args, dims(tp=4), seq_len=8192, micro_batch=2, activation_checkpoint="none", sequence_parallel=False
    )
    assert no_sp["activation_bytes_per_layer"] > four["activation_bytes_per_layer"]


def test_full_checkpointing_keeps_less_than_selective_which_keeps_less_than_none() -> None:
    args, d = get_preset("llama3-8b"), dims(tp=2, pp=4)
    acts = {
        mode: estimate_memory(args, d, seq_len=4096, micro_batch=1, activation_checkpoint=mode, attention_scores=True)[
            "bytes"
        ]["activations"]
        for mode in ("full", "selective", "none")
    }
    assert acts["full"] < acts["selective"] < acts["none"]
    # Flash attention already recomputes the scores, which is all selective recomputation saves.
    flash = {
        mode: estimate_memory(args, d, seq_len=4096, micro_batch=1, activation_checkpoint=mode)["bytes"]["activations"]
        for mode in ("selective", "none")
    }
    assert flash["selective"] == flash["none"] == acts["selective"]


def test_pipeline_stages_balance_like_llama3_and_first_stages_hold_more_micro_batches() -> None:
    assert stage_layers(126, 16) == [7] + [8] * 14 + [7]
    assert stage_layers(10, 4) == [2, 3, 3, 2] and stage_layers(5, 1) == [5]
    m = paper_405b()
    # Stage 0 has one layer fewer than stage 1 but one more micro-batch: 7 x 16 < 8 x 15.
    assert (m["stage"], m["stage_layers"], m["microbatches_in_flight"]) == (1, 8, 15)
    assert max(m["stage_totals_gib"]) == m["gib"]["total"] > m["stage_totals_gib"][0]
    fewer = paper_405b(pp_microbatches_in_flight=4)
    assert fewer["bytes"]["activations"] < m["bytes"]["activations"]


def test_llama3_405b_layout_fits_an_h100_only_with_fsdp_and_pipeline() -> None:
    paper = paper_405b()
    assert paper["assumptions"]["layout"] == {"pp": 16, "dp_replicate": 1, "dp_shard": 128, "tp": 8}
    assert paper["assumptions"]["world_size"] == 16384
    assert paper["bytes"]["total"] < H100_BYTES
    # FSDP off (128 whole replicas per pipeline): fp32 master, gradients and AdamW state of 1/128 of the model,
    # about 3.2B parameters per device at 16 bytes each, on top of the same activations.
    no_fsdp = paper_405b(dp_shard=1, dp_replicate=128)
    assert no_fsdp["bytes"]["total"] > H100_BYTES
    # No pipeline and no FSDP: 1/8 of the model and its training state on every device.
    assert paper_405b(pp=1, dp_shard=1, dp_replicate=2048)["bytes"]["total"] > H100_BYTES
    # No pipeline, FSDP over 2048: keeping every gathered weight from forward to backward (the paper's choice
    # with PP) is 1/8 of the model in bf16 on each device; only per-layer resharding would fit.
    assert paper_405b(pp=1, dp_shard=2048)["bytes"]["total"] > H100_BYTES
    assert paper_405b(pp=1, dp_shard=2048, reshard_after_forward=True)["bytes"]["total"] < H100_BYTES


def test_step_time_follows_the_flops_formula_and_the_1f1b_bubble() -> None:
    args = get_preset("llama3.1-405b")
    d = dims(tp=8, pp=16, dp_shard=128)
    s = step_time(
        args,
        d,
        seq_len=8192,
        global_batch_tokens=PAPER_BATCH,
        peak_flops_per_device=989e12,
        mfu=0.4,
        train_tokens=15.6e12,
    )
    per_token = flops_per_token(args, 8192)["train"]
    assert s["seconds_per_step"] == pytest.approx(per_token * PAPER_BATCH / (16384 * 989e12 * 0.4))
    assert s["tokens_per_s"] == pytest.approx(PAPER_BATCH / s["seconds_per_step"])
    assert s["microbatches"] == 16  # 2048 sequences over 128 data-parallel ranks
    assert s["bubble_fraction"] == pytest.approx(15 / 31)
    assert s["busy_mfu"] == pytest.approx(0.4 / (1 - 15 / 31))
    assert s["steps"] == -(-int(15.6e12) // PAPER_BATCH)
    assert s["days"] == pytest.approx(s["steps"] * s["seconds_per_step"] / 86400)
    interleaved = step_time(
        args,
        d,
        seq_len=8192,
        global_batch_tokens=PAPER_BATCH,
        peak_flops_per_device=989e12,
        mfu=0.4,
        virtual_stages=4,
    )
    assert interleaved["bubble_fraction"] == pytest.approx(15 / (4 * 16 + 15))
    no_pp = step_time(small(), dims(dp_shard=2), seq_len=4, global_batch_tokens=16, peak_flops_per_device=1e9, mfu=1)
    assert no_pp["bubble_fraction"] == 0 and no_pp["microbatches"] == 2
    assert no_pp["seconds_per_step"] == pytest.approx(flops_per_token(small(), 4)["train"] * 16 / 2e9)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: estimate_memory(get_preset("llama3.1-405b"), dims(tp=3), seq_len=8190, micro_batch=1), "tp=3"),
        (lambda: estimate_memory(small(), dims(pp=3), seq_len=4, micro_batch=1), "pp=3"),
        (lambda: estimate_memory(small(), dims(), seq_len=0, micro_batch=1), "seq_len=0"),
        (lambda: estimate_memory(small(), dims(tp=2), seq_len=5, micro_batch=1), "seq_len=5"),
        (lambda: estimate_memory(small(), dims(), seq_len=4, micro_batch=1, optimizer="lion"), "'lion'"),
        (lambda: estimate_memory(small(), dims(), seq_len=4, micro_batch=1, activation_checkpoint="some"), "'some'"),
        (lambda: estimate_memory(small(), dims(pp=2), seq_len=4, micro_batch=1, pp_microbatches_in_flight=3), "=3"),
        (
            lambda: step_time(small(), dims(), seq_len=4, global_batch_tokens=16, peak_flops_per_device=1, mfu=1.5),
            "mfu=1.5",
        ),
        (
            lambda: step_time(small(), dims(), seq_len=4, global_batch_tokens=18, peak_flops_per_device=1, mfu=0.5),
            "global_batch_tokens=18",
        ),
        (
            lambda: step_time(
                small(), dims(dp_shard=8), seq_len=4, global_batch_tokens=16, peak_flops_per_device=1, mfu=0.5
            ),
            "8 data-parallel ranks",
        ),
        (lambda: dims(tp=0), "tp=0"),
    ],
)
def test_invalid_inputs_raise_an_error_naming_the_value(call, named) -> None:
    with pytest.raises(ParallelError, match=named.replace("(", r"\(")):
        call()


def test_cli_model_info_reports_memory_per_device_for_the_405b_layout(capsys) -> None:
    argv = ["model", "info", "llama3.1-405b", "--tp", "8", "--pp", "16", "--dp-shard", "128", "--json"]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    memory = info["memory"]
    assert memory["assumptions"]["layout"] == {"pp": 16, "dp_replicate": 1, "dp_shard": 128, "tp": 8}
    assert memory["assumptions"]["world_size"] == 16384
    assert memory["assumptions"]["activation_checkpoint"] == "selective"
    assert memory["assumptions"]["seq_len"] == 8192 and memory["assumptions"]["micro_batch"] == 1
    assert set(memory["bytes"]) == {*PARTS, "total"}
    assert memory["bytes"]["total"] == sum(memory["bytes"][p] for p in PARTS) < H100_BYTES
    assert memory["stage_layers"] == 8 and len(memory["layers_per_stage"]) == 16
    assert "step_time" not in info

    assert main([*argv, "--mfu", "0.4", "--batch-tokens", str(PAPER_BATCH), "--no-reshard-after-forward"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step_time"]["microbatches"] == 16
    assert info["step_time"]["achieved_flops_per_device"] == pytest.approx(989e12 * 0.4)
    assert info["memory"]["bytes"]["fsdp_buffers"] > memory["bytes"]["fsdp_buffers"]

    assert main(argv[:-1]) == 0
    text = capsys.readouterr().out
    assert "memory per device" in text and "activations" in text and "step time" not in text
    assert main(["model", "info", "llama3.1-405b", "--tp", "3"]) == 1
    assert "tp=3" in capsys.readouterr().err


def test_cli_model_info_without_parallel_flags_is_unchanged(capsys) -> None:
    assert main(["model", "info", "tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"name", "source", "params", "params_billions", "embedding_params", "flops_per_token", "args"}
    assert main(["model", "info", "tiny"]) == 0
    assert "memory per device" not in capsys.readouterr().out


def test_format_memory_reports_step_time_and_training_days() -> None:
    plan = parallel_plan(
        get_preset("llama3.1-405b"), seq_len=8192, tp=8, pp=16, dp_shard=128, mfu=0.4, train_tokens=15.6e12
    )
    assert plan["memory"]["assumptions"]["world_size"] == 16384
    assert plan["step_time"]["achieved_flops_per_device"] == pytest.approx(989e12 * 0.4)  # the default peak
    lines = format_memory(plan).splitlines()
    assert lines[0].startswith("memory per device: pp 16 x dp_replicate 1 x dp_shard 128 x tp 8 = 16,384 devices")
    assert [line.split()[0] for line in lines[2:9]] == [*PARTS, "total"]
    assert lines[9].startswith("step time: ") and lines[9].endswith("at 395.6 TFLOP/s per device")
    assert lines[10].endswith(" per device)") and " s/step, " in lines[10]
    assert lines[11].startswith("  pipeline bubble ") and "(1F1B, 1 model chunk(s) per device)" in lines[11]
    assert lines[12].startswith("  1.56e+13 tokens: ") and lines[12].endswith(" FLOPs") and " days, " in lines[12]
    assert parallel_plan(small(), seq_len=4) == {}
    assert "step_time" not in parallel_plan(small(), seq_len=4, gpus=1)
