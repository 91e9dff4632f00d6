"""Chaining dedup kinds into executor stages and running them, under datatrove's executor or in this process.

`dedup_stages` chains several kinds: the signature stage of one kind reads the documents through the filters of
the kinds before it, so no intermediate copy of the corpus is written. `run_local` runs the stages under datatrove's
LocalPipelineExecutor, `run_in_process` runs the same steps here, task by task, for small runs and tests.
`DocumentList` reads documents held in memory, and `dedup_documents` dedups such a list in one call.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.typeshelper import StatHints

from herd.data.dedup.stages import DedupKind, Stage


def dedup_stages(
    input_steps: Sequence[PipelineStep], kinds: Sequence[DedupKind], output_steps: Sequence[PipelineStep] = ()
) -> list[Stage]:
    """The stages that run `kinds` one after another on the documents `input_steps` yield (a reader, filters).

    Returns 2 * len(kinds) + 1 stages; the last one yields the deduplicated documents into `output_steps`.
    Every stage that reads documents must run with the same task count.
    """
    stages: list[Stage] = []
    for i, kind in enumerate(kinds):
        earlier = [k.filter_step(write_exclusions=False) for k in kinds[:i]]
        stages.append(Stage([*copy.deepcopy(list(input_steps)), *earlier, kind.signature_step()]))
        stages.append(kind.merge_stage())
    filters = [k.filter_step() for k in kinds]
    stages.append(Stage([*copy.deepcopy(list(input_steps)), *filters, *copy.deepcopy(list(output_steps))]))
    return stages


def run_local(
    stages: Sequence[Stage], *, tasks: int, workers: int, logging_dir: str | Path, skip_completed: bool = True
) -> None:
    """Runs the stages one after another with datatrove's LocalPipelineExecutor (logs under logging_dir/stage_NN).

    With skip_completed, a rerun resumes after the last completed task of a crashed run; a new run needs a fresh
    logging_dir and work_dir.
    """
    from datatrove.executor import LocalPipelineExecutor

    for i, stage in enumerate(stages):
        n = stage.tasks or tasks
        LocalPipelineExecutor(
            pipeline=stage.pipeline,
            tasks=n,
            workers=min(workers, n),
            logging_dir=f"{logging_dir}/stage_{i:02d}",
            skip_completed=skip_completed,
        ).run()


def run_in_process(stages: Sequence[Stage], *, tasks: int = 1) -> list[Document]:
    """Runs the stages in this process, task after task; returns the last stage's documents in task order.

    The same steps as `run_local`, for small runs and tests; `tasks` emulates that many shards.
    """
    out: list[Document] = []
    for i, stage in enumerate(stages):
        n = stage.tasks or tasks
        for rank in range(n):
            data: DocumentsPipeline = None
            for step in copy.deepcopy(stage.pipeline):
                data = step(data, rank, n)
            docs = list(data) if data is not None else []
            if i == len(stages) - 1:
                out.extend(docs)
    return out


class DocumentList(PipelineStep):
    """A reader over documents held in memory: task `rank` gets a contiguous slice, as copies (steps edit text)."""

    name = "documents"
    type = "📖 - READER"

    def __init__(self, documents: Sequence[Document]) -> None:
        super().__init__()
        self.documents = list(documents)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        n = len(self.documents)
        for doc in self.documents[rank * n // world_size : (rank + 1) * n // world_size]:
            self.stat_update(StatHints.total)
            yield Document(text=doc.text, id=doc.id, metadata=copy.deepcopy(doc.metadata))


def dedup_documents(documents: Sequence[Document], kinds: Sequence[DedupKind], *, tasks: int = 1) -> list[Document]:
    """In-process dedup of documents in memory (the same stages as a distributed run); returns the kept copies."""
    return run_in_process(dedup_stages([DocumentList(documents)], kinds), tasks=tasks)
