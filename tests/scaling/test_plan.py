"""The compute planner (herd/scaling/plan.py): the Llama 3 law, herd fits, hardware time and memory."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from herd.model import count_params, flops_per_token, get_preset
from herd.parallel.dims import ParallelDims, ParallelError
from herd.parallel.memory import estimate_memory
from herd.scaling.fit import ScalingError, fit_sweep, predict
from herd.scaling.plan import LLAMA3_LAW, PAPER_PARAMS, PAPER_TOKENS, format_plan, make_plan

H100_RATE = 989e12 * 0.4
"""FLOP/s per GPU at the planner's defaults: H100 bf16 dense peak x 40% MFU."""


def test_llama3_law_at_the_paper_budget_gives_its_tokens_and_explains_the_params() -> None:
    plan = make_plan(flops=3.8e25)
    assert plan["tokens"] == pytest.approx(PAPER_TOKENS, rel=0.02)
    assert plan["tokens"] == pytest.approx(16.29e12, rel=1e-3)
    # C = 6ND gives about 388.7B, 3.3% below the paper's 402B: reported, not tuned away.
    assert plan["params_6nd"] == pytest.approx(3.8e25 / (6 * plan["tokens"]))
    assert plan["params_6nd"] == pytest.approx(PAPER_PARAMS, rel=0.05)
    assert plan["params_6nd"] == pytest.approx(388.7e9, rel=1e-3)
    assert plan["paper"]["params_rel_diff"] == pytest.approx(plan["params_6nd"] / PAPER_PARAMS - 1)
    text = format_plan(plan)
    assert "16.29T" in text and "paper: 16.55T, -1.5%" in text
    assert "388.7B" in text and "paper: 402B, -3.3%" in text
    assert "why they differ" in text and "does not tune" in text
    assert "6 x 402B x 16.55T = 3.99e+25" in text
    assert text.isascii()


def test_paper_comparison_appears_only_at_the_paper_budget() -> None:
    assert make_plan(flops=1e24)["paper"] is None
    assert "paper:" not in format_plan(make_plan(flops=1e24))


def test_nearest_preset_and_herd_flop_count_are_reported() -> None:
    plan = make_plan(flops=3.8e25)
    preset = plan["preset"]
    assert preset["name"] == "llama3.1-405b"
    args = get_preset("llama3.1-405b")
    per_token = flops_per_token(args, 8192)["train"]
    assert preset["train_flops_per_token"] == per_token
    assert preset["ratio_to_6n"] == pytest.approx(per_token / (6 * count_params(args)["total"]))
    # The ratio splits into the attention FLOPs added and the embedding/norm weights left out.
    assert preset["ratio_to_6n"] == pytest.approx(1 + preset["attention_share"] - preset["uncounted_share"])
    assert preset["attention_share"] > 0.05 and 0 < preset["uncounted_share"] < 0.01
    assert preset["tokens_for_budget"] == pytest.approx(3.8e25 / per_token)
    assert make_plan(flops=1e22)["preset"]["name"] in ("llama3-8b", "llama3.1-8b")


def test_gpus_and_days_give_the_same_plan_as_the_flops_they_buy() -> None:
    by_time = make_plan(gpus=16384, days=54)
    assert by_time["flops"] == pytest.approx(16384 * 54 * 86400 * H100_RATE)
    assert by_time["flops_source"] != "given"
    by_flops = make_plan(flops=by_time["flops"], gpus=16384)
    assert by_flops["hardware"]["days"] == pytest.approx(54)
    assert by_flops["tokens"] == pytest.approx(by_time["tokens"])
    assert by_flops["hardware"]["gpu_days"] == pytest.approx(16384 * 54)
    needed = make_plan(flops=by_time["flops"], days=54)
    assert needed["hardware"]["gpus_needed"] == pytest.approx(16384)
    assert "16384 GPUs for 54 days" in format_plan(needed)
    assert "54 days on 16384 GPUs" in format_plan(by_flops)
    # A faster chip at the same MFU buys proportionally more compute.
    assert make_plan(gpus=16384, days=54, peak_tflops=2 * 989.0)["flops"] == pytest.approx(2 * by_time["flops"])


