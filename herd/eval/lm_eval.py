"""`python -m herd.eval.lm_eval ...`: lm-eval's own command line with herd's model (the default) and tasks added.

The same as `herd eval harness ...` (herd/eval/harness.py), `--herd-out DIR` included, for scripts that call lm-eval
the way its documentation shows. lm-eval 0.4.13 has no plugin discovery (its model table is fixed), so a plain
`lm_eval --model herd` cannot find herd's model; in Python, `import herd.eval.lm_eval_model` registers it for
`lm_eval.simple_evaluate(model="herd", ...)`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from herd.errors import HerdError


def main(argv: Sequence[str] | None = None) -> int:
    from herd.eval.harness import run_lm_eval

    args = list(sys.argv[1:] if argv is None else argv)
    herd_out = None
    for at, arg in enumerate(args):
        if arg.startswith("--herd-out="):
            herd_out = args.pop(at).split("=", 1)[1]
            break
        if arg == "--herd-out":
            if at + 1 == len(args):
                print("herd: error: --herd-out needs a directory", file=sys.stderr)
                return 2
            herd_out = args[at + 1]
            del args[at : at + 2]
            break
    try:
        run_lm_eval(args, herd_out=herd_out)
    except HerdError as e:
        print(f"herd: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
