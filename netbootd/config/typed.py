"""Turn a TOML mapping into a frozen attrs object, collecting every error.

Pure: no I/O. The caller supplies `locate(keypath) -> line` for messages.
Supported field types: bool, int, float, str, Path, `X | None`, tuple[str, ...], nested attrs classes.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from netbootd.config.errors import ConfigError

Locate = Callable[[str], int]


def _type_name(tp: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    if tp in names:
        return names[tp]
    if typing.get_origin(tp) is tuple:
        return "a list of strings"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, base: Path) -> Any:
    """Return the converted value or raise TypeError with what was expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value == "" and Path in args:
            return None  # "" means "not set" for optional paths
        return _convert(value, args[0], base)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # TOML integers are unbounded; 1e400 is not a float
                raise TypeError(f"expected {_type_name(tp)}, got an integer too large") from None
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str) and value:
            p = Path(value)
            return p if p.is_absolute() else (base / p)
    elif origin is tuple:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    raise TypeError(f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def build(cls: type, data: Any, prefix: str, file: Path, locate: Locate, errors: list[ConfigError]) -> Any:
    """Build `cls` from `data`; unknown keys and type mismatches go to `errors`.

    Relative paths are made relative to the directory of `file`.
    Returns an instance built from the valid parts (defaults for the rest).
    """
    if not isinstance(data, dict):
        errors.append(ConfigError(file, locate(prefix), prefix, f"expected a table, got {type(data).__name__}"))
        return cls()
    attrs.resolve_types(cls)
    fields = {f.name: f for f in attrs.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        field = fields.get(key)
        if field is None:
            known = ", ".join(sorted(fields))
            errors.append(ConfigError(file, locate(path), path, f"unknown setting; known here: {known}"))
            continue
        if attrs.has(field.type):
            kwargs[key] = build(field.type, value, path, file, locate, errors)
            continue
        try:
            kwargs[key] = _convert(value, field.type, file.parent)
        except TypeError as exc:
            errors.append(ConfigError(file, locate(path), path, str(exc)))
    return cls(**kwargs)
