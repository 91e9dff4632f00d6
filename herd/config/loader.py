"""The machinery under the config tree: TOML and `section.key=value` overrides -> typed dataclasses, and back.

Sections are `@dataclass(kw_only=True, slots=True)` classes whose fields carry a docstring (the `--help` text).
Unknown keys are errors, values are checked against the field types, and the resolved config is written
back as TOML beside every run so that a run can be repeated exactly. Which sections a command reads, and its
defaults, are herd/config/job.py's.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from herd.errors import HerdError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(HerdError):
    """A config file or override that does not fit the config tree."""


def read_toml(path: str | Path | None) -> dict[str, Any]:
    """The TOML file at `path` as nested dicts ({} for None)."""
    if path is None:
        return {}
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None


def load_as(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build any dataclass tree `cls` from defaults, then the TOML file at `path`, then `key=value` overrides."""
    raw = read_toml(path)
    for item in overrides or []:
        apply_override(cls, raw, item)
    return build(cls, raw, source=str(path or "defaults"))


def build(cls: type[T], raw: dict[str, Any], *, source: str = "config", prefix: str = "") -> T:
    """Construct the dataclass tree `cls` from nested dicts, rejecting unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{prefix or '<root>'}] must be a table, got {raw!r:.60}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    if unknown := sorted(raw.keys() - fields.keys()):
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} in {where}; known keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(hints[name], value, source, key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from None


def _convert(hint: Any, value: Any, source: str, key: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, source=source, prefix=key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, source, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r:.60}")
        return [_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a table, got {value!r:.60}")
        return {k: _convert(args[1], v, source, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint) and not (hint is int and value is True)):
        if hint is int and isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key} must be {getattr(hint, '__name__', hint)}, got {value!r:.60}")


def apply_override(cls: type, raw: dict[str, Any], item: str) -> None:
    """`a.b.c=value`: the value is parsed as TOML (numbers, booleans, lists, quoted strings), else kept as text."""
    key, sep, text = item.removeprefix("--").partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like --section.key=value")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    parts = key.split(".")
    node = raw
    hint_cls: Any = cls  # then the type hint of each key on the path (None below one that is no dataclass)
    for i, part in enumerate(parts):
        fields = {f.name for f in dataclasses.fields(hint_cls)} if dataclasses.is_dataclass(hint_cls) else None
        if fields is not None and part not in fields:
            raise ConfigError(f"override {item!r}: unknown key {'.'.join(parts[: i + 1])!r}")
        if i == len(parts) - 1:
            hint = typing.get_type_hints(hint_cls)[part] if fields is not None else Any
            if hint is str or (
                typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint)
            ):
                value = text if not isinstance(value, str) else value  # "--x.name=123" stays the string "123"
            node[part] = value
            return
        node = node.setdefault(part, {})
        hint_cls = typing.get_type_hints(hint_cls)[part] if fields is not None else None


def to_toml(cfg: Any, keep: Callable[[str], bool] = lambda path: True) -> str:
    """The resolved config as TOML (tables for nested sections; None values are left out); `keep(dotted path)`
    chooses the keys written."""
    lines: list[str] = []

    def emit(obj: Any, prefix: str) -> None:
        scalars, tables, arrays = [], [], []
        for f in dataclasses.fields(obj):
            if not keep(f"{prefix}.{f.name}" if prefix else f.name):
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                tables.append((f.name, value))
            elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
                arrays.append((f.name, value))
            elif value is not None:
                scalars.append(f"{f.name} = {_toml_value(value)}")
        if prefix and scalars:
            lines.append(f"\n[{prefix}]")
        lines.extend(scalars)
        for name, items in arrays:  # arrays of tables: [[section.name]] once per item
            for item in items:
                lines.append(f"\n[[{prefix}.{name}]]" if prefix else f"\n[[{name}]]")
                lines.extend(f"{f.name} = {_toml_value(getattr(item, f.name))}" for f in dataclasses.fields(item)
                             if getattr(item, f.name) is not None)  # fmt: skip
        for name, value in tables:
            emit(value, f"{prefix}.{name}" if prefix else name)

    emit(cfg, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {value!r} as TOML")
