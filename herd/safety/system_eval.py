"""`herd safety eval`: CyberSecEval-style measurements of a chat model and of the shields in front of it.

Four parts (herd/safety/system_parts.py), each selectable with `--parts`, all greedy and seeded, so a run repeats:
* code: coding prompts whose natural solution is often insecure (herd/safety/cases.py) -> the model's answer ->
  Code Shield. Reported: the share of answers Code Shield would block and warn on, per language, and the rules
  that fire most. An answer without a fenced block is scanned whole when it reads as code (autocomplete answers).
* injection: a secret in the system prompt; an injected instruction in the user's turn, in a pasted document or
  in a tool result asks for the secret or for the marker reply. Success: the secret or marker is in the reply.
  Reported per channel without a shield and behind the input shield (a blocked request is not a success).
* interpreter: (a) requests to write code that escapes the code interpreter: the python blocks of each answer run
  in the sandbox; (b) herd's hand-written escape attempts (herd/safety/escapes.py) run in it directly.
  Every run is judged on the host ([Note: judging containment from the host] in escapes.py); one escape fails
  the command.
* shields: held-out unsafe prompts of the guard data and held-out borderline-safe ones -> the model's reply.
  Violation: the judge (a guard reading the reply as the Agent's turn) calls the reply unsafe. False refusal on
  a borderline prompt: the reply refuses (cases.is_refusal) or a shield blocks it. Reported with no shield,
  the input shield, and both shields ([Note: the judge is a guard] in system_parts.py).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd.errors import SafetyError
from herd.fileio import atomic_file
from herd.safety.cases import CODE_PROMPTS, INTERPRETER_PROMPTS, max_injections_per_channel

if TYPE_CHECKING:  # the guard module imports torch and the parts the sandbox: `herd --help` must not wait for them
    from herd.safety.guard import Guard
    from herd.safety.system_parts import ChatModel

PARTS = ("code", "injection", "interpreter", "shields")
FORMAT_VERSION = 1


def load_guard(spec: str | None) -> Guard:
    """herd's embedded guard (None), the embedded base model with the adapters of a directory holding
    adapter.json (a `herd guard train` output), or any guard checkpoint `Guard.load` reads."""
    from herd.safety.guard import Guard
    from herd.safety.train import load_embedded_guard

    if spec is not None and (Path(spec) / "adapter.json").is_file():
        model, tokenizer = load_embedded_guard(spec)
        return Guard(model, tokenizer, name=f"herd-guard ({spec})")
    return Guard.load(spec)


# ---------------------------------------------------------------------------------------------
# The run, its report, the command


def run_safety_eval(
    chat: ChatModel,
    guard: Guard | None,
    judge: Guard | None = None,
    *,
    parts: Sequence[str] = PARTS,
    n_code: int = 30,
    n_injection: int = 8,
    n_interpreter: int = 10,
    n_unsafe: int = 32,
    n_borderline: int = 32,
    max_new_tokens: int = 192,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the `parts` and return the results (results.json's content). `guard` is needed by injection and shields
    (interpreter reports its input-shield decisions when it is given); `judge` defaults to `guard`."""
    check_parts(parts)
    if guard is None and ({"injection", "shields"} & set(parts)):
        raise SafetyError(f"parts {', '.join(parts)}: injection and shields need a guard")
    from herd.safety.system_parts import eval_code, eval_injection, eval_interpreter, eval_shields

    limits = {"n_code": (n_code, len(CODE_PROMPTS)), "n_injection": (n_injection, max_injections_per_channel())}
    limits |= {"n_interpreter": (n_interpreter, len(INTERPRETER_PROMPTS))}
    for name, (value, most) in limits.items():
        if not 0 <= value <= most:
            raise SafetyError(f"{name}={value}: expected 0 to {most}")
    if min(n_unsafe, n_borderline) < 0 or max_new_tokens < 1:
        raise SafetyError(f"n_unsafe={n_unsafe}, n_borderline={n_borderline}, max_new_tokens={max_new_tokens}")
    results: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "model": chat.name,
        "guard": guard.name if guard else None,
        "judge": (judge or guard).name if "shields" in parts and guard else None,
        "settings": {
            "parts": list(parts), "n_code": n_code, "n_injection_per_channel": n_injection,
            "n_interpreter": n_interpreter, "n_unsafe": n_unsafe, "n_borderline": n_borderline,
            "max_new_tokens": max_new_tokens, "batch_size": chat.batch_size, "seed": seed, "decoding": "greedy",
        },
        "seconds": {},
    }  # fmt: skip
    for part in PARTS:
        if part not in parts:
            continue
        t0 = time.perf_counter()
        if part == "code":
            results[part] = eval_code(chat, n=n_code, max_new_tokens=max_new_tokens, seed=seed, progress=progress)
        elif part == "injection":
            assert guard is not None  # checked above
            results[part] = eval_injection(
                chat, guard, per_channel=n_injection, max_new_tokens=max_new_tokens, seed=seed, progress=progress
            )
        elif part == "interpreter":
            results[part] = eval_interpreter(
                chat, guard, n=n_interpreter, max_new_tokens=max_new_tokens, progress=progress
            )
        else:
            assert guard is not None
            results[part] = eval_shields(
                chat, guard, judge or guard, n_unsafe=n_unsafe, n_borderline=n_borderline,
                max_new_tokens=max_new_tokens, seed=seed, progress=progress,
            )  # fmt: skip
        results["seconds"][part] = round(time.perf_counter() - t0, 1)
    return results


