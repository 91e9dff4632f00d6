"""`herd data pack`: jsonl documents -> token shards per source, with a manifest. The trainer reads this.

Each document becomes [bos] + tokens + [eos] (as configured), grouped by its source (a field of the record or of
its `metadata`, e.g. "source" or "domain"), cut into shards of about `shard_tokens` tokens. The manifest records
the tokenizer's identity (kind, file hash, vocabulary size, special ids), every input file's hash, the settings,
and per source the documents, tokens and shards. Packing the same inputs with the same settings again is a
no-op; an output directory packed from something else is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from herd.config import PackSection
from herd.data.shards import write_shard
from herd.errors import DataError
from herd.fileio import atomic_dir
from herd.tokenizer import Tokenizer, load_tokenizer

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
PACK_VERSION = 1


def pack(cfg: PackSection, output: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Pack into the new directory `output` and return the manifest (the existing one when `output` is already up
    to date)."""
    files = input_files(cfg.input)
    tokenizer = load_tokenizer(None if cfg.tokenizer == "llama3" else cfg.tokenizer)
    identity = tokenizer_identity(cfg.tokenizer, tokenizer)
    inputs = [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files]
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("input", "mix", "mix_tokens")}
    key = {"version": PACK_VERSION, "tokenizer": identity, "inputs": inputs, "settings": settings}
    out = Path(output)
    if (out / MANIFEST).is_file():
        existing = json.loads((out / MANIFEST).read_text())
        if {k: existing.get(k) for k in key} == key:
            existing["up_to_date"] = True
            return _with_mix(existing, cfg)
        raise DataError(f"{out}: holds shards packed from other inputs or settings; choose a new --output")

    start = time.perf_counter()
    bos = [tokenizer.bos_id] if cfg.bos and tokenizer.bos_id is not None else []
    eos = [tokenizer.eos_id] if cfg.eos else []
    sources: dict[str, dict[str, Any]] = {}
    pending: dict[str, list[list[int]]] = {}
    pending_tokens: dict[str, int] = {}
    skipped: list[str] = []
    with atomic_dir(out, error=DataError) as tmp:
        dirs: dict[str, str] = {}  # source -> its shard directory
        taken: dict[str, str] = {}  # shard directory -> its source

        def flush(source: str) -> None:
            info = sources[source]
            if source not in dirs:
                dirs[source] = _source_dir(source, taken)
            name = f"{dirs[source]}/shard-{len(info['shards']):05d}.bin"
            (tmp / name).parent.mkdir(exist_ok=True)
            n = write_shard(tmp / name, pending[source], tokenizer.vocab_size)
            info["shards"].append({"path": name, "docs": len(pending[source]), "tokens": n})
            pending[source], pending_tokens[source] = [], 0

        for record, where in read_records(files, skipped, progress):
            text = record.get(cfg.text_field)
            if not isinstance(text, str):
                skipped.append(f"{where}: no string field {cfg.text_field!r}")
                continue
            meta = m if isinstance(m := record.get("metadata"), dict) else {}
            source = str(record.get(cfg.source_field, meta.get(cfg.source_field, cfg.default_source)))
            ids = bos + tokenizer.encode(text) + eos
            info = sources.setdefault(source, {"docs": 0, "tokens": 0, "bytes": 0, "shards": []})
            info["docs"] += 1
            info["tokens"] += len(ids)
            info["bytes"] += len(text.encode())
            pending.setdefault(source, []).append(ids)
            pending_tokens[source] = pending_tokens.get(source, 0) + len(ids)
            if pending_tokens[source] >= cfg.shard_tokens:
                flush(source)
        for source in sources:
            if pending.get(source):
                flush(source)
        if not sources:
            raise DataError(f"no documents found in {', '.join(cfg.input)}" + (f" ({skipped[0]})" if skipped else ""))
        manifest = {
            **key,
            "sources": sources,
            "total": {k: sum(s[k] for s in sources.values()) for k in ("docs", "tokens", "bytes")},
            "skipped": {"count": len(skipped), "first": skipped[:20]},
            "seconds": round(time.perf_counter() - start, 2),
        }
        # The shards are useless without their tokenizer: keep a copy beside them, which the trainer reads. A
        # tokenizer inside a model's GGUF file is left where it is rather than copying the weights along.
        files = tokenizer_files(cfg.tokenizer, tokenizer)
        if all(p.suffix != ".gguf" for p in files):
            (tmp / TOKENIZER_DIR).mkdir()
            for path in files:
                shutil.copyfile(path, tmp / TOKENIZER_DIR / path.name)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return _with_mix(manifest, cfg)


