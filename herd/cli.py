"""`herd <command>`: a thin layer that parses arguments and calls one function per command.

Errors herd raises on purpose (`HerdError`) print as one line and exit 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from herd.errors import HerdError


def _sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--model", "-m", default=None, help="embedded model name, HF/Meta directory or .gguf file")
    p.add_argument("--max-new-tokens", "-n", type=int, default=max_new_tokens)
    p.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")


def _sampling_params(a: argparse.Namespace, **extra):
    from herd.inference.sampling import SamplingParams

    return SamplingParams(
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        repetition_penalty=a.repetition_penalty,
        seed=a.seed,
        stop=a.stop,
        **extra,
    )


def _load(a: argparse.Namespace):
    from herd.formats.load import load_pretrained, parse_dtype

    t0 = time.perf_counter()
    loaded = load_pretrained(a.model, dtype=parse_dtype(a.dtype))
    return loaded, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# generate / chat


def cmd_generate(a: argparse.Namespace) -> None:
    from herd.inference.engine import Engine

    loaded, _ = _load(a)
    tok = loaded.tokenizer
    if a.chat:
        prompt = tok.encode_chat([{"role": "user", "content": a.prompt}])
    else:
        prompt = tok.encode(a.prompt, bos=tok.add_bos)
    params = _sampling_params(a, logprobs=a.json)
    engine = Engine(loaded.model, tok)
    if a.json:
        c = engine.generate([prompt], params)[0]
        out = {"text": c.text, "tokens": c.tokens, "logprobs": c.logprobs, "finish_reason": c.finish_reason}
        print(json.dumps(out, ensure_ascii=False))
        return
    stats = _Stats()
    for event in engine.stream([prompt], params):
        stats.tick()
        print(event.text, end="", flush=True)
    print()
    print(stats.line(len(prompt)), file=sys.stderr)


def cmd_chat(a: argparse.Namespace) -> None:
    from herd.inference.engine import Engine

    loaded, load_s = _load(a)
    tok, engine = loaded.tokenizer, Engine(loaded.model, loaded.tokenizer)
    interactive = sys.stdin.isatty()
    print(
        f"herd chat: {loaded.name} ({loaded.checkpoint.format}, loaded in {load_s:.1f}s). /reset clears, /exit quits."
    )
    system = [{"role": "system", "content": a.system}] if a.system else []
    history = list(system)
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive:
            if not line:
                break
            line = line.rstrip("\n")
            print(f"you> {line}")
        if not line.strip():
            continue
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            history = list(system)
            print("(history cleared)")
            continue
        history.append({"role": "user", "content": line})
        prompt = tok.encode_chat(history)
        print("assistant> ", end="", flush=True)
        stats = _Stats()
        reply = None
        for event in engine.stream([prompt], _sampling_params(a)):
            stats.tick()
            print(event.text, end="", flush=True)
            reply = event.finished or reply
        print()
        print(stats.line(len(prompt)))
        history.append({"role": "assistant", "content": reply.text if reply else ""})


class _Stats:
    """Time to first token (prefill) and decode speed, as llama.cpp and vLLM report them."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last = self.start
        self.n = 0

    def tick(self) -> None:
        self.last = time.perf_counter()
        self.first = self.first or self.last
        self.n += 1

    def line(self, prompt_tokens: int) -> str:
        if self.first is None:
            return "(no tokens generated)"
        prefill = self.first - self.start
        decode = self.last - self.first
        rate = (self.n - 1) / decode if self.n > 1 and decode > 0 else float("nan")
        return (
            f"({prompt_tokens} prompt tokens in {prefill * 1000:.0f} ms, "
            f"{self.n} tokens generated at {rate:.1f} tokens/s)"
        )


# ---------------------------------------------------------------------------------------------
# tokenize / tokenizer train


