"""The long-running commands the crash drills kill, each with inputs big enough that a kill can land mid-write.

Training, SFT, the reward model, DPO, PPO and `herd run` have their own kill tests (tests/train/test_train_resume.py,
tests/posttrain/test_resume.py, tests/recipe/test_run.py); these are the data and checkpoint commands, rejection
sampling, and the post-training round (which composes the post-training stages)."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from drill import Drill

WORDS = [
    "amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper", "kelp", "lumen",
    "maple", "nectar", "onyx", "pebble", "quartz", "raven", "sage", "tundra", "umber", "violet", "willow", "xenon",
]  # fmt: skip
PACK = [
    "data", "pack", "-i", "docs.jsonl", "-o", "shards", "--tokenizer", "tok/tokenizer.model",
    "--source-field", "source", "--shard-tokens", "4000",
]  # fmt: skip


def documents(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize() + "." for _ in range(8)]
        docs.append({"id": f"doc-{i}", "text": " ".join(sentences), "source": ("north", "south", "east")[i % 3]})
    docs += [dict(d, id=d["id"] + "-copy") for d in docs[: n // 10]]  # exact duplicates for curate's dedup
    return docs


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def build_inputs(root: Path) -> Path:
    """Inputs every drill copies: part of the embedded raw corpus, a jsonl of generated documents, a BPE tokenizer,
    two HF checkpoints of one shape, a tiny chat model and task prompts for it."""
    import torch

    from herd.data.corpus import build_corpus
    from herd.formats import Checkpoint, resolve_model_path, write_checkpoint
    from herd.model import ModelArgs, build_model
    from herd.posttrain.loader import save_tokenizer
    from herd.posttrain.synth.tasks import make_tasks
    from herd.tokenizer import HFTokenizer
    from herd.tokenizer.train import save_ranks, train_bpe

    root.mkdir(parents=True, exist_ok=True)
    build_corpus(root / "raw", max_base=200, num_files=4)  # real text for curate (its language ID drops word salad)
    docs = documents(3000)
    write_jsonl(root / "docs.jsonl", docs)
    save_ranks(train_bpe([d["text"] for d in docs[:300]], 640), root / "tok" / "tokenizer.model")
    tokenizer = HFTokenizer.from_gguf(resolve_model_path(None))

    def write_model(name: str, args: ModelArgs, seed: int) -> None:
        """Random weights from `seed`, with the embedded model's tokenizer (and chat template), as an HF directory."""
        torch.manual_seed(seed)
        model = build_model(args, device="cpu", init=False)
        model.init_weights(std=0.02)
        sd = {k: v.detach() for k, v in model.state_dict().items()}
        write_checkpoint(root / name, Checkpoint(args=args, state_dict=sd, format="hf", path=root / name), "hf",
                         assets=lambda tmp: save_tokenizer(tokenizer, tmp))  # fmt: skip

    # About 30M parameters (120 MB in float32), so that writing a conversion takes a good part of the command's time.
    args = ModelArgs(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tokenizer.vocab_size, multiple_of=64,
                     max_seq_len=256)  # fmt: skip
    for seed in (0, 1):
        write_model(f"model-{seed}", args, seed)
    # A tiny chat model for rejection sampling and the round, and verifiable task prompts for it to sample.
    write_model("chat", ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tokenizer.vocab_size,
                                  multiple_of=32, tie_embeddings=True, max_seq_len=512), seed=2)  # fmt: skip
    tasks = make_tasks(random.Random(0), 24, split="train")
    write_jsonl(root / "prompts.jsonl", [{"messages": t["messages"], "item": t} for t in tasks])
    return root


SWEEP = """[job]
dump_folder = "sweep"
[pack]
input = ["docs.jsonl"]
tokenizer = "tok/tokenizer.model"
source_field = "source"
[training]
seq_len = 32
batch_tokens = 256
[scaling]
budgets = [1e9, 2e9]
holdout_budget = 0
val_fraction = 0.1
eval_batches = 2
task_items = 40
sizes = [{dim = 16, n_layers = 1}, {dim = 24, n_layers = 1}, {dim = 32, n_layers = 1}]
"""


