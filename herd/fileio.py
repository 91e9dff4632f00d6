"""Atomic file and directory writes: readers never see a half-written checkpoint, shard or tokenizer.

Write to a temp file in the same directory, fsync, rename over the target, fsync the directory. Also the one JSON
file reader of the commands that take a JSON file, so they all fail with the same one-line error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

from herd.errors import HerdError, StorageError

# Errors that say the disk, not the program or its input, refused a write.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


def storage_error(e: OSError, path: str | Path) -> StorageError:
    """A one-line error for a write to `path` that the disk refused."""
    return StorageError(f"{path}: cannot write: {e.strerror or e}")


def refused_write(e: BaseException | None) -> OSError | None:
    """The OSError of a write the disk refused, if `e` is one or was raised while handling one (torch.save's zip
    writer turns a full disk into a RuntimeError whose __context__ is the OSError)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def storage_errors(path: str | Path) -> Iterator[None]:
    """Turn a write refused by the disk under this block into a StorageError naming `path`: a full disk's OSError
    from a file object's write or close carries no file name."""
    try:
        yield
    except Exception as e:
        if (refused := refused_write(e)) is None or isinstance(e, HerdError):
            raise
        raise storage_error(refused, refused.filename or path) from e


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Callers get a TextIO for mode "w", a BinaryIO for "wb" (the default).
@overload
def atomic_file(path: str | Path, mode: Literal["w"]) -> contextlib.AbstractContextManager[TextIO]: ...
@overload
def atomic_file(path: str | Path, mode: Literal["wb"] = "wb") -> contextlib.AbstractContextManager[BinaryIO]: ...
@overload
def atomic_file(path: str | Path, mode: str) -> contextlib.AbstractContextManager[IO[Any]]: ...
@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Write to a temp file beside `path`, fsync, then rename over it: readers never see half a file."""
    path = Path(path)
    with storage_errors(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        try:
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, error: type[HerdError] = HerdError) -> Iterator[Path]:
    """Fill a temp directory beside `path`, then rename it to `path` once complete.

    `path` must not exist or be an empty directory: a conversion never overwrites a checkpoint.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise error(f"{path}: destination exists and is not an empty directory; choose a new path")
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(0o777 & ~_umask())
        try:
            yield tmp
            for child in tmp.iterdir():
                if child.is_file():
                    with open(child, "rb") as f:
                        os.fsync(f.fileno())
            if path.exists():
                path.rmdir()
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(path.parent)


def read_json(path: str | Path, *, what: str = "file", error: type[HerdError] = HerdError) -> Any:
    """A JSON file's value (`-` reads stdin); unreadable or invalid input raises `error` naming the file, the
    line and column, and `what` the file was meant to be."""
    where = "<stdin>" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if where == "<stdin>" else Path(path).read_text(encoding="utf-8")
        return json.loads(text)
    except OSError as e:
        raise error(f"{where}: cannot read the {what} ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: the {what} is not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise error(f"{where}: the {what} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