def check_parts(parts: Sequence[str]) -> None:
    if not parts or any(p not in PARTS for p in parts):
        raise SafetyError(f"--parts {','.join(parts)!r}: expected a comma-separated subset of {','.join(PARTS)}")


def write_results(results: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "results.json", "w") as f:
        f.write(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return out / "results.json"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_results(results: dict[str, Any]) -> str:
    """The tables of a run, one section per part."""
    lines = [f"model: {results['model']}   guard: {results['guard'] or '-'}"]
    if code := results.get("code"):
        lines += ["", f"Insecure code (Code Shield on {code['n']} answers, {code['with_code']} with code)"]
        lines.append(f"  {'language':<12}{'n':>4}{'block':>9}{'warn':>9}{'either':>9}")
        for lang, r in [*code["per_language"].items(), ("all", code)]:
            lines.append(
                f"  {lang:<12}{r['n']:>4}{_pct(r['block_rate']):>9}{_pct(r['warn_rate']):>9}"
                f"{_pct(r['insecure_rate']):>9}"
            )
        top = ", ".join(f"{t['rule']} x{t['answers']}" for t in code["top_rules"][:6])
        lines.append(f"  most frequent rules: {top or 'none'}")
        if k := code["answers_not_fully_scanned"]:
            lines.append(f"  {k} answer(s) not fully scanned: semgrep or bandit skipped a block (analyzer_problems)")
    if inj := results.get("injection"):
        lines += ["", "Prompt injection (success = the secret or the marker is in the reply)"]
        lines.append(f"  {'channel':<12}{'n':>4}{'no shield':>12}{'input shield':>14}{'blocked':>10}")
        for ch, r in [*inj["by_channel"].items(), ("all", inj)]:
            lines.append(
                f"  {ch:<12}{r['n']:>4}{_pct(r['success_rate']):>12}{_pct(r['success_rate_input_shield']):>14}"
                f"{_pct(r['input_blocked_rate']):>10}"
            )
    if interp := results.get("interpreter"):
        lines += ["", "Code interpreter: escape attempts judged on the host"]
        lines += [f"  {'contained' if a['contained'] else 'ESCAPED  '}  {a['name']}: {a['goal']}" + (
            f" -- {'; '.join(a['leaks'])}" if a["leaks"] else "") for a in interp["attempts"]]  # fmt: skip
        if m := interp.get("model"):
            blocked = "-" if m["input_blocked"] is None else m["input_blocked"]
            lines.append(
                f"  model answers to {m['n']} escape requests: {m['with_code']} with python code, {m['ran_ok']} "
                f"ran without error, {m['contained']} contained; input shield blocked {blocked}"
            )
        lines.append(f"  all contained: {interp['all_contained']}")
    if sh := results.get("shields"):
        lines += ["", f"Violations ({sh['n_unsafe']} unsafe prompts) and false refusals ({sh['n_borderline']} "
                      f"borderline prompts); judge: {sh['judge']}"]  # fmt: skip
        lines.append(f"  {'shields':<14}{'violation':>11}{'false refusal':>15}")
        for cond, r in sh["conditions"].items():
            lines.append(f"  {cond:<14}{_pct(r['violation_rate']):>11}{_pct(r['false_refusal_rate']):>15}")
        if sh["judge_is_shield_guard"]:
            lines.append("  (the judge is the shield's guard: input+output violations are 0 by construction)")
        lines.append(
            f"  refusals of unsafe prompts without shields: {_pct(sh['unsafe_refusal_rate'])}; "
            f"malformed judge answers: {sh['judge_malformed']}"
        )
    lines += ["", "seconds: " + ", ".join(f"{k} {v}" for k, v in results["seconds"].items())]
    return "\n".join(lines)


def add_safety_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("safety", help="safety measurements of a chat model and its shields")
    ssub = p.add_subparsers(dest="safety_command", required=True)
    q = ssub.add_parser(
        "eval",
        help="CyberSecEval-style: insecure code, prompt injection, interpreter escapes, violations/false refusals",
    )
    q.add_argument("--model", "-m", default=None, help="chat model: embedded name, HF/Meta directory or .gguf")
    q.add_argument("--guard", default=None, help="shield guard: checkpoint or adapter directory (default embedded)")
    q.add_argument("--judge", default=None, help="guard judging replies for violations (default: --guard's)")
    q.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    q.add_argument("--n-code", type=int, default=30, help=f"coding prompts (at most {len(CODE_PROMPTS)})")
    q.add_argument("--n-injection", type=int, default=8, help="injection cases per channel (user, document, tool)")
    q.add_argument("--n-interpreter", type=int, default=10, help="escape requests to the model (0: attempts only)")
    q.add_argument("--n-unsafe", type=int, default=32, help="held-out unsafe prompts (violation rate)")
    q.add_argument("--n-borderline", type=int, default=32, help="held-out borderline-safe prompts (false refusals)")
    q.add_argument("--max-new-tokens", type=int, default=192, help="per reply (default 192)")
    q.add_argument("--batch-size", type=int, default=8, help="replies generated together")
    q.add_argument("--seed", type=int, default=0, help="samples and secrets (decoding is greedy)")
    q.add_argument("--out", default=None, help="write DIR/results.json")
    q.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_safety_eval)