RS = """[job]
dump_folder = "rs"
seed = 0
[model]
init_from = "chat"
dtype = "float32"
[data]
files = ["prompts.jsonl"]
[rs]
reward_model = ""
samples = 4
max_new_tokens = 24
batch_size = 16
"""


# The round on the tiny chat model, every stage a few steps in float32 (deterministic on one machine), with
# checkpoints often enough that a kill lands between them. Each stage config names the files the round wires in
# (a stage config must be a valid config of its command).
def _stage(files: list[str], training: str) -> str:
    text = f'[model]\ndtype = "float32"\n[data]\nfiles = {json.dumps(files)}\n'
    if training:  # a trainer's stage: a short warmup, checkpoints every 2 steps, no logging
        text += f"[lr_schedule]\nwarmup_steps = 1\n[training]\n{training}[checkpoint]\ninterval = 2\n"
        text += "[metrics]\nlog_interval = 0\ntensorboard = false\n"
    return text


PAIRS_TRAINING = "batch_size = 4\nmicro_batch_size = 4\nseq_len = 256\n"
ROUND = {
    "round.toml": """[job]
dump_folder = "round"
seed = 0
[model]
init_from = "chat"
[round]
sft_config = "sft.toml"
rm_config = "rm.toml"
rs_config = "rs.toml"
dpo_config = "dpo.toml"
eval_max_new_tokens = 16
[synth]
tool_dialogs = 12
max_tools = 1
tasks = 12
rs_prompts = 8
facts = 8
fact_samples = 2
max_new_tokens = 12
eval_tools = 4
eval_tasks = 4
eval_facts = 4
""",
    "sft.toml": _stage(["round/synth/sft.jsonl"], "steps = 6\nseq_len = 256\nbatch_tokens = 1024\n"),
    "rm.toml": _stage(["round/synth/pairs.jsonl"], PAIRS_TRAINING),
    "rs.toml": _stage(["round/synth/prompts.jsonl"], "") + "[rs]\nsamples = 2\nmax_new_tokens = 12\n",
    "dpo.toml": _stage(["round/rs/rs_pairs.jsonl", "round/synth/pairs.jsonl"], PAIRS_TRAINING),
}
# Wall-clock figures in the summaries, evaluations and trainers' logs.
POSTTRAIN_TIMES = ("seconds", "total_s", "generation_s", "tokens_per_s", "samples_per_s", "scoring_s", "elapsed",
                   "effective_training_time", "started_at", "wall_s")  # fmt: skip


def _copy(inputs: Path, *names: str) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        for name in names:
            src = inputs / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)

    return setup


def _with_file(setup: Callable[[Path], None], name: str, text: str) -> Callable[[Path], None]:
    return _with_files(setup, {name: text})


def _with_files(setup: Callable[[Path], None], files: dict[str, str]) -> Callable[[Path], None]:
    def both(work: Path) -> None:
        setup(work)
        for name, text in files.items():
            (work / name).write_text(text)

    return both


def _sweep_done(out: Path) -> bool:
    """Every run of SWEEP's 2 budgets x 3 shapes is in the manifest and done (the manifest grows run by run)."""
    manifest = out / "manifest.json"
    runs = json.loads(manifest.read_text())["runs"] if manifest.is_file() else []
    return len(runs) == 6 and all(r["status"] == "done" for r in runs)


