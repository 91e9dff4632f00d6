"""Training checkpoints: model and optimizer through torch.distributed.checkpoint (DCP), the rest as small files.

    checkpoints/step-00000100/
        .metadata, __0_0.distcp   DCP: {"model", "optimizer"} keyed by parameter names (no wrapper prefixes)
        train_state.json          step, tokens, loader position, lr scheduler, recovery state
        rng-00000.pt              each rank's torch RNG states
        params.json               the model's shape (ModelArgs), so the directory exports on its own
        tokenizer.model / ...     the tokenizer the shards were packed with

A step is written under `.step-00000100.partial` and renamed when every file is on disk, so a crash mid-save
never leaves a directory that looks complete; `latest()` only sees committed steps. DCP makes the same files
load under another parallel layout (FSDP, TP or PP of another size), and `keep_last` prunes older steps after a
commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import pickle
import pickletools
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from herd.errors import CheckpointError, first_line
from herd.fileio import atomic_file, fsync_dir, read_json, refused_write, storage_error
from herd.formats.common import args_from_fields
from herd.model import ModelArgs, RopeScaling

_STEP_DIR = re.compile(r"step-(\d+)")
TRAIN_STATE = "train_state.json"
PARAMS = "params.json"


# DCP's FileSystemReader unpickles `.metadata` with plain pickle, and its default planner torch.loads non-tensor
# entries with weights_only=False: a checkpoint directory from elsewhere could run code on load. herd loads DCP
# through the reader and planner below, which accept only the classes a DCP checkpoint holds.
_DCP_MODULES = ("torch.distributed.checkpoint.",)
_DCP_GLOBALS = {
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if dtype or (module, name) in _DCP_GLOBALS or module.startswith(_DCP_MODULES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of a DCP checkpoint's metadata")


def _check_memo(data: bytes) -> None:
    """Refuse memo indices past the file's size before unpickling: the C unpickler grows its memo table to the index a
    PUT names, so one corrupt 4-byte index in a 14 KB file asks for gigabytes and seconds (found by tests/fuzz)."""
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int) and arg > len(data):
                raise pickle.UnpicklingError(f"memo index {arg} at byte {pos} is larger than the file")
    except ValueError as e:  # genops on a corrupt stream: an unknown opcode, a truncated argument
        raise pickle.UnpicklingError(str(e)) from None


class SafeReader(FileSystemReader):
    """A FileSystemReader whose metadata unpickling admits DCP's own classes, torch dtypes and sizes only."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        data = (Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")).read_bytes()
        _check_memo(data)
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"holds a {type(metadata).__name__}, not DCP metadata")
        storage = metadata.storage_meta if metadata.storage_meta is not None else StorageMeta()
        storage.load_id = self.load_id
        metadata.storage_meta = storage
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, with its non-tensor entries read by torch.load(weights_only=True)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def load_dcp(state_dict: dict[str, Any], path: Path, what: str = "cannot load") -> None:
    """dcp.load of `path` into `state_dict` in place, without running anything the files could smuggle in; any failure
    is one CheckpointError "`path`: `what` (the reason)"."""
    try:
        with _quiet_dcp():
            dcp.load(state_dict, storage_reader=SafeReader(str(path)), planner=SafeLoadPlanner())
    # DCP raises several types for missing, mismatched or corrupt entries (and a refused global), a reader's own
    # failure wrapped in a CheckpointException (a BaseException) that lists each rank's.
    except (Exception, CheckpointException) as e:
        cause = next(iter(e.failures.values()))[0] if isinstance(e, CheckpointException) and e.failures else e
        raise CheckpointError(f"{path}: {what} ({type(cause).__name__}: {first_line(cause)})") from None


@contextlib.contextmanager
def _storage_errors(tmp: Path, rank: int) -> Iterator[None]:
    """A save the disk refused (full, read-only...) becomes one StorageError naming the step, and its partial directory
    goes, to give the space back; the committed steps before it are untouched. DCP reports a writer's OSError inside
    a CheckpointException (a BaseException), with every rank's failure."""
    try:
        yield
    except (Exception, CheckpointException) as e:
        errors = [f[0] for f in e.failures.values()] if isinstance(e, CheckpointException) else [e]
        refused = next((r for x in errors if (r := refused_write(x)) is not None), None)
        if refused is None:
            raise
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise storage_error(refused, tmp) from None