def _with_mix(manifest: dict[str, Any], cfg: PackSection) -> dict[str, Any]:
    if cfg.mix:
        from herd.data.mix import parse_weights, plan_mix

        tokens = {name: src["tokens"] for name, src in manifest["sources"].items()}
        manifest["mix"] = plan_mix(tokens, parse_weights(cfg.mix), cfg.mix_tokens or manifest["total"]["tokens"])
    return manifest


def format_pack(manifest: dict[str, Any], output: str | Path) -> str:
    """What `herd data pack` prints for `pack`'s manifest of `output`: the totals, one line per source (largest
    first), skipped records, and with a mix the tokens each source gives the training budget."""
    m = manifest
    if m.get("up_to_date"):
        lines = [f"{output} is up to date ({m['total']['tokens']:,} tokens); nothing to do"]
    else:
        lines = [
            f"packed {m['total']['docs']:,} documents, {m['total']['tokens']:,} tokens in {m['seconds']}s -> {output}"
        ]
    for name, src in sorted(m["sources"].items(), key=lambda kv: -kv[1]["tokens"]):
        share = src["tokens"] / m["total"]["tokens"]
        lines.append(
            f"  {name:<24}{src['docs']:>8} docs {src['tokens']:>12,} tokens  {share:6.1%}  {len(src['shards'])} shards"
        )
    if m["skipped"]["count"]:
        lines.append(f"skipped {m['skipped']['count']} records, e.g. {m['skipped']['first'][0]}")
    if "mix" in m:
        budget = sum(p["draw"] for p in m["mix"].values())
        lines.append(f"mix for {budget:,} training tokens:")
        for name, p in m["mix"].items():
            warn = "  <- repeats more than 4 times" if p["epochs"] > 4 else ""
            lines.append(
                f"  {name:<24}{p['weight']:>6.0%}  draw {p['draw']:>12,} of {p['tokens']:>12,}"
                f"  {p['epochs']:.2f} epochs{warn}"
            )
    return "\n".join(lines)


def tokenizer_files(spec: str, tokenizer: Tokenizer) -> list[Path]:
    """The files that make up the tokenizer `spec` names."""
    from herd.tokenizer import Llama3Tokenizer

    if isinstance(tokenizer, Llama3Tokenizer):
        return [Path(tokenizer.path)]
    path = Path(spec)
    return [path] if path.is_file() else sorted(p for p in path.glob("tokenizer*") if p.is_file())


def tokenizer_identity(spec: str, tokenizer: Tokenizer) -> dict[str, Any]:
    """What a trainer must match: the tokenizer's files (by hash), size and special ids."""
    return {
        "spec": spec,
        "kind": type(tokenizer).__name__,
        "files_sha256": {p.name: sha256_file(p) for p in tokenizer_files(spec, tokenizer)},
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
    }


def input_files(inputs: list[str]) -> list[Path]:
    """The .jsonl files that `inputs` (files and directories, searched recursively) name, in a stable order."""
    if not inputs:
        raise DataError("no input given: pass --input FILE_OR_DIR (jsonl)")
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    if not files:
        raise DataError(f"no .jsonl files under {', '.join(inputs)}")
    return files


def read_records(files: list[Path], skipped: list[str], progress: bool) -> Iterator[tuple[dict[str, Any], str]]:
    """Records of every jsonl file in order; broken lines are recorded in `skipped` with file:line, never fatal."""
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("packing", total=sum(p.stat().st_size for p in files))
        for path in files:
            with open(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    bar.advance(task, len(raw))
                    if not raw.strip():
                        continue
                    where = f"{path}:{lineno}"
                    try:
                        record = json.loads(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        skipped.append(f"{where}: not UTF-8")
                        continue
                    except json.JSONDecodeError as e:
                        skipped.append(f"{where}: invalid JSON ({e.msg})")
                        continue
                    if not isinstance(record, dict):
                        skipped.append(f"{where}: not a JSON object")
                        continue
                    yield record, where


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source_dir(source: str, taken: dict[str, str]) -> str:
    """The directory for `source`'s shards: the source's own name where that is a plain file name, else a cleaned
    name plus a hash of the source. A source is data, so no name it gives may leave the output directory (`..`,
    `a/../b`), land on the tokenizer or the manifest, or share another source's directory (`a b`, `a/b`)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", source).lstrip(".") or "_"
    if name != source or name in (TOKENIZER_DIR, MANIFEST):
        name = f"{name}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    if taken.setdefault(name, source) != source:  # two cleaned names whose hashes collide: refuse, never merge
        raise DataError(f"sources {taken[name]!r} and {source!r} map to one shard directory {name!r}; rename one")
    return name
