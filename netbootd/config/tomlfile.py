"""One TOML file read for the configuration: its text kept beside its data, so an error can name
the line of a key (tomllib reports no positions), and every failure to read it as a ConfigError."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import attrs

from netbootd.config.errors import ConfigError, find_line

_TOML_POS = re.compile(r"\(at line (\d+), column \d+\)")


@attrs.frozen
class TomlFile:
    path: Path
    text: str
    data: dict[str, Any]

    def line(self, key: str) -> int:
        return find_line(self.text, key)

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.line(key) if key else 0, key, message)


def read_toml(path: Path) -> TomlFile | ConfigError:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return ConfigError(path, 0, "", f"cannot read file: {exc.strerror or exc}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ConfigError(path, 0, "", f"not UTF-8 text (byte {exc.start})")
    try:
        data = tomllib.loads(text)
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        return ConfigError(path, 0, "", "invalid TOML: arrays or tables nested too deeply")
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POS.search(str(exc))
        line = int(match.group(1)) if match else 0
        return ConfigError(path, line, "", f"invalid TOML: {_TOML_POS.sub('', str(exc)).strip()}")
    return TomlFile(path, text, data)