def test_memory_per_device_is_estimated_for_the_layout() -> None:
    plan = make_plan(flops=3.8e25, gpus=16384, tp=8, pp=16)
    mem = plan["memory"]
    assert mem["layout"] == {"pp": 16, "dp_replicate": 1, "dp_shard": 128, "tp": 8}
    dims = ParallelDims(tp=8, pp=16, dp_shard=128, world_size=16384)
    expected = estimate_memory(
        get_preset("llama3.1-405b"), dims, seq_len=8192, micro_batch=1, activation_checkpoint="selective"
    )
    assert mem["gib"] == expected["gib"]
    assert 0 < mem["gib"]["total"] < 141
    assert f"{mem['gib']['total']:.1f} GiB per device" in format_plan(plan)
    # An explicit FSDP width smaller than the GPUs leaves whole replicas (HSDP).
    hsdp = make_plan(flops=3.8e25, gpus=16384, tp=8, pp=16, dp_shard=64)["memory"]
    assert hsdp["layout"]["dp_replicate"] == 2
    assert hsdp["gib"]["optimizer"] == pytest.approx(2 * mem["gib"]["optimizer"], rel=1e-3)
    # Without GPUs the layout is tp x pp x dp_shard (default 1) processes.
    assert make_plan(flops=1e22, tp=2)["memory"]["world_size"] == 2


def _fit_file(tmp_path) -> str:
    """A herd fit.json from a small noiseless sweep of L = 1.7 + 400 / N^0.34 + 410 / D^0.28 with C = 6ND."""
    runs = []
    for c in np.geomspace(1e17, 1e21, 5):
        centre = 0.1 * (c / 6) ** (0.28 / 0.62)
        for n in np.geomspace(centre / 16, centre * 16, 7):
            d = c / (6 * n)
            val = 1.7 + 400 / n**0.34 + 410 / d**0.28
            nll = 0.9 * val - 0.8
            acc = 0.25 + 0.7 / (1 + math.exp(4 * (nll - 1.6)))
            runs.append({"name": f"{c:.1e}-{n:.3g}", "budget": float(c), "holdout": False, "n": float(n),
                         "flops_per_token": 6 * float(n), "status": "done", "val_loss": val, "task_nll": nll,
                         "task_acc": acc})  # fmt: skip
    fit = fit_sweep({"version": 1, "seq_len": 256, "task": {"chance": 0.25}, "runs": runs}, bootstrap=0)
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(fit))
    return str(path)


def test_herd_fit_law_plans_with_its_own_laws_and_predictions(tmp_path) -> None:
    law = _fit_file(tmp_path)
    plan = make_plan(flops=1e22, law=law)
    fit = json.loads(Path(law).read_text())
    expected = predict(fit, 1e22)
    assert plan["tokens"] == pytest.approx(expected["tokens"])
    assert plan["prediction"] == expected
    assert plan["params_6nd"] == pytest.approx(1e22 / (6 * plan["tokens"]))
    # The sweep's FLOPs were 6n per token, so C / (6 D_opt) is the fitted n_opt.
    assert plan["params_6nd"] == pytest.approx(expected["n"], rel=1e-6)
    assert 0.25 < expected["accuracy"] < 0.95
    text = format_plan(plan)
    for word in ("n_opt", "loss", "task NLL", "accuracy", "seq_len 256"):
        assert word in text
    assert plan["paper"] is None
    # 1e22 is one decade past the sweep: no warning; far beyond it the plan says the laws were not tested there.
    assert not plan["warnings"]
    far = make_plan(flops=1e25, law=law)
    assert "extrapolating 4.0 orders of magnitude" in format_plan(far)


def test_bad_inputs_raise_one_line_errors(tmp_path) -> None:
    with pytest.raises(ScalingError, match="give --flops, or both --gpus and --days"):
        make_plan(gpus=8)
    with pytest.raises(ScalingError, match="not all three"):
        make_plan(flops=1e22, gpus=8, days=1)
    with pytest.raises(ScalingError, match="mfu"):
        make_plan(flops=1e22, mfu=1.5)
    with pytest.raises(ScalingError, match="no such fit file"):
        make_plan(flops=1e22, law=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"laws": {}}')
    with pytest.raises(ScalingError, match=r"not a herd fit\.json"):
        make_plan(flops=1e22, law=str(tmp_path / "bad.json"))
    with pytest.raises(ScalingError, match="not a multiple"):
        make_plan(flops=1e22, gpus=12, tp=8)
    with pytest.raises(ParallelError):
        make_plan(flops=1e22, tp=3)


def test_llama3_law_constants_are_the_papers() -> None:
    assert (LLAMA3_LAW.coef, LLAMA3_LAW.exponent) == (0.299, 0.537)
    assert LLAMA3_LAW.tokens(1e20) == pytest.approx(0.299 * 1e20**0.537)
