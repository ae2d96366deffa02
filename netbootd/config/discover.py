"""Where a command's configuration is, the same way for every subcommand: what it is given (an
argument or `--config`: netbootd.toml, its directory, a directory with machines/, or the machines
directory itself), else $NETBOOTD_CONFIG, else the first netbootd.toml of SEARCHED. None found is
one message, whichever command asked."""

from __future__ import annotations

import os
from pathlib import Path

from netbootd.config.settings import Settings
from netbootd.config.settingsfile import DEFAULT_CONFIG, load_settings

ENV = "NETBOOTD_CONFIG"
# Looked at in this order when nothing names a configuration: the current directory (a checkout's
# own file, or one beside the operator), a checkout's example, then the installed one.
SEARCHED = (Path("netbootd.toml"), Path("etc/netbootd/netbootd.toml"), DEFAULT_CONFIG)


class NoConfig(Exception):
    """No usable configuration; the message says what to do."""


def not_found() -> NoConfig:
    env = os.environ.get(ENV)
    looked = ", ".join([f"${ENV} ({env or 'unset'})", *(str(p) if p.is_absolute() else f"./{p}" for p in SEARCHED)])
    return NoConfig(f"no configuration found (looked at {looked}): pass --config with netbootd.toml or its "
                    f"directory, or set {ENV}")


def config_path() -> Path | None:
    """The netbootd.toml a command without `--config` uses: $NETBOOTD_CONFIG, else the first of SEARCHED."""
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    return next((p for p in SEARCHED if p.is_file()), None)


def find_settings(config: str | None, *, signing_key: bool = True) -> Settings:
    """The command's settings (see the module doc). `signing_key=False`: do not read
    http.signing_key_file (commands that sign nothing need not be able to read the daemon's key).
    Raises ConfigInvalid, NoConfig."""
    if config is None:
        found = config_path()
        if found is None:
            raise not_found()
        config = str(found)
    path = Path(config)
    if path.is_file():
        return load_settings(path, signing_key=signing_key)
    if path.is_dir():
        if (path / "netbootd.toml").is_file():
            return load_settings(path / "netbootd.toml", signing_key=signing_key)
        if (path / "machines").is_dir():
            return Settings(machines_dir=path / "machines", files_root=path / "files", source=path)
        return Settings(machines_dir=path, files_root=path.parent / "files", source=path)
    named = f"${ENV}={config}" if os.environ.get(ENV) == config else str(path)
    raise NoConfig(f"{named}: no such file or directory (a configuration is netbootd.toml, or its directory)")