def cmd_tokenize(a: argparse.Namespace) -> None:
    from herd.formats.load import EMBEDDED, resolve_model_path
    from herd.tokenizer import Llama3Tokenizer, load_tokenizer

    source = a.tokenizer
    if source.lower() in EMBEDDED:
        source = str(resolve_model_path(source))
    tok = load_tokenizer(source)
    mask = None
    if a.dialog is not None:
        messages = _read_json_file(a.dialog)
        if not isinstance(messages, list):
            raise HerdError(f"{a.dialog}: expected a JSON list of messages")
        if isinstance(tok, Llama3Tokenizer):
            from herd.tokenizer.chat_format import ChatFormat, Message

            dialog = [Message.from_dict(m, index=i) for i, m in enumerate(messages)]
            fmt = ChatFormat(tok)
            ids, mask = fmt.encode_dialog(dialog) if a.complete else (fmt.encode_dialog_prompt(dialog), None)
        else:
            ids = tok.encode_chat(messages, add_generation_prompt=not a.complete)
    else:
        if a.file is not None:
            try:
                text = Path(a.file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise HerdError(f"{a.file}: cannot read as UTF-8 text ({e})") from None
        elif a.text is not None:
            text = a.text
        else:
            raise HerdError("give the input with --text, --file or --dialog")
        ids = tok.encode(text, bos=a.bos, allow_special=a.allow_special)
    pieces = [tok.decode([i]) for i in ids]
    if a.json:
        out = {"tokens": ids, "count": len(ids), "pieces": pieces}
        if mask is not None:
            out["loss_mask"] = mask
        print(json.dumps(out, ensure_ascii=False))
        return
    for k, (i, piece) in enumerate(zip(ids, pieces, strict=True)):
        target = "" if mask is None else ("  [target]" if mask[k] else "")
        print(f"{i:>7}  {piece!r}{target}")
    print(f"{len(ids)} tokens")


def cmd_tokenizer_train(a: argparse.Namespace) -> None:
    from herd.tokenizer.train import read_corpus, save_ranks, train_bpe

    t0 = time.perf_counter()
    ranks = train_bpe(read_corpus(a.input), a.vocab_size, progress=sys.stderr.isatty())
    out = Path(a.out)
    if out.suffix != ".model":  # a directory, as for a Meta checkpoint's tokenizer.model
        out = out / "tokenizer.model"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_ranks(ranks, out)
    short = f" (the corpus ran out of pairs before {a.vocab_size - 256})" if len(ranks) < a.vocab_size - 256 else ""
    print(
        f"trained {len(ranks)} BPE tokens + 256 special tokens{short} in {time.perf_counter() - t0:.1f}s -> {out}\n"
        f"load it with: herd tokenize --tokenizer {out} --text '...'"
    )


def _flag_overrides(a: argparse.Namespace, keys: tuple[str, ...], section: str = "") -> list[str]:
    """The `--section.key=value` overrides, then the plain flags that were given, as overrides too (flags win).

    Values are written as JSON, which is also TOML for the strings, numbers and lists these flags hold."""
    given = [f"{section}{k}={json.dumps(getattr(a, k))}" for k in keys if getattr(a, k) is not None]
    return [*a.overrides, *given]


def _read_json_file(path: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise HerdError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise HerdError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


# ---------------------------------------------------------------------------------------------
# data


def cmd_data_corpus(a: argparse.Namespace) -> None:
    from herd.data.corpus import build_corpus

    t0 = time.perf_counter()
    stats = build_corpus(a.output, seed=a.seed)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.kinds.items()))
    print(f"wrote {stats.documents} documents ({stats.bytes / 1e6:.1f} MB) to {stats.path} in "
          f"{time.perf_counter() - t0:.1f}s: {kinds}")  # fmt: skip


