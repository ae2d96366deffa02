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
        message = f"invalid TOML: {_TOML_POS.sub('', str(exc)).strip()}"
        return ConfigError(path, line, "", message + template_quote_hint(text, line))
    return TomlFile(path, text, data)


# `key = "...{{ ... "` : a basic string whose template holds a double quote (which ends the string)
_TEMPLATE_IN_BASIC = re.compile(r'^\s*([A-Za-z0-9_.\-"]+?)\s*=\s*"(?!"")(.*\{\{.*)$')
_QUOTE_IN_TEMPLATE = re.compile(r'\{\{[^}]*"')  # {{ file("x") }}
_CLOSING_QUOTE = re.compile(r'"\s*(#[^"]*)?$')  # the string's closing quote and a comment after it


def template_quote_hint(text: str, line: int) -> str:
    """A hint for the commonest TOML mistake in a machine file: a template's own double quotes
    (`{{ file("x") }}`) inside a double-quoted (basic) string end the string early. "" when the
    failing line is not that."""
    lines = text.splitlines()
    if not 0 < line <= len(lines):
        return ""
    found = _TEMPLATE_IN_BASIC.match(lines[line - 1])
    if found is None or not _QUOTE_IN_TEMPLATE.search(found.group(2)):
        return ""
    key, value = found.group(1), _CLOSING_QUOTE.sub("", found.group(2))
    suggestion = f"{key} = '{value}'" if "'" not in value and len(value) <= 160 else f"{key} = '...'"
    return (f"; a template's double quotes end a double-quoted TOML string: use a literal (single-quoted) string,"
            f" {suggestion}")
