"""Recipes that cannot run are refused in one line, before anything runs: an unknown stage kind, an input no
stage provides, a cycle, a key a stage does not have. And the stage keys: a setting changes only the keys of its
stage and of the stages downstream of it."""

import subprocess
import sys
from pathlib import Path

import pytest

from herd.recipe.runner import build_stages, plan_run
from herd.recipe.spec import RecipeError, read_recipe
from herd.recipe.stages.plan import small_shape
from herd.recipe.stages.pretrain import steps_for_tokens

REPO = Path(__file__).resolve().parents[2]


def recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(f'[recipe]\nname = "t"\ndir = "{tmp_path / "run"}"\n' + text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[stages.bake]\nkind = "oven"\n', "stage 'bake' has unknown kind 'oven'"),
        ("[stages.pack.pack]\nsource_field = 'domain'\n",
         "stage 'pack' (pack) needs input 'documents' (from a documents or raw stage); no earlier stage provides it"),
        ('[stages.corpus]\n[stages.curate]\ninputs = { raw = "nowhere" }\n',
         "stage 'curate' takes 'raw' from unknown stage 'nowhere'"),
        ('[stages.corpus]\n[stages.curate]\n[stages.tokenizer]\n[stages.pack]\n[stages.a]\nkind = "pretrain"\n'
         'inputs = { init = "b" }\n[stages.b]\nkind = "anneal"\ninputs = { init = "a" }\n', "cycle: a -> b -> a"),
        ('[stages.tokenizer]\nreuse = "llama3"\nvocab = 3\n', "unknown key 'vocab'"),
        ('[stages.corpus]\n[stages.curate.optim]\nlr = 3.0\n', "herd data curate does not read [optim]"),
        ('[stages.corpus]\n[stages.tokenizer]\ninputs = { documents = "corpus", shards = "corpus" }\n',
         "stage 'tokenizer' (tokenizer) has no input 'shards'"),
        ("[stages.corpus]\n[stages.export]\n", "stage 'export' (export) needs input 'model'"),
        ('[stages.tokenizer]\nreuse = "llama3"\n[stages.curate]\ninputs = { raw = "tokenizer" }\n',
         "takes 'raw' from 'tokenizer', a tokenizer stage; it needs one of: raw"),
        ("[stages.plan]\nshape = 'small'\n", "stages.plan: give flops, or gpus and days"),
        ("[stage.corpus]\n", "unknown table [stage]"),
    ],
)  # fmt: skip
def test_bad_recipe_is_one_line_before_anything_runs(tmp_path: Path, text: str, message: str) -> None:
    path = recipe(tmp_path, text)
    with pytest.raises(RecipeError) as e:
        build_stages(read_recipe(path))
    assert message in str(e.value) and "\n" not in str(e.value)
    proc = subprocess.run([sys.executable, "-m", "herd", "run", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("herd: error: ") and proc.stderr.count("\n") == 1
    assert message in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing ran


def test_a_command_stage_config_is_checked_as_it_will_run(tmp_path: Path) -> None:
    stages = "[stages.corpus]\n[stages.curate]\n[stages.tokenizer]\n[stages.pack]\n"
    path = recipe(tmp_path, stages + "[stages.pretrain.training]\nsteps = 10\n[stages.pretrain.lr_schedule]\n"
                                     "warmup_steps = 50\n")  # fmt: skip
    with pytest.raises(RecipeError, match=r"stages\.pretrain: lr_schedule\.warmup_steps=50 must be in \[0, training"):
        build_stages(read_recipe(path))


def test_a_setting_changes_the_keys_of_its_stage_and_downstream_only(tmp_path: Path) -> None:
    tiny = (REPO / "recipes" / "tiny.toml").read_text().replace('config = "', f'config = "{REPO}/')
    keys = []
    for text in (tiny, tiny.replace("vocab_size = 2048", "vocab_size = 1024")):
        path = tmp_path / "tiny.toml"
        path.write_text(text)
        r = read_recipe(path, run_dir=tmp_path / "run")
        keys.append({p.name: p.key for p in plan_run(r, build_stages(r))})
    same = [name for name in keys[0] if keys[0][name] == keys[1][name]]
    assert same == ["corpus", "curate"]  # the tokenizer and everything that reads it, directly or not, change


def test_steps_follow_the_batch_ramp() -> None:
    from herd.config import load

    cfg = load("train", REPO / "configs" / "pretrain" / "tiny.toml")  # 4096 tokens a step, 8192 from 160,000
    assert steps_for_tokens(cfg, 4096) == 1
    assert steps_for_tokens(cfg, 160_000) == 40  # 39 steps reach 159,744
    assert steps_for_tokens(cfg, 160_000 + 8192 * 10) == 50


def test_small_shapes_grow_with_the_budget() -> None:
    dims = [small_shape(n, 2048)["dim"] for n in (2e5, 1e6, 5e6, 3e7)]
    assert dims == sorted(dims) and dims[0] < dims[-1]
    shape = small_shape(1e6, 2048)
    assert shape["n_heads"] % shape["n_kv_heads"] == 0 and shape["dim"] % shape["n_heads"] == 0