def cmd_data_curate(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.data.pipeline import Curator, DataJobConfig
    from herd.data.report import write_report

    overrides = _flag_overrides(a, ("input", "output", "tasks", "workers"), section="curate.")
    if a.no_quality:
        overrides.append("curate.quality.enabled=false")
    job = load(DataJobConfig, a.config, overrides)
    cfg = job.curate
    print(f"herd data curate: {', '.join(cfg.input)} -> {cfg.output} ({cfg.tasks} tasks, {cfg.workers} workers)")
    report = Curator(cfg, verbose=a.verbose).run()
    out = Path(cfg.output)
    write_report(report, out)
    print(f"\n{'step':<34}{'docs in':>9}{'docs out':>10}  dropped / skipped")
    for step in report["steps"]:
        reasons = {**step["dropped"], **step["skipped"]}
        top = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        docs_in, docs_out = (str(step[k]) if step[k] is not None else "-" for k in ("docs_in", "docs_out"))
        print(f"{(step['stage'] + ': ' + step['step'])[:33]:<34}{docs_in:>9}{docs_out:>10}  {top}")
    o = report["output"]
    print(f"\nkept {o['documents']} of {report['input']['documents']} documents -> {o['path']}")
    if truth := report.get("ground_truth"):
        print("\nagainst the corpus's ground truth:")
        for name, result in truth.items():
            shown = {k: v for k, v in result.items() if k not in ("tp", "fp", "fn", "confusion") and v is not None}
            print(f"  {name:<44} " + "  ".join(f"{k}={v}" for k, v in shown.items()))
    print(f"\nreport: {out / 'report.json'}, {out / 'report.png'}, {out / 'report.html'}")


def cmd_data_pack(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.data.pack import PackConfig, pack

    keys = ("input", "output", "tokenizer", "source_field", "shard_tokens", "mix", "mix_tokens")
    cfg = load(PackConfig, a.config, _flag_overrides(a, keys))
    m = pack(cfg, progress=sys.stderr.isatty())
    if m.get("up_to_date"):
        print(f"{cfg.output} is up to date ({m['total']['tokens']:,} tokens); nothing to do")
    else:
        print(
            f"packed {m['total']['docs']:,} documents, {m['total']['tokens']:,} tokens "
            f"in {m['seconds']}s -> {cfg.output}"
        )
    for name, src in sorted(m["sources"].items(), key=lambda kv: -kv[1]["tokens"]):
        share = src["tokens"] / m["total"]["tokens"]
        print(
            f"  {name:<24}{src['docs']:>8} docs {src['tokens']:>12,} tokens  {share:6.1%}  {len(src['shards'])} shards"
        )
    if m["skipped"]["count"]:
        print(f"skipped {m['skipped']['count']} records, e.g. {m['skipped']['first'][0]}")
    if "mix" in m:
        budget = sum(p["draw"] for p in m["mix"].values())
        print(f"mix for {budget:,} training tokens:")
        for name, p in m["mix"].items():
            warn = "  <- repeats more than 4 times" if p["epochs"] > 4 else ""
            print(
                f"  {name:<24}{p['weight']:>6.0%}  draw {p['draw']:>12,} of {p['tokens']:>12,}"
                f"  {p['epochs']:.2f} epochs{warn}"
            )


# ---------------------------------------------------------------------------------------------
# train / ckpt


def cmd_train(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.model import count_params
    from herd.train.config import TrainJobConfig
    from herd.train.trainer import Trainer

    cfg = load(TrainJobConfig, a.config, a.overrides)
    trainer = Trainer(cfg)
    # Under torchrun every rank trains; rank 0 speaks.
    say = print if trainer.rank == 0 else (lambda *_, **__: None)
    n = count_params(trainer.model_args)
    ma = trainer.model_args
    say(
        f"herd train: {n['total'] / 1e6:.2f}M parameters (dim {ma.dim}, {ma.n_layers} layers, {ma.n_heads} heads, "
        f"{ma.n_kv_heads} kv heads, vocab {ma.vocab_size}) on {trainer.device} ({trainer.dims.describe()}), "
        f"{cfg.training.dtype}"
    )
    s = trainer.schedule
    stages = ", ".join(f"{st['batch_tokens']:,} tokens x {st['seq_len']} from step {st['step']}" for st in s.stages())
    anneal = f", anneal from step {s.anneal_start}" if s.anneal_start <= cfg.training.steps else ""
    say(f"  {cfg.training.steps} steps, {s.total_tokens:,} tokens: batches of {stages}{anneal}")
    mix = ", ".join(f"{k} {v:.0%}" for k, v in trainer.loader.weights.items())
    say(f"  data: {', '.join(cfg.data.shards)} ({mix}); run directory {trainer.run_dir}")
    if trainer.step:
        say(f"  resuming at step {trainer.step}")
    summary = trainer.train()
    say(
        f"done: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']}s "
        f"({summary['tokens_per_s']:,} tok/s); final loss {summary['final_loss']:.4f} "
        f"(mean of last 10: {summary['final_loss_mean10']:.4f})"
    )
    say(f"  effective training time {summary['effective_training_time']:.1%} (steps that count / wall time "
        "since the first launch)")  # fmt: skip
    if summary["skipped_steps"] or summary["rollbacks"]:
        say(f"  recovery: {summary['skipped_steps']} steps skipped, {summary['rollbacks']} rollbacks "
            f"(see {trainer.run_dir / 'events.jsonl'})")  # fmt: skip
    say(f"  checkpoint {summary['checkpoint']}; metrics {trainer.run_dir / 'metrics.jsonl'}")
    say(f"  export: herd ckpt average {summary['checkpoint']} --out {trainer.run_dir / 'model'}")
    trainer.shutdown()


def cmd_sft(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.sft import build_sft, export_sft
    from herd.train.config import TrainJobConfig

    cfg = load(TrainJobConfig, a.config, a.overrides)
    trainer, loader = build_sft(cfg)
    ma = trainer.model_args
    name = cfg.posttrain.init_from or "smollm2-135m-instruct"
    lora = f", LoRA rank {cfg.posttrain.lora_rank}" if cfg.posttrain.lora_rank else ""
    print(f"herd sft: {name} (dim {ma.dim}, {ma.n_layers} layers{lora}) on {len(loader.examples)} dialogs from "
          f"{', '.join(cfg.posttrain.sft_data)}; run directory {trainer.run_dir}")  # fmt: skip
    _print_problems(loader.problems)
    summary = trainer.train()
    print(f"done: {summary['steps']} steps in {summary['seconds']}s; final loss {summary['final_loss']:.4f} "
          f"(assistant tokens only); {loader.truncated} dialogs cut to the sequence length")  # fmt: skip
    out = export_sft(trainer, loader)
    trainer.shutdown()
    print(f"  checkpoint {summary['checkpoint']}; model {out}")


def _print_problems(problems: list[str]) -> None:
    for problem in problems[:5]:
        print(f"  skipped {problem}")
    if len(problems) > 5:
        print(f"  ... {len(problems) - 5} more skipped lines")


def cmd_rm(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.config import RewardJobConfig
    from herd.posttrain.reward import run_rm

    s = run_rm(load(RewardJobConfig, a.config, a.overrides))
    _print_problems(s["problems"])
    print(f"done: {s['steps']} steps on {s['train_pairs']} pairs; held-out pairwise accuracy "
          f"{s['held_out_accuracy_before']:.3f} -> {s['held_out_accuracy_after']:.3f} ({s['held_out_pairs']} pairs); "
          f"model {s['model']}")  # fmt: skip


def cmd_dpo(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.config import DPOJobConfig
    from herd.posttrain.dpo import run_dpo

    s = run_dpo(load(DPOJobConfig, a.config, a.overrides))
    _print_problems(s["problems"])
    before, after = s["held_out_before"], s["held_out_after"]
    held = (f"; held-out reward accuracy {before['eval_reward_accuracy']:.3f} -> {after['eval_reward_accuracy']:.3f}, "
            f"margin {after['eval_reward_margin']:.3f}") if after else ""  # fmt: skip
    print(f"done: {s['steps']} steps on {s['train_pairs']} pairs, final loss {s['final_loss']:.4f}{held}; "
          f"model {s['model']}")  # fmt: skip


def cmd_rs(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.config import RejectionJobConfig
    from herd.posttrain.rejection import run_rs

    s = run_rs(load(RejectionJobConfig, a.config, a.overrides))
    _print_problems(s["problems"])
    print(f"done: {s['samples']} samples for {s['prompts']} prompts ({s['samples_per_s']} samples/s, "
          f"{s['tokens_per_s']} tokens/s); mean score {s['mean_score']:.3f}, best-of-K {s['mean_best_score']:.3f}; "
          f"kept {s['kept']} -> {s['output']}, {s['pairs']} pairs -> {s['pairs_output']}")  # fmt: skip


def cmd_ppo(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.config import PPOJobConfig
    from herd.posttrain.ppo import run_ppo

    s = run_ppo(load(PPOJobConfig, a.config, a.overrides))
    _print_problems(s["problems"])
    print(f"done: {s['steps']} steps; mean score {s['score_first']:.3f} (first step) -> {s['score_last']:.3f} "
          f"(last); model {s['model']}")  # fmt: skip


def cmd_synth(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.synth import SynthJobConfig, run_synth

    s = run_synth(load(SynthJobConfig, a.config, a.overrides).synth)
    print(f"done in {s['seconds']}s ({s['format']} chat format): {s['sft_dialogs']} SFT dialogs "
          f"({s['tool_dialogs']} tool, {s['task_dialogs']} task, {s['fact_dialogs']} fact), {s['prompts']} prompts, "
          f"{s['fact_pairs']} fact pairs, {s['eval_items']} held-out items -> "
          f"{s['output']}/{{sft,prompts,pairs,eval}}.jsonl")  # fmt: skip


def cmd_round(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.round import RoundJobConfig, format_round, run_round

    s = run_round(load(RoundJobConfig, a.config, a.overrides))
    print(f"round done in {s['total_s']:.0f}s (stages: {', '.join(f'{k} {v:.0f}s' for k, v in s['seconds'].items())})")
    if s["rm"]:
        print(f"reward model: held-out pairwise accuracy {s['rm']['held_out_accuracy_before']:.3f} -> "
              f"{s['rm']['held_out_accuracy_after']:.3f} on {s['rm']['held_out_pairs']} pairs")  # fmt: skip
    print(format_round(s))


def cmd_ckpt_average(a: argparse.Namespace) -> None:
    from herd.formats.load import parse_dtype
    from herd.train.average import average_to

    t0 = time.perf_counter()
    paths = [Path(p) for p in a.checkpoints]
    args = average_to(paths, Path(a.out), to=a.to, dtype=parse_dtype(a.dtype) if a.dtype else None)
    what = f"averaged {len(paths)} checkpoints" if len(paths) > 1 else f"exported {paths[0]}"
    print(f"{what} (dim {args.dim}, {args.n_layers} layers) -> {a.out} ({a.to}) in {time.perf_counter() - t0:.1f}s")


# ---------------------------------------------------------------------------------------------
# scaling / plan


def cmd_scaling_sweep(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.scaling.sweep import ScalingJobConfig, run_sweep

    cfg = load(ScalingJobConfig, a.config, a.overrides).scaling
    runs = len(cfg.budgets) * len(cfg.sizes) + (1 if cfg.holdout_budget else 0)
    print(f"herd scaling sweep: {len(cfg.budgets)} budgets x {len(cfg.sizes)} shapes"
          f"{' + 1 held-out run' if cfg.holdout_budget else ''} ({runs} runs) -> {cfg.output}")  # fmt: skip
    t0 = time.perf_counter()
    manifest = run_sweep(cfg, progress=sys.stderr.isatty())
    failed = [r["name"] for r in manifest["runs"] if r.get("status") != "done"]
    print(f"done in {time.perf_counter() - t0:.0f}s: {len(manifest['runs'])} runs in {cfg.output}/manifest.json"
          + (f"; failed: {', '.join(failed)}" if failed else ""))  # fmt: skip
    print(f"next: herd scaling fit {cfg.output}")


def cmd_scaling_fit(a: argparse.Namespace) -> None:
    from herd.scaling.fit import fit_run, format_fit

    fit = fit_run(Path(a.run_dir), Path(a.out) if a.out else None)
    print(json.dumps(fit, indent=1) if a.json else format_fit(fit))


def cmd_plan(a: argparse.Namespace) -> None:
    from herd.scaling.plan import format_plan, make_plan

    if a.flops is None and (a.gpus is None or a.days is None):
        raise HerdError("give --flops C, or --gpus N and --days D (with --mfu and --peak-tflops)")
    plan = make_plan(
        flops=a.flops, gpus=a.gpus, days=a.days, mfu=a.mfu, peak_tflops=a.peak_tflops, law=a.law,
        seq_len=a.seq_len, tp=a.tp, pp=a.pp, dp_shard=a.dp_shard,
    )  # fmt: skip
    print(json.dumps(plan, indent=1) if a.json else format_plan(plan))


# ---------------------------------------------------------------------------------------------
# convert / model info


def cmd_convert(a: argparse.Namespace) -> None:
    from herd.formats.convert import convert
    from herd.formats.load import parse_dtype, resolve_model_path

    src = resolve_model_path(a.src)
    t0 = time.perf_counter()
    dtype = parse_dtype(a.dtype) if a.dtype else None
    summary = convert(src, Path(a.dst), a.to, dtype=dtype, num_shards=a.shards, max_shard_bytes=a.max_shard_mb * 2**20)
    print(f"converted {src} ({summary['from']}) -> {a.dst} ({a.to}) in {time.perf_counter() - t0:.1f}s")


def cmd_model_info(a: argparse.Namespace) -> None:
    from herd.model import PRESETS, count_params, flops_per_token

    if a.name is None:
        from herd.formats.load import EMBEDDED

        rows = [(name, count_params(args)["total"]) for name, args in PRESETS.items()]
        if a.json:
            print(json.dumps({"presets": dict(rows), "embedded": sorted(EMBEDDED)}))
            return
        for name, n in rows:
            print(f"{name:16s} {n / 1e9:10.3f}B parameters")
        print("embedded models: " + ", ".join(EMBEDDED))
        return
    args, source = _args_for(a.name)
    seq_len = a.seq_len or min(args.max_seq_len, 8192)
    counts = count_params(args)
    flops = flops_per_token(args, seq_len)
    info = {
        "name": a.name,
        "source": source,
        "params": counts["total"],
        "params_billions": round(counts["total"] / 1e9, 3),
        "embedding_params": counts["embedding"],
        "flops_per_token": {"forward": flops["forward"], "train": flops["train"], "seq_len": seq_len},
        "args": dataclasses.asdict(args),
    }
    plan = _parallel_plan(a, args, seq_len)
    info.update(plan)
    if a.json:
        print(json.dumps(info))
        return
    print(f"{a.name}  ({source})")
    print(f"  parameters        {counts['total']:,}  ({counts['total'] / 1e9:.3f}B)")
    print(f"  embedding         {counts['embedding']:,}")
    print(f"  FLOPs/token       forward {flops['forward']:.4g}, train {flops['train']:.4g} (seq_len {seq_len})")
    for k, v in info["args"].items():
        print(f"  {k:17s} {v}")
    if "memory" in plan:
        _print_plan(plan)


_PARALLEL_FLAGS = ("tp", "pp", "dp_shard", "dp_replicate", "gpus")
_STEP_FLAGS = ("peak_tflops", "mfu", "batch_tokens", "train_tokens")


def _parallel_plan(a: argparse.Namespace, args, seq_len: int) -> dict:
    """Memory per device (and step time) for the layout the flags give; empty when no parallel flag is given."""
    from herd.parallel.dims import ParallelDims
    from herd.parallel.memory import estimate_memory, step_time

    if all(getattr(a, k) is None for k in _PARALLEL_FLAGS):
        return {}
    sizes = {"tp": a.tp or 1, "pp": a.pp or 1, "dp_replicate": a.dp_replicate or 1}
    if a.dp_shard is not None:
        sizes["dp_shard"] = a.dp_shard
    elif a.gpus is None:
        sizes["dp_shard"] = 1
    world = a.gpus or sizes["tp"] * sizes["pp"] * sizes["dp_replicate"] * sizes["dp_shard"]
    dims = ParallelDims(world_size=world, **sizes)
    memory = estimate_memory(
        args,
        dims,
        seq_len=seq_len,
        micro_batch=a.micro_batch,
        activation_checkpoint=a.activation_checkpoint,
        attention_scores=a.attention_scores,
        reshard_after_forward=not a.no_reshard_after_forward,
    )
    plan = {"memory": memory}
    if any(getattr(a, k) is not None for k in _STEP_FLAGS):
        plan["step_time"] = step_time(
            args,
            dims,
            seq_len=seq_len,
            global_batch_tokens=a.batch_tokens or dims.dp * a.micro_batch * seq_len * dims.pp,
            peak_flops_per_device=(a.peak_tflops or 989.0) * 1e12,
            mfu=a.mfu or 0.4,
            micro_batch=a.micro_batch,
            virtual_stages=a.virtual_stages,
            train_tokens=a.train_tokens,
        )
    return plan


def _print_plan(plan: dict) -> None:
    m = plan["memory"]
    asm = m["assumptions"]
    layout = " x ".join(f"{k} {v}" for k, v in asm["layout"].items())
    print(
        f"memory per device: {layout} = {asm['world_size']:,} devices; seq_len {asm['seq_len']}, micro-batch "
        f"{asm['micro_batch']}, activation checkpoint {asm['activation_checkpoint']}, "
        f"reshard after forward {asm['reshard_after_forward']}"
    )
    print(
        f"  largest: stage {m['stage']} of {len(m['layers_per_stage'])} ({m['stage_layers']} layers, "
        f"{m['microbatches_in_flight']} micro-batches in flight), {m['params_per_device']:,} parameters"
    )
    for part, gib in m["gib"].items():
        print(f"  {part:17s} {gib:9.2f} GiB")
    if s := plan.get("step_time"):
        print(
            f"step time: {s['flops_per_step']:.4g} FLOPs per step of {s['microbatches']} micro-batches per "
            f"data-parallel rank, at {s['achieved_flops_per_device'] / 1e12:.1f} TFLOP/s per device"
        )
        print(
            f"  {s['seconds_per_step']:.3f} s/step, {s['tokens_per_s']:,.0f} tokens/s "
            f"({s['tokens_per_s_per_device']:,.1f} per device)"
        )
        print(
            f"  pipeline bubble {s['bubble_fraction']:.1%} (1F1B, {s['virtual_stages']} model chunk(s) per device); "
            f"MFU while busy {s['busy_mfu']:.1%}"
        )
        if "days" in s:
            print(
                f"  {s['train_tokens']:.4g} tokens: {s['steps']:,} steps, {s['days']:.1f} days, "
                f"{s['train_flops']:.3g} FLOPs"
            )


def _args_for(name: str):
    """ModelArgs of a preset, an embedded model or a checkpoint path, reading metadata only."""
    from herd.formats import read_args
    from herd.formats.load import EMBEDDED, resolve_model_path
    from herd.model import PRESETS, get_preset

    if name in PRESETS:
        return get_preset(name), "preset"
    if name.lower() not in EMBEDDED and not Path(name).exists():
        raise HerdError(f"{name!r} is neither a preset ({', '.join(PRESETS)}), an embedded model nor a path")
    path = resolve_model_path(name)
    return read_args(path), str(path)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herd", description="The Llama 3 recipe: train, convert, run models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="continue a prompt")
    p.add_argument("--prompt", "-p", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as one user turn of the chat template")
    p.add_argument("--json", action="store_true", help='print {"text", "tokens", ...} as JSON')
    _sampling_args(p, max_new_tokens=128)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="multi-turn chat (reads lines from stdin when piped)")
    p.add_argument("--system", default=None, help="system message")
    _sampling_args(p, max_new_tokens=512)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("convert", help="convert a checkpoint between Meta, HF and GGUF (read-only) formats")
    p.add_argument("src", help="Meta or HF directory, .gguf file, or embedded model name")
    p.add_argument("dst", help="new directory to write")
    p.add_argument("--to", required=True, choices=["hf", "meta"])
    p.add_argument("--dtype", default=None, help="cast weights (default: as stored; GGUF dequantizes to float32)")
    p.add_argument("--shards", type=int, default=1, help="model-parallel shards for --to meta")
    p.add_argument("--max-shard-mb", type=int, default=5120, help="safetensors shard size for --to hf")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("tokenize", help="show the tokens of a text, a file or a dialog")
    p.add_argument("--tokenizer", default="llama3", help="llama3, a tokenizer.model/.json, a model dir, .gguf or name")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text")
    src.add_argument("--file")
    src.add_argument("--dialog", help="JSON list of messages (role, content, tool_calls, stop_reason)")
    p.add_argument("--complete", action="store_true", help="--dialog is finished: no open assistant turn; loss mask")
    p.add_argument("--bos", action="store_true", help="prepend the begin-of-text token")
    p.add_argument("--allow-special", action="store_true", help="match special-token strings in the text")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    q = tsub.add_parser("train", help="train a BPE with Llama 3's pre-tokenization and special tokens")
    q.add_argument("--input", nargs="+", required=True, help=".txt/.md/.jsonl files or directories")
    q.add_argument("--vocab-size", type=int, required=True, help="total size, 256 special tokens included")
    q.add_argument(
        "--out",
        required=True,
        help="output file ending in .model (tiktoken format), else a directory for tokenizer.model",
    )
    q.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("data", help="curate raw text into documents and pack them into token shards")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("corpus", help="build the embedded raw corpus (with ground truth) from installed packages")
    q.add_argument("--output", "-o", default="runs/corpus/raw")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_data_corpus)
    q = dsub.add_parser("curate", help="run the curation pipeline (config file and/or --input/--output)")
    q.add_argument("--config", help="TOML file with a [curate] section; --curate.key=value overrides it")
    q.add_argument("--input", "-i", nargs="+")
    q.add_argument("--output", "-o")
    q.add_argument("--tasks", type=int)
    q.add_argument("--workers", type=int)
    q.add_argument("--no-quality", action="store_true", help="skip the LLM-judged quality classifier")
    q.add_argument("--verbose", action="store_true", help="show datatrove's per-task logs")
    q.set_defaults(func=cmd_data_curate, accepts_overrides=True)
    q = dsub.add_parser("pack", help="tokenize jsonl documents into shards for training")
    q.add_argument("--config", help="TOML file of PackConfig fields; --key=value overrides it")
    q.add_argument("--input", "-i", nargs="+")
    q.add_argument("--output", "-o")
    q.add_argument("--tokenizer")
    q.add_argument("--source-field")
    q.add_argument("--shard-tokens", type=int)
    q.add_argument("--mix", help='report a mix: "general=0.5,math=0.25,code=0.17,multilingual=0.08" or "llama3"')
    q.add_argument("--mix-tokens", type=int, help="training budget for the mix report (default: all packed tokens)")
    q.set_defaults(func=cmd_data_pack, accepts_overrides=True)

    p = sub.add_parser("train", help="pretrain a model on packed shards (config file + --section.key=value)")
    p.add_argument("--config", help="TOML file of the train config (see configs/pretrain/tiny.toml)")
    p.set_defaults(func=cmd_train, accepts_overrides=True)

    p = sub.add_parser("sft", help="supervised fine-tuning on jsonl dialogs (loss on assistant turns)")
    p.add_argument("--config", help="TOML train config with a [posttrain] section (see configs/posttrain/sft.toml)")
    p.set_defaults(func=cmd_sft, accepts_overrides=True)
    for name, func, help_text, example in (
        ("rm", cmd_rm, "train a reward model on preference pairs (Bradley-Terry, edited > chosen > rejected)",
         "configs/posttrain/rm.toml"),
        ("dpo", cmd_dpo, "Direct Preference Optimization on preference pairs (cached reference log-probs)",
         "configs/posttrain/dpo.toml"),
        ("rs", cmd_rs, "rejection sampling: K samples per prompt, scored, best kept as SFT data",
         "configs/posttrain/rs.toml"),
        ("ppo", cmd_ppo, "PPO with a value head against a reward model or verifiable rewards",
         "configs/posttrain/ppo.toml"),
        ("synth", cmd_synth, "tool-use, factuality/refusal and verifiable-task data, every label checked",
         "configs/posttrain/synth.toml"),
        ("round", cmd_round, "a whole post-training round with held-out metrics before and after",
         "configs/posttrain/round.toml"),
    ):  # fmt: skip
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help=f"TOML config (see {example}); --section.key=value overrides it")
        p.set_defaults(func=func, accepts_overrides=True)

    p = sub.add_parser("ckpt", help="checkpoint tools")
    csub = p.add_subparsers(dest="ckpt_command", required=True)
    q = csub.add_parser("average", help="average the weights of checkpoints (training or model) into a new one")
    q.add_argument("checkpoints", nargs="+", help="training checkpoint dirs (step-...) or Meta/HF/GGUF models")
    q.add_argument("--out", "-o", required=True, help="new directory to write")
    q.add_argument("--to", choices=["meta", "hf"], default="meta")
    q.add_argument("--dtype", default=None, help="cast the averaged weights (default float32)")
    q.set_defaults(func=cmd_ckpt_average)

    p = sub.add_parser("scaling", help="IsoFLOP sweeps and scaling-law fits that predict downstream accuracy")
    ssub = p.add_subparsers(dest="scaling_command", required=True)
    q = ssub.add_parser("sweep", help="train a family of model sizes per compute budget (resumable)")
    q.add_argument("--config", help="TOML file with a [scaling] section (see configs/scaling/tiny.toml)")
    q.set_defaults(func=cmd_scaling_sweep, accepts_overrides=True)
    q = ssub.add_parser("fit", help="fit IsoFLOP parabolas, power laws and the NLL -> accuracy sigmoid; plots")
    q.add_argument("run_dir", help="directory of a sweep (holds manifest.json)")
    q.add_argument("--out", help="where to write fit.json and the PNGs (default: the run directory)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_scaling_fit)

    p = sub.add_parser("plan", help="compute-optimal model and tokens for a budget, time and memory per device")
    p.add_argument("--flops", type=float, help="training compute budget in FLOPs (e.g. 3.8e25)")
    p.add_argument("--gpus", type=int, help="with --days: the budget is gpus x days x peak x mfu")
    p.add_argument("--days", type=float)
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per device (H100 SXM: 989)")
    p.add_argument("--law", default="llama3", help="llama3 (the paper's coefficients) or a fit.json")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--dp-shard", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("model", help="model presets and sizes")
    msub = p.add_subparsers(dest="model_command", required=True)
    q = msub.add_parser("info", help="parameters and FLOPs per token of a preset or checkpoint")
    q.add_argument("name", nargs="?", default=None, help="preset, embedded model or checkpoint path (omit to list)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--seq-len", type=int, default=None, help="context length for attention FLOPs (default 8192)")
    g = q.add_argument_group("memory per device (any of --tp, --pp, --dp-shard, --dp-replicate, --gpus)")
    g.add_argument("--tp", type=int, default=None, help="tensor-parallel ranks (default 1)")
    g.add_argument("--pp", type=int, default=None, help="pipeline stages (default 1)")
    g.add_argument("--dp-shard", type=int, default=None, help="FSDP shards (default: what --gpus leaves, else 1)")
    g.add_argument("--dp-replicate", type=int, default=None, help="whole-model replicas (default 1)")
    g.add_argument("--gpus", type=int, default=None, help="world size (default: product of the sizes)")
    g.add_argument("--micro-batch", type=int, default=1, help="sequences per forward/backward")
    g.add_argument("--activation-checkpoint", choices=["none", "selective", "full"], default="selective")
    g.add_argument("--attention-scores", action="store_true", help="attention keeps its s^2 scores (no flash/SDPA)")
    g.add_argument("--no-reshard-after-forward", action="store_true", help="FSDP keeps a stage's gathered weights")
    g = q.add_argument_group("step time (any of these; defaults 989 TFLOP/s, MFU 0.4, pp micro-batches per rank)")
    g.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak per device (H100 SXM: 989)")
    g.add_argument("--mfu", type=float, default=None, help="model-FLOPs utilization, e.g. 0.4")
    g.add_argument("--batch-tokens", type=int, default=None, help="global batch in tokens per optimizer step")
    g.add_argument("--virtual-stages", type=int, default=1, help="interleaved 1F1B chunks per device")
    g.add_argument("--train-tokens", type=float, default=None, help="training tokens, for days and total FLOPs")
    q.set_defaults(func=cmd_model_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a, extra = parser.parse_known_args(argv)
    # Config-driven commands take `--section.key=value` overrides; anything else unknown is an error.
    a.overrides = (
        [x for x in extra if x.startswith("--") and "=" in x] if getattr(a, "accepts_overrides", False) else []
    )
    if unknown := [x for x in extra if x not in a.overrides]:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    func: Callable[[argparse.Namespace], None] = a.func
    try:
        func(a)
    except HerdError as e:
        if a.debug:
            raise
        print(f"herd: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
