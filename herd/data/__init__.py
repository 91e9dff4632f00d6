"""Data curation: raw text -> kept documents -> packed token shards, as in the Llama 3 paper (section 3.1).

Conventions shared by every module here:
- Steps are datatrove pipeline steps (`datatrove.pipeline.base.PipelineStep`, or `BaseFilter` for filters whose
  `filter(doc)` returns True to keep or `(False, reason)` to drop). One small class per step, a `name`, counters
  through `self.stat_update(...)`, a short drop reason. The same steps run under datatrove's local executor here
  and its Ray or Slurm executors on a cluster.
- Documents are `datatrove.data.Document(text, id, metadata)`. Steps that learn something about a document put it
  in `doc.metadata` under their own key (`language`, `language_score`, `domain`, `quality_score`, ...).
- Documents of the embedded corpus carry their ground truth in `doc.metadata["truth"]` (see corpus.py), so each
  step's precision and recall can be measured. Steps never read it.
- Steps are deterministic: the same documents in the same order give the same output.
"""
