"""lineage.json: for every artifact of a run, the stage, config, code version and input hashes that made it.

    {"recipe": {path, sha256, name}, "herd_version", "updated_at",
     "stages": {name: {kind, key, status, finished_at, seconds, config_sha256, config, code, inputs, outputs}},
     "artifacts": {"<stage>/<output>": {stage, path, sha256, bytes, files}}}

An artifact's sha256 hashes its files' relative paths and contents (a directory) or its bytes (a file); an output
that is a name, not a path (a reused "llama3" tokenizer, the "embedded" guard), hashes that name. A stage's inputs
name the artifacts they read with those hashes, so the chain from raw text to the exported model can be checked.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import herd
from herd.fileio import atomic_file

if TYPE_CHECKING:
    from herd.recipe.runner import Planned
    from herd.recipe.spec import Recipe

FILE = "lineage.json"
_BLOCK = 1 << 20


def hash_artifact(value: str) -> dict[str, Any]:
    """sha256, bytes and file count of a file or directory (hidden bookkeeping files skipped); a name that is
    not a path hashes as text."""
    path = Path(value)
    if not path.exists():
        return {"sha256": hashlib.sha256(value.encode()).hexdigest(), "bytes": 0, "files": 0, "name": value}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
    digest, size = hashlib.sha256(), 0
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(_BLOCK):
                digest.update(block)
                size += len(block)
    return {"sha256": digest.hexdigest(), "bytes": size, "files": len(files)}


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


class Lineage:
    def __init__(self, recipe: Recipe) -> None:
        self.path = recipe.dir / FILE
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.data["recipe"] = {
            "path": str(recipe.path),
            "name": recipe.name,
            "sha256": hashlib.sha256(recipe.path.read_bytes()).hexdigest(),
        }
        self.data["herd_version"] = herd.__version__
        self.data.setdefault("stages", {})
        self.data.setdefault("artifacts", {})
        self.run_dir = recipe.dir.resolve()

    def inputs_remade(self, p: Planned) -> str | None:
        """The first input whose artifact now hashes otherwise than when this stage read it (an upstream stage ran
        again with the same key and made other bytes: training that is not bit-reproducible, say), or None."""
        read = self.data["stages"].get(p.name, {}).get("inputs", {})
        for name, src in p.stage.spec.inputs.items():
            now = self.data["artifacts"].get(f"{src}/main", {}).get("sha256")
            if name in read and now is not None and read[name].get("sha256") != now:
                return name
        return None

    def reused(self, p: Planned, record: dict[str, Any]) -> None:
        entry = self.data["stages"].get(p.name)
        if entry is None or entry.get("key") != p.key:  # a lineage lost or from before: rebuilt from stage.json
            self.finished(p, record)
        self.data["stages"][p.name]["status"] = "reused"
        self._write()

    def finished(self, p: Planned, record: dict[str, Any]) -> None:
        names = []
        for out, value in record["outputs"].items():
            artifact = f"{p.name}/{out}"
            names.append(artifact)
            where = self.run_dir / value if (self.run_dir / value).exists() else Path(value)
            entry = {"stage": p.name, "path": value, **hash_artifact(str(where) if where.exists() else value)}
            self.data["artifacts"][artifact] = entry
        self.data["stages"][p.name] = {
            "kind": p.stage.KIND,
            "key": p.key,
            "status": "ran",
            "finished_at": record.get("finished_at"),
            "seconds": record.get("seconds"),
            "config_sha256": p.parts["settings"],
            "config": record.get("material"),
            "code": {"herd_version": herd.__version__, "sha256": p.parts["code"], "packages": list(p.stage.CODE)},
            "inputs": {
                name: {"artifact": f"{src}/main", "sha256": self.data["artifacts"].get(f"{src}/main", {}).get("sha256")}
                for name, src in p.stage.spec.inputs.items()
            },
            "outputs": names,
        }
        self._write()

    def _write(self) -> None:
        self.data["updated_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        with atomic_file(self.path, "w") as f:
            json.dump(self.data, f, indent=1)
