"""`herd run` end to end on tests/recipe/micro.toml: every stage (corpus -> curate -> tokenizer -> pack -> plan ->
pretrain -> anneal -> post-training round -> guard -> eval -> export) at tiny sizes, started as a user starts it.

One run is made per module; the other tests copy its run directory (outputs are stored relative to it) and run
again: resume after a kill -9 in the middle of post-training, and a changed post-training setting, which must rerun
post-training and what follows it and reuse everything before it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser import colours, needs_chromium, render

from herd.recipe.lineage import hash_artifact
from herd.recipe.runner import run_recipe
from herd.recipe.spec import read_recipe

MICRO = Path(__file__).with_name("micro.toml")
STAGES = ["corpus", "curate", "tokenizer", "pack", "plan", "pretrain", "anneal", "posttrain", "guard", "eval", "export"]
BEFORE_POSTTRAIN = STAGES[: STAGES.index("posttrain")]
FROM_POSTTRAIN = STAGES[STAGES.index("posttrain") :]


def herd_run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "herd", "run", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("micro") / "run"
    proc = herd_run(str(MICRO), "--dir", str(run_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir


def copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


def lineage(run_dir: Path) -> dict:
    return json.loads((run_dir / "lineage.json").read_text())


def statuses(run_dir: Path) -> dict[str, str]:
    return {name: s["status"] for name, s in lineage(run_dir)["stages"].items()}


def assert_chain(run_dir: Path) -> None:
    """Every stage read the artifacts now on disk: its recorded input hashes are those of its inputs' outputs."""
    data = lineage(run_dir)
    for name, stage in data["stages"].items():
        for read in stage["inputs"].values():
            assert read["sha256"] == data["artifacts"][read["artifact"]]["sha256"], (name, read)


def test_micro_recipe_runs_every_stage_with_lineage(micro_run: Path) -> None:
    data = lineage(micro_run)
    assert list(data["stages"]) == STAGES
    assert data["recipe"]["name"] == "micro"
    for name, stage in data["stages"].items():
        assert (micro_run / name / "stage.json").is_file()
        assert stage["code"]["sha256"] and stage["config_sha256"] and stage["key"]
        for artifact in stage["outputs"]:
            entry = data["artifacts"][artifact]
            path = micro_run / entry["path"] if (micro_run / entry["path"]).exists() else Path(entry["path"])
            assert entry["sha256"] == hash_artifact(str(path))["sha256"], artifact  # the files on disk made it
    assert_chain(micro_run)  # each input names the artifact it read, with that artifact's hash
    # The chain from raw text to the exported model, as the stages read each other.
    assert data["stages"]["curate"]["inputs"]["raw"]["artifact"] == "corpus/main"
    assert data["stages"]["pack"]["inputs"]["tokenizer"]["artifact"] == "tokenizer/main"
    assert data["stages"]["pretrain"]["inputs"]["plan"]["artifact"] == "plan/main"
    assert data["stages"]["anneal"]["inputs"]["init"]["artifact"] == "pretrain/main"
    assert data["stages"]["posttrain"]["inputs"]["init"]["artifact"] == "anneal/main"
    assert data["stages"]["export"]["inputs"]["model"]["artifact"] == "posttrain/main"
    # The plan's shape and budget are what pretraining trained.
    plan = json.loads((micro_run / "plan" / "plan.json").read_text())
    params = json.loads((micro_run / "pretrain" / "model" / "params.json").read_text())
    assert params["dim"] == plan["model"]["shape"]["dim"] and params["n_layers"] == plan["model"]["shape"]["n_layers"]
    trained = json.loads((micro_run / "pretrain" / "stage.json").read_text())["summary"]["tokens"]
    assert plan["tokens"] <= trained < plan["tokens"] + 2048
    assert (micro_run / "export" / "model.gguf").stat().st_size > 0
    assert (micro_run / "export" / "hf" / "config.json").is_file()
    assert (micro_run / "report.html").stat().st_size > 1000
    assert json.loads((micro_run / "guard" / "guard.json").read_text())["shields"]


def test_report_shows_every_stage_from_the_files_it_wrote(micro_run: Path) -> None:
    import base64
    import io
    import re

    from PIL import Image

    page = (micro_run / "report.html").read_text()
    for anchor in ("overview", "curation", "scaling", "loss", "posttrain-loss", "posttrain", "safety", "eval",
                   "exports"):  # fmt: skip
        assert f'<section id="{anchor}">' in page, anchor
    assert "could not render" not in page
    images = [Image.open(io.BytesIO(base64.b64decode(b))) for b in re.findall(r'base64,([^"]+)"', page)]
    assert len(images) >= 3 and all(im.format == "PNG" for im in images)  # funnel, pretraining and post-training loss
    curated = json.loads((micro_run / "curate" / "report.json").read_text())
    assert f"{curated['input']['documents']} documents in, {curated['output']['documents']} kept" in page
    assert '<a href="eval/index.html">' in page and "tool-call validity" in page