class _DropDCPLogs(logging.Filter):
    """DCP's loader logs each failed metadata read, traceback included, on the root logger; herd reports the failure
    itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "torch/distributed/checkpoint" not in record.pathname.replace("\\", "/")


# Single-process save/load is intended here; DCP warns about it every time. The filter is installed process-wide as
# well as around each call: an async save's writer thread warns while the training thread is outside the
# `catch_warnings` block (which is not thread-safe either), and that put the warning on the stderr of a run that
# must fail in one line. The block keeps it quiet where something (pytest) resets the filters between calls.
_SINGLE_PROCESS = r".*torch\.distributed is disabled, unavailable or uninitialized.*"
warnings.filterwarnings("ignore", message=_SINGLE_PROCESS)


@contextlib.contextmanager
def _quiet_dcp() -> Iterator[None]:
    root, dcp_log = logging.getLogger(), _DropDCPLogs()
    root.addFilter(dcp_log)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SINGLE_PROCESS)
            yield
    finally:
        root.removeFilter(dcp_log)


class CheckpointManager:
    """Saves and loads steps; under torchrun every rank calls `save`/`load` (DCP is collective), rank 0 commits.

    With `async_save`, DCP copies the state to host memory and writes it from a background thread while training
    goes on; the step is committed (renamed into place) at the first `poll()` after every rank has written it,
    or by the next save, a load or `wait()`. Until then `latest()` does not see it, so a crash in between loses
    that step, never an older one.
    """

    def __init__(
        self, folder: str | Path, *, keep_last: int, rank: int = 0, distributed: bool = False, async_save: bool = False
    ) -> None:
        self.folder, self.keep_last, self.rank, self.distributed = Path(folder), keep_last, rank, distributed
        self.async_save = async_save
        # (future, commit, partial directory) of an async save in flight
        self._pending: tuple[Future[Any], Callable[[], None], Path] | None = None
        # The background writer's collectives get their own group, so they never interleave with training's.
        self._group = dist.new_group(backend="gloo") if async_save and distributed else None
        self.timings: list[dict[str, Any]] = []
        """Per save: step, seconds the training loop was blocked, and whether it was async."""

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def steps(self) -> list[tuple[int, Path]]:
        """Committed checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _STEP_DIR.fullmatch(p.name))]
        return sorted((s, p) for s, p in found if (p / TRAIN_STATE).is_file())

    def latest(self) -> Path | None:
        self.wait()
        steps = self.steps()
        return steps[-1][1] if steps else None

    def save(
        self,
        step: int,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_state: dict[str, Any],
        args: ModelArgs,
        assets: Sequence[Path] = (),
    ) -> Path:
        start = time.perf_counter()
        self.wait()
        final = self.folder / f"step-{step:08d}"
        tmp = self.folder / f".step-{step:08d}.partial"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        # What commit writes is captured now: training moves on before an async save completes.
        rng, state = _rng_state(), json.dumps({"step": step, **train_state}, indent=1)

        def commit() -> None:
            with atomic_file(tmp / f"rng-{self.rank:05d}.pt") as f:
                torch.save(rng, f)
            self._barrier()  # every rank's files are on disk before rank 0 commits the step
            if self.rank == 0:
                with atomic_file(tmp / TRAIN_STATE, "w") as f:
                    f.write(state)
                with atomic_file(tmp / PARAMS, "w") as f:
                    json.dump(dataclasses.asdict(args), f, indent=1)
                for asset in assets:
                    shutil.copyfile(asset, tmp / asset.name)
                for child in tmp.iterdir():
                    with open(child, "rb") as fh:
                        os.fsync(fh.fileno())
                if final.exists():  # the same step saved again after a rollback
                    shutil.rmtree(final)
                os.replace(tmp, final)
                fsync_dir(self.folder)
                for _, old in self.steps()[: -self.keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
            self._barrier()

        with _quiet_dcp(), _storage_errors(tmp, self.rank):
            if self.async_save:
                future = dcp.async_save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp),
                                        process_group=self._group)  # fmt: skip
                # A Future, not an AsyncSaveResponse: without an async_stager DCP stages (copies) the state before
                # it returns, which training relies on since it goes on to update the weights.
                assert isinstance(future, Future)
                self._pending = (future, commit, tmp)
            else:
                dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp))
                commit()
        self.timings.append({"step": step, "blocked_s": time.perf_counter() - start, "async": self.async_save})
        return final

    def poll(self) -> None:
        """Commit an async save in flight if every rank has finished writing it (call once per step)."""
        if self._pending is None:
            return
        done = torch.tensor([int(self._pending[0].done())])
        if self.distributed:  # all ranks must commit at the same step: the commit has barriers
            # On the default group, from the training thread: the writer thread owns self._group.
            done = done.to(_default_device())
            dist.all_reduce(done, op=dist.ReduceOp.MIN)
        if done.item():
            self.wait()

    def wait(self) -> None:
        """Finish and commit an async save in flight."""
        if self._pending is not None:
            future, commit, tmp = self._pending
            self._pending = None
            with _quiet_dcp(), _storage_errors(tmp, self.rank):
                future.result()
                commit()

    def load(self, path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore model, optimizer and this rank's RNG in place; return the train state."""
        self.wait()
        state = read_json(path / TRAIN_STATE, what="train state", error=CheckpointError)
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise CheckpointError(f"{path / TRAIN_STATE}: expected a JSON object with an integer 'step'")
        model_sd, optim_sd = get_state_dict(model, optimizer)
        target: dict[str, Any] = {"model": model_sd, "optimizer": optim_sd}
        load_dcp(target, path, "cannot load into this model")
        try:
            set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"])
        except Exception as e:  # torch's RuntimeError/KeyError when the saved optimizer state does not fit the model
            raise CheckpointError(f"{path}: does not fit this model and optimizer ({first_line(e)})") from None
        rng = path / f"rng-{self.rank:05d}.pt"
        if rng.is_file():  # absent when resuming on more ranks than the checkpoint was saved from
            _set_rng_state(rng)
        return state


def read_params(path: Path) -> ModelArgs:
    """The ModelArgs a training checkpoint was saved with."""
    raw = read_json(path / PARAMS, what="model shape", error=CheckpointError)

    def build(fields: dict[str, Any], source: Path) -> ModelArgs:
        fields = dict(fields)
        if fields.get("rope_scaling") is not None:
            fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
        # herd wrote this file from a ModelArgs: each field of its annotated type (a float may be written as an
        # int), or the file is corrupt.
        for f in dataclasses.fields(ModelArgs):
            kinds = {"int": (int,), "float": (int, float), "bool": (bool,)}.get(str(f.type).removesuffix(" | None"))
            if kinds is None or f.name not in fields or (fields[f.name] is None and "None" in str(f.type)):
                continue
            got = fields[f.name]
            if type(got) not in kinds:
                raise TypeError(f"{f.name} is {got!r}, not {f.type!s}")
        return ModelArgs(**fields)

    return args_from_fields(build, raw, path / PARAMS)


def is_training_checkpoint(path: Path) -> bool:
    return (path / TRAIN_STATE).is_file() and (path / ".metadata").is_file()


def tokenizer_files(identity: dict[str, Any], packed_copy: Path) -> list[Path]:
    """The tokenizer files a run trains with (the copy beside the shards or the run, else where the pack manifest
    says they came from), checked against the hashes in `identity`; they are copied into every checkpoint."""
    from herd.data.pack import sha256_file

    spec = identity.get("spec", "llama3")
    if packed_copy.is_dir():
        base = packed_copy
    elif spec == "llama3":
        from herd.tokenizer.llama3 import packaged_model_path

        base = packaged_model_path().parent
    else:
        base = Path(spec) if Path(spec).is_dir() else Path(spec).parent
    files = []
    for name, digest in identity.get("files_sha256", {}).items():
        path = base / name
        if not path.is_file():
            raise CheckpointError(f"{path}: the tokenizer the shards were packed with is gone (pack manifest: {spec})")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: changed since the shards were packed with it; re-pack or restore the file")
        files.append(path)
    return files


def _default_device() -> torch.device:
    """Where the default group's collectives take tensors (CUDA for NCCL)."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(path: Path) -> None:
    """This rank's generator states from `path` (tensors only: weights_only); anything else in the file is an error."""
    try:
        with warnings.catch_warnings():  # a corrupt file's odd pickle protocol draws a UserWarning before the error
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True)
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
    except Exception as e:  # a corrupt zip, a refused global, a missing key, a tensor of the wrong type or size
        raise CheckpointError(f"{path}: not a random generator state ({type(e).__name__}: {first_line(e)})") from None