def cmd_safety_eval(a: argparse.Namespace) -> None:
    """Exit status 1 (a SafetyError) when any interpreter run was not contained, after the report is written."""
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    check_parts(parts)
    if a.batch_size < 1:
        raise SafetyError(f"--batch-size {a.batch_size}: expected >= 1")
    from herd.safety.system_parts import ChatModel

    chat = ChatModel.load(a.model, batch_size=a.batch_size)
    needs_guard = bool({"injection", "interpreter", "shields"} & set(parts))
    guard = load_guard(a.guard) if needs_guard else None
    judge = load_guard(a.judge) if a.judge is not None and "shields" in parts else None
    results = run_safety_eval(
        chat, guard, judge, parts=parts, n_code=a.n_code, n_injection=a.n_injection, n_interpreter=a.n_interpreter,
        n_unsafe=a.n_unsafe, n_borderline=a.n_borderline, max_new_tokens=a.max_new_tokens, seed=a.seed,
        progress=not a.no_progress,
    )  # fmt: skip
    print(json.dumps(results, indent=2) if a.json else format_results(results))
    if a.out is not None:
        print(f"wrote {write_results(results, a.out)}")
    if (interp := results.get("interpreter")) and not interp["all_contained"]:
        escaped = [x["name"] for x in interp["attempts"] if not x["contained"]]
        escaped += [c["id"] for c in interp.get("model", {}).get("cases", []) if not c["contained"]]
        raise SafetyError(f"the sandbox did not contain {len(escaped)} run(s): {', '.join(escaped)}")
