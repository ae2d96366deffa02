"""Where a command's configuration is: what `--config` may name (netbootd.toml, its directory, a
directory with machines/, or the machines directory itself) and the default without it."""

from __future__ import annotations

from pathlib import Path

from netbootd.config.settings import Settings
from netbootd.config.settingsfile import DEFAULT_CONFIG, load_settings


class NoConfig(Exception):
    """No usable configuration; the message says what to do."""


def find_settings(config: str | None, *, required: bool, signing_key: bool = True) -> Settings:
    """How every command finds its configuration: `--config` names netbootd.toml, or a directory
    holding it, or a directory with machines/ (and files/), or the machines directory itself;
    without it, /etc/netbootd/netbootd.toml. `required`: built-in defaults will not do (check,
    explain), so a missing file is an error saying what to pass. `signing_key=False`: do not read
    http.signing_key_file (commands that sign nothing need not be able to read the daemon's key).
    Raises ConfigInvalid, NoConfig."""
    if config is None:
        if DEFAULT_CONFIG.is_file():
            return load_settings(DEFAULT_CONFIG, signing_key=signing_key)
        if required:
            raise NoConfig(f"no configuration at {DEFAULT_CONFIG}: pass --config with netbootd.toml or its directory")
        return Settings()
    path = Path(config)
    if path.is_file():
        return load_settings(path, signing_key=signing_key)
    if path.is_dir():
        if (path / "netbootd.toml").is_file():
            return load_settings(path / "netbootd.toml", signing_key=signing_key)
        if (path / "machines").is_dir():
            return Settings(machines_dir=path / "machines", files_root=path / "files", source=path)
        return Settings(machines_dir=path, files_root=path.parent / "files", source=path)
    raise NoConfig(f"{path}: no such file or directory (--config takes netbootd.toml, or its directory)")
