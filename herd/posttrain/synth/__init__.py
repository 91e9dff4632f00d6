"""`herd synth`: post-training data a model can learn from and be measured on, every label checked.

- tool use (tools.py): dialogs whose calls were executed (code interpreter in the sandbox, search over a local
  index, custom JSON tools), results in the ipython role; the tool-call protocol itself is `herd.tools`;
- factuality (facts.py): questions from snippets of installed data, the model's answers sampled and judged
  against the snippet (knowledge probing); known -> its own correct answer kept, consistently wrong -> a refusal;
- verifiable tasks (tasks.py): arithmetic, formatting and extraction with exact checkers;
- run.py: `run_synth` (writes the files; its settings are herd/config's [synth]), `verifiable_reward` and
  `evaluate`.
"""

from herd.posttrain.synth.run import chat_format, evaluate, format_summary, run_synth, verifiable_reward

__all__ = ["chat_format", "evaluate", "format_summary", "run_synth", "verifiable_reward"]
