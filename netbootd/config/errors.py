"""Configuration errors that name the file, the line and the key, and say what was expected."""

from __future__ import annotations

import re
from pathlib import Path

import attrs


@attrs.frozen
class ConfigError:
    file: Path
    line: int  # 1-based; 0 when the problem is the file as a whole
    key: str  # dotted key path ("boot.kernel"), "" for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else f"{self.file}"
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigInvalid(Exception):
    """Raised when a configuration cannot be used at all; carries every error found."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-\s"']+?)\s*=""")


def _split_key(text: str) -> list[str]:
    parts = []
    for raw in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', text):
        parts.append(raw.strip().strip("\"'"))
    return [p for p in parts if p]


def find_line(text: str, keypath: str) -> int:
    """Best-effort line number of `keypath` ("boot.kernel") in TOML `text`.

    tomllib reports no positions for keys, so this scans table headers and `key =` lines
    (dotted keys and quoted keys included). Returns the table header's line when the key
    itself is not written out (e.g. a missing key), or 1 when nothing matches.
    """
    want = _split_key(keypath) if keypath else []
    if not want:
        return 1
    table: list[str] = []
    best = 0
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group(1))
            if table == want:
                return number
            if want[: len(table)] == table and not best:
                best = number
            continue
        key = _KEY.match(line)
        if key:
            full = table + _split_key(key.group(1))
            if full == want or (len(full) < len(want) and want[: len(full)] == full):
                # exact key, or an inline table / array that holds it
                return number
    return best or 1