@needs_chromium
def test_report_renders_in_headless_chromium_without_console_errors(micro_run: Path, tmp_path: Path) -> None:
    assert render(micro_run / "report.html", tmp_path / "report.png") == []
    shot = colours(tmp_path / "report.png")
    assert len(shot) > 50, len(shot)  # text, tables and plots, not a blank page
    assert shot.get((0x3B, 0x6F, 0xB6), 0) > 1000  # the curation funnel's bars are drawn


def test_rerun_reuses_every_stage(micro_run: Path, tmp_path: Path) -> None:
    recipe = read_recipe(MICRO, run_dir=copy_run(micro_run, tmp_path / "run"))
    planned = run_recipe(recipe, dry_run=True)
    assert {p.name: p.status for p in planned} == {**dict.fromkeys(STAGES, "reuse"), "serve": "skip"}


def test_resume_after_kill_in_post_training(micro_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(micro_run, tmp_path / "run")
    # Post-training again (same key), killed once its SFT has taken a step.
    proc = subprocess.Popen([sys.executable, "-m", "herd", "run", str(MICRO), "--dir", str(run_dir), "--rerun",
                             "posttrain"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    sft_metrics = run_dir / "posttrain" / "sft" / "metrics.jsonl"
    finished = run_dir / "posttrain" / "stage.json"  # the copied run's: goes when the stage's directory is cleared
    deadline = time.monotonic() + 300
    try:
        while finished.exists() or not (sft_metrics.is_file() and sft_metrics.read_text().count("\n") >= 1):
            assert proc.poll() is None, "herd run ended before post-training's SFT took a step"
            assert time.monotonic() < deadline, "post-training's SFT did not start"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "posttrain" / "stage.json").exists()

    recipe = read_recipe(MICRO, run_dir=run_dir)
    planned = {p.name: (p.status, p.why) for p in run_recipe(recipe, dry_run=True)}
    assert planned["posttrain"] == ("resume", "killed or failed midway; same key")
    assert all(planned[n][0] == "reuse" for n in BEFORE_POSTTRAIN)

    done = herd_run(str(MICRO), "--dir", str(run_dir))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "posttrain (posttrain): resume" in done.stderr
    now = statuses(run_dir)
    assert now == {**dict.fromkeys(BEFORE_POSTTRAIN, "reused"), "posttrain": "ran", **{n: now[n] for n in STAGES[-3:]}}
    # Later stages are reused only where the resumed round made the same bytes they read; either way the lineage
    # chain holds.
    assert_chain(run_dir)
    steps = [json.loads(line)["step"] for line in sft_metrics.read_text().splitlines()]
    assert steps[0] == 1 and steps[-1] == 6  # the SFT run went on from where the kill left it, to its last step
    summary = json.loads((run_dir / "posttrain" / "stage.json").read_text())["summary"]
    assert set(summary["metrics"]) == {"start", "sft", "dpo"}


def test_changed_posttrain_setting_reruns_only_posttrain_and_after(micro_run: Path, tmp_path: Path) -> None:
    run_dir = copy_run(micro_run, tmp_path / "run")
    changed = tmp_path / "micro.toml"
    text = MICRO.read_text().replace('config = "../../', f'config = "{MICRO.parent.parent.parent}/')
    text = text.replace('_config = "../../', f'_config = "{MICRO.parent.parent.parent}/')
    changed.write_text(text + "\n[stages.posttrain.dpo.dpo]\nbeta = 0.2\n")

    planned = {p.name: (p.status, p.why) for p in run_recipe(read_recipe(changed, run_dir=run_dir), dry_run=True)}
    assert all(planned[n] == ("reuse", "finished with the same key") for n in BEFORE_POSTTRAIN)
    assert planned["posttrain"] == ("run", "settings changed")
    assert all(planned[n] == ("run", "input model changed") for n in ("guard", "eval", "export"))

    keys_before = {n: s["key"] for n, s in lineage(run_dir)["stages"].items()}
    proc = herd_run(str(changed), "--dir", str(run_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = lineage(run_dir)["stages"]
    assert statuses(run_dir) == {**dict.fromkeys(BEFORE_POSTTRAIN, "reused"), **dict.fromkeys(FROM_POSTTRAIN, "ran")}
    assert all(after[n]["key"] == keys_before[n] for n in BEFORE_POSTTRAIN)
    assert all(after[n]["key"] != keys_before[n] for n in FROM_POSTTRAIN)
    assert "beta = 0.2" in after["posttrain"]["config"]["dpo"]
