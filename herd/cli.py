"""`herd <command>`: a thin layer that parses arguments and calls one function per command.

Errors herd raises on purpose (`HerdError`) print as one line and exit 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from herd.errors import HerdError, TokenizerError
from herd.eval.commands import add_eval_parser
from herd.fileio import read_json
from herd.safety.codeshield import add_codeshield_parser
from herd.safety.commands import add_guard_parser
from herd.safety.system_eval import add_safety_parser

UNSAFE_NO_SANDBOX = "--unsafe-no-sandbox"


def _sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--model", "-m", default=None, help="embedded model name, HF/Meta directory or .gguf file")
    p.add_argument("--max-new-tokens", "-n", type=int, default=max_new_tokens)
    p.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--dtype", default="float32", help="weights: float32 (default) or bfloat16")
    p.add_argument("--quant", default="none", help="weight-only quantization: none (default), int8 or int4")
    p.add_argument(
        "--speculate",
        choices=["none", "prompt-lookup", "draft"],
        default="none",
        help="speculative decoding: draft tokens from n-grams of the context or from --draft-model; "
        "greedy output is unchanged, sampling keeps the model's distribution",
    )
    p.add_argument("--draft-model", default=None, help="with --speculate draft: a smaller model, same vocabulary")
    p.add_argument("--num-draft-tokens", type=int, default=4, help="tokens drafted per verification (default 4)")


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
    from herd.formats.load import parse_dtype
    from herd.inference.load import load_decoder

    return load_decoder(a.model, dtype=parse_dtype(a.dtype), quant=a.quant)


def _engine(a: argparse.Namespace, loaded):
    """The Engine for generate/chat, with the speculative decoding the flags ask for."""
    from herd.errors import HerdError
    from herd.formats.load import parse_dtype
    from herd.inference.engine import Engine
    from herd.inference.load import load_decoder
    from herd.inference.speculative import SpeculativeConfig

    if a.speculate == "none":
        if a.draft_model:
            raise HerdError("--draft-model needs --speculate draft")
        return Engine(loaded.model, loaded.tokenizer)
    draft = None
    if a.speculate == "draft":
        if not a.draft_model:
            raise HerdError("--speculate draft needs --draft-model (a smaller model with the same vocabulary)")
        draft = load_decoder(a.draft_model, dtype=parse_dtype(a.dtype), quant=a.quant).model
    config = SpeculativeConfig(
        method="draft" if a.speculate == "draft" else "prompt_lookup",
        num_draft_tokens=a.num_draft_tokens,
        draft_model=draft,
    )
    return Engine(loaded.model, loaded.tokenizer, speculative=config)


# ---------------------------------------------------------------------------------------------
# generate / chat


def cmd_generate(a: argparse.Namespace) -> None:
    from herd.inference.stats import StreamStats, completion_json

    loaded = _load(a)
    tok = loaded.tokenizer
    if a.chat:
        prompt = tok.encode_chat([{"role": "user", "content": a.prompt}])
    else:
        prompt = tok.encode(a.prompt, bos=tok.add_bos)
    params = _sampling_params(a, logprobs=a.json)
    engine = _engine(a, loaded)
    if a.json:
        print(completion_json(engine.generate([prompt], params)[0]))
        return
    stats = StreamStats()
    for event in engine.stream([prompt], params):
        stats.tick()
        print(event.text, end="", flush=True)
    print()
    print(stats.line(len(prompt)), file=sys.stderr)
    if engine.speculative is not None and (s := engine.last_stats).drafted:
        print(
            f"speculative: {s.accepted}/{s.drafted} drafts accepted, {s.tokens_per_forward:.2f} tokens per forward",
            file=sys.stderr,
        )


def cmd_chat(a: argparse.Namespace) -> None:
    from herd.inference.stats import StreamStats

    loaded = _load(a)
    tok, engine = loaded.tokenizer, _engine(a, loaded)
    shield = _shield(a)
    interactive = sys.stdin.isatty()
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    guarded = f" Shields: {shield.guard.name}." if shield else ""
    print(
        f"herd chat: {loaded.name} ({loaded.format}, {dtype}, quant {loaded.model.quant}, loaded in "
        f"{loaded.load_s:.1f}s).{guarded} /reset clears, /exit quits."
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
        turn = {"role": "user", "content": line}
        if shield and (checked := shield.check_input([*history, turn])).blocked:
            print(f"assistant> {checked.message}\n(input shield: {', '.join(checked.categories) or 'unparsable'})")
            continue  # the model never sees a blocked request, and it stays out of the history
        history.append(turn)
        prompt = tok.encode_chat(history)
        print("assistant> ", end="", flush=True)
        stats = StreamStats()
        reply = None
        for event in engine.stream([prompt], _sampling_params(a)):
            stats.tick()
            if not shield:  # with an output shield nothing is shown before the whole reply has been checked
                print(event.text, end="", flush=True)
            reply = event.finished or reply
        text = reply.text if reply else ""
        if shield:
            checked = shield.check_output(history, text)
            text = checked.message if checked.blocked else text
            print(
                text
                + (f"\n(output shield: {', '.join(checked.categories) or 'unparsable'})" if checked.blocked else ""),
                end="",
            )
        print()
        print(stats.line(len(prompt)))
        history.append({"role": "assistant", "content": text})


def _shield(a: argparse.Namespace):
    """The input and output shields `--guard` asks for (None without it)."""
    if a.guard is None:
        return None
    from herd.safety.guard import Guard
    from herd.safety.shield import Shield

    return Shield(Guard.load(a.guard or None))


def cmd_serve(a: argparse.Namespace) -> None:
    import threading

    import uvicorn

    from herd.serve import ServeOptions, create_app

    if not 1 <= a.max_batch <= 64:
        raise HerdError(f"--max-batch must be in 1..64, got {a.max_batch}")
    loaded = _load(a)
    options = ServeOptions(
        model_name=a.served_model_name or loaded.name,
        api_key=a.api_key or os.environ.get("HERD_API_KEY") or None,
        max_batch=a.max_batch,
        max_queue=a.max_queue,
        max_seq_len=a.max_seq_len,
        request_timeout=a.request_timeout,
        builtin_tools=a.builtin_tools,
        index=a.index,
    )
    app = create_app(loaded, options, scheduler_thread=False, shield=_shield(a))
    url = f"http://{a.host}:{a.port}"
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    key = " -H 'Authorization: Bearer $HERD_API_KEY'" if options.api_key else ""
    body = json.dumps({"model": options.model_name, "messages": [{"role": "user", "content": "Hi!"}]})
    print(
        f"herd serve: {options.model_name} ({loaded.format}, {dtype}, quant {loaded.model.quant}, loaded in "
        f"{loaded.load_s:.1f}s), batch {a.max_batch}, context {min(a.max_seq_len, loaded.model.args.max_seq_len)}\n"
        f"  OpenAI API at {url}/v1\n"
        f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{key} -d '{body}'",
        flush=True,
    )
    # The web server runs in a thread and the scheduler in this one, the thread that loaded the model (see
    # Scheduler.run: a second OpenMP team costs decode speed on a small machine).
    server = uvicorn.Server(uvicorn.Config(app, host=a.host, port=a.port, log_level=a.log_level))
    web = threading.Thread(target=server.run, name="herd-web", daemon=True)
    web.start()
    try:
        app.state.scheduler.run(until=lambda: not web.is_alive())
    finally:
        server.should_exit = True
        web.join(timeout=30)
    if not server.started:
        raise HerdError(f"the server did not start on {a.host}:{a.port} (is the port in use?)")


def cmd_agent(a: argparse.Namespace) -> None:
    from herd.serve.chat import tool_format
    from herd.tools.agent import BuiltinTools, Step, run_agent

    loaded = _load(a)
    tok, engine = loaded.tokenizer, _engine(a, loaded)
    tools = BuiltinTools(index=a.index, code=not a.no_code)
    fmt = tool_format(tok)
    offered = [t.name for t in tools.tools(fmt)]
    print(f"herd agent: {loaded.name}, tools: {', '.join(offered) or 'none'}", file=sys.stderr)

    def complete(messages: list[dict]) -> str:
        return engine.generate([tok.encode_chat(messages)], _sampling_params(a))[0].text

    def show(step: Step) -> None:
        result = step.result if len(step.result) <= 300 else step.result[:300] + " ..."
        print(f"-> {step.name}({json.dumps(step.arguments, ensure_ascii=False)})\n<- {result}", file=sys.stderr)

    messages = ([{"role": "system", "content": a.system}] if a.system else []) + [{"role": "user", "content": a.prompt}]
    answer, _ = run_agent(complete, messages, tools, fmt, max_steps=a.max_steps, on_step=show)
    print(answer)


def cmd_index_build(a: argparse.Namespace) -> None:
    from herd.tools.index import build_index

    t0 = time.perf_counter()
    n = build_index([Path(p) for p in a.inputs], Path(a.out), text_field=a.text_field)
    print(f"indexed {n} documents into {a.out} in {time.perf_counter() - t0:.1f}s")


# ---------------------------------------------------------------------------------------------
# tokenize / tokenizer train


def cmd_tokenize(a: argparse.Namespace) -> None:
    from herd.formats.load import EMBEDDED, resolve_model_path
    from herd.tokenizer import Llama3Tokenizer, load_tokenizer
    from herd.tokenizer.base import format_tokens

    source = a.tokenizer
    if source.lower() in EMBEDDED:
        source = str(resolve_model_path(source))
    tok = load_tokenizer(source)
    mask = None
    if a.dialog is not None:
        messages = read_json(a.dialog, what="dialog")
        if not isinstance(messages, list):
            raise HerdError(f"{a.dialog}: expected a JSON list of messages")
        try:
            if isinstance(tok, Llama3Tokenizer):
                from herd.tokenizer.chat_format import ChatFormat, Message

                dialog = [Message.from_dict(m, index=i) for i, m in enumerate(messages)]
                fmt = ChatFormat(tok)
                ids, mask = fmt.encode_dialog(dialog) if a.complete else (fmt.encode_dialog_prompt(dialog), None)
            else:
                ids = tok.encode_chat(messages, add_generation_prompt=not a.complete)
        except TokenizerError as e:  # a message that does not fit the format: name the file it came from
            raise TokenizerError(f"{a.dialog}: {e}") from None
    else:
        if a.file is not None:
            try:
                # The file's bytes as they are: universal newlines would turn "\r\n" into "\n", other tokens.
                text = Path(a.file).read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise HerdError(f"{a.file}: cannot read as UTF-8 text ({e})") from None
        elif a.text is not None:
            text = a.text
        else:
            raise HerdError("give the input with --text, --file or --dialog")
        ids = tok.encode(text, bos=a.bos, allow_special=a.allow_special)
    print(format_tokens(tok, ids, mask, as_json=a.json))


def cmd_tokenizer_train(a: argparse.Namespace) -> None:
    from herd.tokenizer.train import format_trained, read_corpus, save_ranks, train_bpe

    t0 = time.perf_counter()
    ranks = train_bpe(read_corpus(a.input), a.vocab_size, progress=sys.stderr.isatty())
    out = Path(a.out)
    if out.suffix != ".model":  # a directory, as for a Meta checkpoint's tokenizer.model
        out = out / "tokenizer.model"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_ranks(ranks, out)
    print(format_trained(ranks, a.vocab_size, time.perf_counter() - t0, out))


def _flag_overrides(a: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """The `--section.key=value` overrides, then the plain flags that were given (flag -> the key it sets), as
    overrides too (flags win). Values are written as JSON, which is also TOML for the strings, numbers and lists
    these flags hold."""
    given = [f"{key}={json.dumps(getattr(a, flag))}" for flag, key in flags.items() if getattr(a, flag) is not None]
    return [*a.overrides, *given]


# ---------------------------------------------------------------------------------------------
# data


def cmd_data_corpus(a: argparse.Namespace) -> None:
    from herd.data.corpus import build_corpus, format_corpus

    t0 = time.perf_counter()
    stats = build_corpus(a.output, seed=a.seed)
    print(format_corpus(stats, time.perf_counter() - t0))


def cmd_data_curate(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.data.pipeline import Curator
    from herd.data.report import format_curate, write_report

    overrides = _flag_overrides(a, {"input": "curate.input", "output": "job.dump_folder", "tasks": "curate.tasks",
                                    "workers": "curate.workers"})  # fmt: skip
    if a.no_quality:
        overrides.append("curate.quality.enabled=false")
    cfg = load("curate", a.config, overrides)
    c, out = cfg.curate, Path(cfg.job.dump_folder)
    print(f"herd data curate: {', '.join(c.input)} -> {out} ({c.tasks} tasks, {c.workers} workers)")
    report = Curator(c, out, verbose=a.verbose).run()
    write_report(report, out)
    print(format_curate(report, out))


def cmd_data_pack(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.data.pack import format_pack, pack

    keys = ("input", "tokenizer", "source_field", "shard_tokens", "mix", "mix_tokens")
    flags = {"output": "job.dump_folder", **{k: f"pack.{k}" for k in keys}}
    cfg = load("pack", a.config, _flag_overrides(a, flags))
    out = cfg.job.dump_folder
    print(format_pack(pack(cfg.pack, out, progress=sys.stderr.isatty()), out))


# ---------------------------------------------------------------------------------------------
# train / ckpt


def _rank0(line: str) -> None:
    """Under torchrun every rank runs the command; rank 0 speaks."""
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)


def cmd_train(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.train.report import format_done, format_start
    from herd.train.trainer import Trainer

    trainer = Trainer(load("train", a.config, a.overrides))
    _rank0(format_start(trainer))
    summary = trainer.train()
    _rank0(format_done(trainer, summary))
    trainer.shutdown()


def cmd_sft(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.sft import build_sft, finish_sft, format_done, format_start

    trainer, loader = build_sft(load("sft", a.config, a.overrides))
    _rank0(format_start(trainer, loader))
    _rank0(format_done(finish_sft(trainer, loader, trainer.train())))


def cmd_rm(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.reward import format_summary, run_rm

    _rank0(format_summary(run_rm(load("rm", a.config, a.overrides))))


def cmd_dpo(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.dpo import format_summary, run_dpo

    _rank0(format_summary(run_dpo(load("dpo", a.config, a.overrides))))


def cmd_rs(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.rejection import format_summary, run_rs

    print(format_summary(run_rs(load("rs", a.config, a.overrides))))


def cmd_ppo(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.ppo import format_summary, run_ppo

    print(format_summary(run_ppo(load("ppo", a.config, a.overrides))))


def cmd_synth(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.synth import format_summary, run_synth

    print(format_summary(run_synth(load("synth", a.config, a.overrides))))


def cmd_round(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.posttrain.round import format_done, run_round

    print(format_done(run_round(load("round", a.config, a.overrides))))


def cmd_run(a: argparse.Namespace) -> None:
    from herd.recipe.commands import format_done, service_argv
    from herd.recipe.runner import format_plan, run_recipe
    from herd.recipe.spec import read_recipe

    recipe = read_recipe(a.recipe, run_dir=a.dir)
    planned = run_recipe(recipe, dry_run=a.dry_run, serve=a.serve, rerun=tuple(a.rerun))
    if a.dry_run:
        print(format_plan(recipe, planned))
        return
    print(format_done(recipe, planned), flush=True)
    if a.chat:
        from herd.recipe.commands import final_model

        if (model := final_model(recipe)) is None:
            raise HerdError(f"{recipe.path}: no stage made a model to chat with")
        print(f"\nchatting with the model the recipe made: {model}", flush=True)
        cmd_chat(parse(["chat", "--model", model, "--max-new-tokens", "48"]))
    if a.serve:
        argv = service_argv(planned)
        if argv is None:
            raise HerdError(f"{recipe.path}: --serve needs a serve stage ([stages.serve])")
        cmd_serve(parse(argv))


def cmd_ckpt_average(a: argparse.Namespace) -> None:
    from herd.formats.load import parse_dtype
    from herd.train.average import average_to, format_average

    t0 = time.perf_counter()
    paths = [Path(p) for p in a.checkpoints]
    args = average_to(paths, Path(a.out), to=a.to, dtype=parse_dtype(a.dtype) if a.dtype else None)
    print(format_average(paths, a.out, a.to, args, time.perf_counter() - t0))


# ---------------------------------------------------------------------------------------------
# scaling / plan


def cmd_scaling_sweep(a: argparse.Namespace) -> None:
    from herd.config import load
    from herd.scaling.sweep import format_sweep_done, format_sweep_start, run_sweep

    cfg = load("scaling", a.config, a.overrides)
    print(format_sweep_start(cfg))
    t0 = time.perf_counter()
    manifest = run_sweep(cfg, progress=sys.stderr.isatty())
    print(format_sweep_done(cfg, manifest, time.perf_counter() - t0))


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
    from herd.parallel.info import format_model_info, format_presets, model_info

    if a.name is None:
        print(format_presets(as_json=a.json))
        return
    layout = {k: getattr(a, k) for k in _LAYOUT_FLAGS}
    info = model_info(a.name, seq_len=a.seq_len, reshard_after_forward=not a.no_reshard_after_forward, **layout)
    print(json.dumps(info) if a.json else format_model_info(info))


_LAYOUT_FLAGS = (
    "tp", "pp", "dp_shard", "dp_replicate", "gpus", "micro_batch", "activation_checkpoint", "attention_scores",
    "peak_tflops", "mfu", "batch_tokens", "virtual_stages", "train_tokens",
)  # fmt: skip
"""`herd model info`'s flags that are `parallel_plan`'s keywords as they are."""


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herd", description="The Llama 3 recipe: train, convert, run models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument(
        UNSAFE_NO_SANDBOX,
        action="store_true",
        help="run model-written code without the bubblewrap sandbox where it is unavailable (NOT isolated)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="continue a prompt")
    p.add_argument("--prompt", "-p", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as one user turn of the chat template")
    p.add_argument("--json", action="store_true", help='print {"text", "tokens", ...} as JSON')
    _sampling_args(p, max_new_tokens=128)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="multi-turn chat (reads lines from stdin when piped)")
    p.add_argument("--system", default=None, help="system message")
    guard_help = "input and output shields: a Llama Guard checkpoint, or herd's own guard without MODEL"
    p.add_argument("--guard", nargs="?", const="", default=None, metavar="MODEL", help=guard_help)
    _sampling_args(p, max_new_tokens=512)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="an OpenAI-compatible API server (chat, completions, tools, streaming)")
    p.add_argument("--model", "-m", default=None, help="embedded model name, HF/Meta directory or .gguf file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", default="float32", help="weights: float32 (default) or bfloat16")
    p.add_argument("--quant", default="none", help="weight-only quantization: none (default), int8 or int4")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoding together (default 8)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those; more get 429")
    p.add_argument("--max-seq-len", type=int, default=2048, help="context per request (default 2048)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds before a request is cancelled")
    p.add_argument("--api-key", default=None, help="require this bearer key (or set HERD_API_KEY)")
    p.add_argument("--served-model-name", default=None, help="the model id clients use (default: --model's name)")
    p.add_argument(
        "--builtin-tools",
        action="store_true",
        help="run the built-in tools (code interpreter, search, Wolfram Alpha) server-side for requests without tools",
    )
    p.add_argument("--index", default=None, help="with --builtin-tools: offline search index (`herd index build`)")
    p.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")
    p.add_argument("--guard", nargs="?", const="", default=None, metavar="MODEL", help=guard_help)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("agent", help="answer with the built-in tools (code interpreter, search, Wolfram Alpha)")
    p.add_argument("--prompt", "-p", required=True)
    p.add_argument("--system", default=None, help="system message (after the tool instructions)")
    p.add_argument("--index", default=None, help="offline search index from `herd index build` (without BRAVE_API_KEY)")
    p.add_argument("--max-steps", type=int, default=6, help="tool calls before the model must answer (default 6)")
    p.add_argument("--no-code", action="store_true", help="do not offer the code interpreter")
    _sampling_args(p, max_new_tokens=256)
    p.set_defaults(func=cmd_agent)

    add_guard_parser(sub)
    add_codeshield_parser(sub)
    add_safety_parser(sub)
    add_eval_parser(sub)

    p = sub.add_parser("index", help="the offline search index of agents")
    isub = p.add_subparsers(dest="index_command", required=True)
    q = isub.add_parser("build", help="index jsonl documents (e.g. `herd data curate` output) into SQLite FTS5")
    q.add_argument("inputs", nargs="+", help=".jsonl files or directories (searched for *.jsonl)")
    q.add_argument("--out", "-o", required=True, help="the index file to write, e.g. runs/index.sqlite")
    q.add_argument("--text-field", default="text", help="the documents' text field (default text)")
    q.set_defaults(func=cmd_index_build)

    p = sub.add_parser("convert", help="convert a checkpoint between Meta, HF and GGUF formats")
    p.add_argument("src", help="Meta or HF directory, .gguf file, or embedded model name")
    p.add_argument("dst", help="new directory to write (for --to gguf: new .gguf file)")
    p.add_argument("--to", required=True, choices=["hf", "meta", "gguf"])
    p.add_argument(
        "--dtype", default=None, help="float32, float16 or bfloat16 (default: as stored; GGUF reads and writes float32)"
    )
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
    q.add_argument(
        "--config",
        help="TOML file with [job] and [curate] (see configs/data/curate.toml); --section.key=value overrides it",
    )
    q.add_argument("--input", "-i", nargs="+")
    q.add_argument("--output", "-o", help="the run directory (job.dump_folder); documents go to OUTPUT/kept")
    q.add_argument("--tasks", type=int)
    q.add_argument("--workers", type=int)
    q.add_argument("--no-quality", action="store_true", help="skip the LLM-judged quality classifier")
    q.add_argument("--verbose", action="store_true", help="show datatrove's per-task logs")
    q.set_defaults(func=cmd_data_curate, accepts_overrides=True)
    q = dsub.add_parser("pack", help="tokenize jsonl documents into shards for training")
    q.add_argument("--config", help="TOML file with [job] and [pack]; --section.key=value overrides it")
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
    p.add_argument("--config", help="TOML config (see configs/posttrain/sft.toml); --section.key=value overrides it")
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

    p = sub.add_parser("run", help="run a whole recipe (curate -> ... -> export) as one resumable job")
    p.add_argument("recipe", help="a recipe TOML file (recipes/tiny.toml, recipes/llama3-8b.toml, ...)")
    p.add_argument("--dir", default=None, help="run directory (default: the recipe's recipe.dir)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (what runs, is reused or resumes, why, "
                   "expected time and memory per stage) and run nothing")  # fmt: skip
    p.add_argument("--rerun", action="append", default=[], metavar="STAGE",
                   help="run STAGE (and what reads it) again even though its key is unchanged")  # fmt: skip
    p.add_argument("--chat", action="store_true", help="end by chatting with the model the recipe made")
    p.add_argument("--serve", action="store_true", help="end by serving it (the recipe's serve stage)")
    p.set_defaults(func=cmd_run)

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


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The namespace `herd ARGV` runs with (its `func` does the work); bad arguments exit as argparse does."""
    parser = build_parser()
    argv = list(argv)
    if UNSAFE_NO_SANDBOX in argv:  # accepted anywhere on the line, as it is about every command that runs code
        from herd.tools.sandbox import allow_unsandboxed

        allow_unsandboxed(True)
        argv = [x for x in argv if x != UNSAFE_NO_SANDBOX]
    a, extra = parser.parse_known_args(argv)
    # Config-driven commands take `--section.key=value` overrides; anything else unknown is an error.
    a.overrides = (
        [x for x in extra if x.startswith("--") and "=" in x] if getattr(a, "accepts_overrides", False) else []
    )
    if getattr(a, "passthrough", False):  # `herd eval harness`: the rest of the line is lm-eval's
        a.passthrough_args, extra = extra, []
    if unknown := [x for x in extra if x not in a.overrides]:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    func: Callable[[argparse.Namespace], None] = a.func
    try:
        func(a)
    except HerdError as e:
        if a.debug:
            raise
        print(f"herd: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a write the disk refused outside herd's writers (a library's own files)
        from herd.fileio import refused_write

        if a.debug or (refused := refused_write(e)) is None:
            raise
        print(f"herd: error: {refused.filename or 'a write'}: cannot write: {refused.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
