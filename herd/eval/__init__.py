"""Evaluation as Llama 3 was judged: HumanEval (sandboxed), the lm-eval harness, the 12-use-case pairwise
preference eval, 8-gram contamination against the training shards, and a report card over several models."""
