"""`herd data curate`: the Llama 3 pretraining-data pipeline as datatrove stages, resumable and deterministic.

Stages, each a datatrove pipeline run over `tasks` shards by `workers` processes, into <out> = job.dump_folder:
  1. clean:   read -> HTML extraction -> URL filter -> language ID -> PII scrubbing       -> <out>/stages/clean
  2. dedup:   URL, exact, MinHash (document), line and (optionally) semantic dedup        -> <out>/stages/dedup
  3. quality: Gopher/C4 heuristics, repetition, dirty words, token-distribution KL,
              domain tagging, model-based quality                                          -> <out>/kept
Models that need data (the token-distribution reference, the domain classifier, the quality classifier trained on
an LLM judge's labels) are fitted once, before stage 3, on a fixed sample of stage 2's output, and saved under
<out>/models. Every dropped document goes to <out>/removed/<step>/ with its reason.

Re-running with the same config resumes: completed tasks (datatrove completion markers) and fitted models are
reused, and a crashed task is redone from the start, overwriting its own output files, so nothing is duplicated
or lost. The output does not depend on `workers`; it is fixed by the inputs, the config and `tasks`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from herd.config import CurateSection, to_toml
from herd.errors import DataError
from herd.fileio import atomic_file

# ---------------------------------------------------------------------------------------------
# Steps


def looks_like_code_or_math(text: str) -> bool:
    """Syntax evidence of source code or formulas (herd.data.quality.seed_domain_label). Prose rules and language
    ID are wrong on such text; symbol soup and encoded blobs also score as "code or math" and must not pass."""
    from herd.data.quality import seed_domain_label

    head = text[:5000]
    letters = sum(ch.isalpha() for ch in head) / max(1, len(head))
    # ... and code and formulas are many short tokens: a base64 blob is one endless "word" of letters and +/=.
    words = head.split()
    short_words = len(words) >= 20 and sum(map(len, words)) / len(words) <= 12
    return letters >= 0.3 and short_words and seed_domain_label(text, "en") in ("code", "math")


class ExemptCodeAndMath(BaseFilter):
    """Run `inner` (language ID) on every document, to tag it, but never drop one that looks like code or
    mathematics: lid.176 is trained on prose and gives source code and formulas low confidence."""

    def __init__(self, inner: BaseFilter, *, exclusion_writer: Any = None) -> None:
        self.name = inner.name  # before super().__init__, which names the step's stats
        super().__init__(exclusion_writer=exclusion_writer)
        self.inner = inner

    def filter(self, doc: Any) -> bool | tuple[bool, str]:
        result = self.inner.filter(doc)
        if result is not True and not (isinstance(result, tuple) and result[0]) and looks_like_code_or_math(doc.text):
            self.stat_update("code_or_math_exempt")
            return True
        return result


class ProseOnly(BaseFilter):
    """Apply the prose filter `inner` to documents in `languages` that do not look like code or mathematics.

    The exemption rests on the text's own syntax, not on the domain classifier's tag, which a base64 blob or a
    number dump can fool into "math" and so past every rule written to catch it."""

    def __init__(self, inner: BaseFilter, languages: list[str], *, exclusion_writer: Any = None) -> None:
        self.name = inner.name  # before super().__init__, which names the step's stats
        super().__init__(exclusion_writer=exclusion_writer)
        self.inner, self.languages = inner, set(languages)

    def filter(self, doc: Any) -> bool | tuple[bool, str]:
        if self.languages and doc.metadata.get("language") not in self.languages:
            self.stat_update("other_language_skipped")
            return True
        if looks_like_code_or_math(doc.text):
            self.stat_update("code_or_math_skipped")
            return True
        return self.inner.filter(doc)


def _writer(path: Path) -> JsonlWriter:
    # Uncompressed, one file per task: a rerun of a task overwrites exactly its own file.
    return JsonlWriter(str(path), compression=None)


def _reader(path: Path) -> JsonlReader:
    # No file_path in the metadata: intermediate paths would make outputs differ between output directories.
    return JsonlReader(str(path), compression=None, glob_pattern="*.jsonl", add_file_path=False)


class Curator:
    """Builds and runs the stages for one config; `run()` returns the report dict."""

    def __init__(
        self, cfg: CurateSection, output: str | Path, *, log: Callable[[str], None] = print, verbose: bool = False
    ) -> None:
        if not cfg.input:
            raise DataError("no input given: set curate.input or pass --input DIR")
        if cfg.executor not in ("local", "ray"):
            raise DataError(f"curate.executor must be 'local' or 'ray', got {cfg.executor!r}")
        if cfg.tasks < 1 or cfg.workers < 1:
            raise DataError(f"tasks and workers must be >= 1, got tasks={cfg.tasks} workers={cfg.workers}")
        self.cfg, self.log, self.verbose = cfg, log, verbose
        self.out = Path(output)
        self.removed = self.out / "removed"
        self.stage_dirs = {name: self.out / "stages" / name for name in ("clean", "dedup")}
        self.kept = self.out / "kept"
        self.models = self.out / "models"
        self.timings: dict[str, float] = {}

    # -- running ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from herd.data.readers import input_files

        files = input_files(self.cfg.input)
        self._claim_output(files)
        start = time.perf_counter()
        self._execute("clean", self._clean_stage(files))
        for i, stage in enumerate(self._dedup_stages()):
            self._execute(f"dedup_{i:02d}", stage.pipeline, tasks=stage.tasks)
        self._fit_models()
        self._execute("quality", self._quality_stage())
        self.timings["total"] = time.perf_counter() - start
        from herd.data.evaluate import build_report

        return build_report(self, files)

    def _claim_output(self, files: list[Path]) -> None:
        """Refuse an output directory made by another config or other inputs: a resume must be a true resume."""
        self.out.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f}:{f.stat().st_size}:{int(f.stat().st_mtime)}\n".encode())
        # How the work is spread (workers, executor) does not change the output, so a resume may change it.
        fixed = dataclasses.replace(self.cfg, workers=1, executor="local", ray_address=None)
        stamp = to_toml(fixed) + f'inputs_digest = "{digest.hexdigest()}"\n'
        path = self.out / "config.toml"
        if path.exists() and path.read_text() != stamp:
            raise DataError(
                f"{self.out}: made by another config or other inputs (see its config.toml); use a new output"
            )
        with atomic_file(path, "w") as out:  # a crash mid-write must not leave a stamp that refuses the resume
            out.write(stamp)

    def _execute(self, name: str, pipeline: list[PipelineStep], tasks: int | None = None) -> None:
        t = time.perf_counter()
        n = tasks or self.cfg.tasks
        kwargs = dict(
            pipeline=pipeline,
            tasks=n,
            workers=min(self.cfg.workers, n),
            logging_dir=str(self.out / "logs" / name),
            skip_completed=True,
        )
        if self.cfg.executor == "ray":
            import ray
            from datatrove.executor.ray import RayPipelineExecutor

            if not ray.is_initialized():
                ray.init(address=self.cfg.ray_address, include_dashboard=False, log_to_driver=self.verbose)
            executor = RayPipelineExecutor(**kwargs)
        else:
            executor = LocalPipelineExecutor(**kwargs)
        with contextlib.nullcontext() if self.verbose else stderr_to(self.out / "logs" / f"{name}.console.log"):
            executor.run()
        self.timings[name] = time.perf_counter() - t
        self.log(f"  {name:<10} {self.timings[name]:6.1f}s  ({n} task{'s' if n > 1 else ''})")

    # -- stages -------------------------------------------------------------------------------------

    def _clean_stage(self, files: list[Path]) -> list[PipelineStep]:
        from herd.data.extract import HtmlExtractor
        from herd.data.filters import LanguageId, PiiScrubber, UrlFilter, read_list
        from herd.data.readers import RawReader

        cfg = self.cfg
        steps: list[PipelineStep] = [
            RawReader(
                files,
                text_field=cfg.text_field,
                id_field=cfg.id_field,
                max_doc_bytes=cfg.max_doc_bytes,
                errors_dir=self.out / "errors",
            )
        ]
        if cfg.extract:
            steps.append(HtmlExtractor(exclusion_writer=_writer(self.removed / "extract")))
        if cfg.url.enabled:
            url = cfg.url  # a list left unset (None) makes UrlFilter use its default list
            steps.append(
                UrlFilter(
                    blocked_domains=None if url.blocklist is None else read_list(url.blocklist),
                    allowed_domains=None if url.allowlist is None else read_list(url.allowlist),
                    banned_substrings=None if url.banned_substrings is None else read_list(url.banned_substrings),
                    exclusion_writer=_writer(self.removed / "url"),
                )
            )
        if cfg.language.enabled:
            lang = cfg.language
            lid = LanguageId(languages=lang.languages or None, min_score=lang.min_score, thresholds=lang.thresholds)
            steps.append(ExemptCodeAndMath(lid, exclusion_writer=_writer(self.removed / "language")))
        if cfg.pii:
            steps.append(PiiScrubber())
        steps.append(_writer(self.stage_dirs["clean"]))
        return steps

    def _dedup_stages(self) -> list[Any]:
        from herd.data.dedup import (
            DedupKind,
            ExactDedup,
            LineDedup,
            MinHashDedup,
            SemanticDedup,
            UrlDedup,
            dedup_stages,
        )

        d, work = self.cfg.dedup, self.out / "dedup_work"
        kinds: list[DedupKind] = []
        if d.url:
            kinds.append(UrlDedup(work, exclusion_writer=_writer(self.removed / "dedup_url")))
        if d.exact:
            kinds.append(ExactDedup(work, exclusion_writer=_writer(self.removed / "dedup_exact")))
        if d.minhash:
            kinds.append(MinHashDedup(work, min_jaccard=d.minhash_min_jaccard,
                                      exclusion_writer=_writer(self.removed / "dedup_minhash")))  # fmt: skip
        if d.lines:
            kinds.append(LineDedup(work, threshold=d.line_threshold, num_buckets=d.line_buckets,
                                   exclusion_writer=_writer(self.removed / "dedup_lines")))  # fmt: skip
        if d.semantic:
            kinds.append(SemanticDedup(work, threshold=d.semantic_threshold,
                                       exclusion_writer=_writer(self.removed / "dedup_semantic")))  # fmt: skip
        return dedup_stages([_reader(self.stage_dirs["clean"])], kinds, [_writer(self.stage_dirs["dedup"])])

    def _quality_stage(self) -> list[PipelineStep]:
        from herd.data.filters import (
            DirtyWordFilter,
            QualityHeuristicsFilter,
            RepetitionFilter,
            TokenDistributionFilter,
        )
        from herd.data.quality import DomainTagger, QualityScorer

        h, q = self.cfg.heuristics, self.cfg.quality
        steps: list[PipelineStep] = [_reader(self.stage_dirs["dedup"])]
        if q.domain:
            steps.append(DomainTagger(self.models / "domain.npz"))
        if h.enabled:
            steps.append(ProseOnly(QualityHeuristicsFilter(skip_domains=()), h.languages,
                                   exclusion_writer=_writer(self.removed / "heuristics")))  # fmt: skip
            steps.append(ProseOnly(RepetitionFilter(skip_domains=()), h.languages,
                                   exclusion_writer=_writer(self.removed / "repetition")))  # fmt: skip
        if h.dirty_words:
            steps.append(DirtyWordFilter(max_fraction=h.dirty_max_fraction,
                                         exclusion_writer=_writer(self.removed / "dirty_words")))  # fmt: skip
        if h.token_kl:
            kl = TokenDistributionFilter.load(self.models / "token_reference.json")
            steps.append(ProseOnly(kl, h.languages, exclusion_writer=_writer(self.removed / "token_kl")))
        if q.enabled:
            path = q.classifier or self.models / "quality.npz"
            steps.append(QualityScorer(path, threshold=q.threshold, exclusion_writer=_writer(self.removed / "quality")))
        steps.append(_writer(self.kept))
        return steps

    # -- models fitted on a sample -------------------------------------------------------------------

    def sample(self, n: int) -> list[dict[str, Any]]:
        """The first `n` documents of stage 2's output, in file then line order (independent of workers)."""
        out: list[dict[str, Any]] = []
        for path in sorted(self.stage_dirs["dedup"].glob("*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    out.append(json.loads(line))
                    if len(out) >= n:
                        return out
        return out

    def _fit_models(self) -> None:
        from herd.data.filters import TokenDistributionFilter
        from herd.data.quality import LLMJudge, label_and_train_quality, load_judge, train_domain_classifier

        h, q = self.cfg.heuristics, self.cfg.quality
        self.models.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        docs = self.sample(self.cfg.fit_sample)
        if not docs:
            raise DataError("no documents survived cleaning and dedup: nothing to fit the filters on")
        langs = set(h.languages)
        ref = self.models / "token_reference.json"
        if h.token_kl and not ref.exists():
            # The reference is the distribution of text the rule-based filters accept: fitted on everything, its
            # outlier quantile would sit among the junk it is meant to catch.
            from datatrove.data import Document

            from herd.data.filters import QualityHeuristicsFilter, RepetitionFilter

            rules = (QualityHeuristicsFilter(skip_domains=()), RepetitionFilter(skip_domains=()))
            texts = [
                d["text"]
                for d in docs
                if (not langs or d["metadata"].get("language") in langs)
                and not looks_like_code_or_math(d["text"])
                and all(r.filter(Document(text=d["text"], id=d["id"])) is True for r in rules)
            ]
            if len(texts) < 20:
                raise DataError(
                    f"only {len(texts)} documents in {sorted(langs)} to fit the token-distribution reference "
                    "(need 20); set curate.heuristics.token_kl=false or add data"
                )
            TokenDistributionFilter().fit(texts, quantile=h.token_kl_quantile).save(ref)
        domain = self.models / "domain.npz"
        if q.domain and not domain.exists():
            texts = [d["text"] for d in docs]
            languages = [d["metadata"].get("language") for d in docs]
            try:
                train_domain_classifier(texts, languages=languages).save(domain)
            except DataError as e:
                raise DataError(
                    f"domain classifier: {e}; set curate.quality.domain=false for one-domain data"
                ) from None
        quality = self.models / "quality.npz"
        if q.enabled and q.classifier is None and not quality.exists():
            self.log(f"  labelling {q.judge_sample} documents with the judge {q.judge} ({q.judge_dtype}, "
                     f"quant {q.judge_quant}) ...")  # fmt: skip
            judge = LLMJudge(load_judge(q.judge, dtype=q.judge_dtype, quant=q.judge_quant))
            sample = [d["text"] for d in docs[:: max(1, len(docs) // q.judge_sample)][: q.judge_sample]]
            classifier, report = label_and_train_quality(sample, judge)
            classifier.save(quality)
            with atomic_file(self.models / "quality_training.json", "w") as f:
                json.dump(dataclasses.asdict(report), f, indent=2)
        self.timings["fit"] = time.perf_counter() - t
        self.log(f"  {'fit':<10} {self.timings['fit']:6.1f}s")


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 (datatrove's per-task console logs, worker processes included) to a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