def drills(inputs: Path) -> dict[str, Drill]:
    return {
        "data corpus": Drill(
            args=["data", "corpus", "-o", "corpus"],
            output="corpus",
            complete=lambda out: (out / "corpus.json").is_file(),
        ),
        "data curate": Drill(
            args=["data", "curate", "-i", "raw", "-o", "curate", "--no-quality", "--tasks", "4"],
            output="curate",
            complete=lambda out: (out / "report.json").is_file(),
            setup=_copy(inputs, "raw"),
            # Timings and the pages drawn from them.
            volatile=("report.json", "report.html", "report.png", "logs/*"),
            in_place={  # fnmatch's * crosses "/"
                "kept/*": "datatrove's task outputs: a task counts once its completion marker is written, and a "
                "rerun rewrites every task without one",
                "removed/*": "as kept/",
                "errors/*": "as kept/",
                "stages/*": "as kept/: the clean and dedup stages' outputs, the next stage's inputs",
                "logs/*": "datatrove's logs, stats, executor records and completion markers (empty files made once "
                "a task's outputs are closed)",
            },
        ),
        "data pack": Drill(
            args=PACK,
            output="shards",
            complete=lambda out: (out / "manifest.json").is_file(),
            setup=_copy(inputs, "docs.jsonl", "tok"),
            timing_keys=("seconds",),
        ),
        "convert to meta": Drill(
            args=["convert", "model-0", "meta", "--to", "meta"],
            output="meta",
            complete=lambda out: (out / "params.json").is_file(),
            setup=_copy(inputs, "model-0"),
        ),
        "convert to gguf": Drill(
            args=["convert", "model-0", "out/model.gguf", "--to", "gguf"],
            output="out",
            complete=lambda out: (out / "model.gguf").is_file(),
            setup=_copy(inputs, "model-0"),
        ),
        "scaling sweep": Drill(
            args=["scaling", "sweep", "--config", "sweep.toml"],
            output="sweep",
            complete=_sweep_done,
            setup=_with_file(_copy(inputs, "docs.jsonl", "tok"), "sweep.toml", SWEEP),
            # Wall times, and DCP's pickled metadata (it holds the checkpoint's absolute path); the checkpoints' tensor
            # files, every weight and optimizer moment, are compared byte for byte, and the manifests without times.
            volatile=("runs/*/metrics.jsonl", "runs/*/checkpoints.jsonl", "runs/*/.metadata"),
            timing_keys=("seconds", "elapsed", "started_at", "wall_s"),
            history=("runs/*/events.jsonl",),  # a run resumed from its final checkpoint logs the resume
            in_place={
                "manifest.json": "rewritten after every run; a run counts once its entry says done",
                "runs/*/metrics.jsonl": "the trainer's append-only log, cut back to the resumed step on resume",
                "runs/*/checkpoints.jsonl": "as metrics.jsonl",
                "runs/*/events.jsonl": "the trainer's append-only record of resumes, rollbacks and skips",
            },
        ),
        "rs": Drill(
            args=["rs", "--config", "rs.toml"],
            output="rs",
            complete=lambda out: (out / "summary.json").is_file(),
            setup=_with_file(_copy(inputs, "chat", "prompts.jsonl"), "rs.toml", RS),
            timing_keys=POSTTRAIN_TIMES,
        ),
        "round": Drill(
            args=["round", "--config", "round.toml"],
            output="round",
            complete=lambda out: (out / "round.json").is_file(),
            setup=_with_files(_copy(inputs, "chat"), ROUND),
            timing_keys=POSTTRAIN_TIMES,
            volatile=("*/metrics.jsonl", "*/checkpoints.jsonl", "*/.metadata"),
            history=("*/events.jsonl",),
            in_place={
                "*/metrics.jsonl": "the trainers' append-only log, cut back to the resumed step on resume",
                "*/checkpoints.jsonl": "as metrics.jsonl",
                "*/events.jsonl": "the trainers' append-only record of resumes, rollbacks and skips",
            },
        ),
        "ckpt average": Drill(
            args=["ckpt", "average", "model-0", "model-1", "--out", "avg", "--to", "hf"],
            output="avg",
            complete=lambda out: (out / "config.json").is_file(),
            setup=_copy(inputs, "model-0", "model-1"),
        ),
    }
