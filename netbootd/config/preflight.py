"""The files of secrets a configuration names, read and judged in one place: http.signing_key_file
(the URL-signing key shared by a HA pair) and ui.auth_file (the dashboard's credentials, when the
dashboard is on). `netbootd check` and every settings load see their errors through preflight();
the daemon's start reads what it uses through signing_key() and ui_credentials(), with the same
words. What makes each file fit is its owner's (netbootd.core.signing, netbootd.ui.auth), both
reading through netbootd.secretfile."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from netbootd.config.errors import ConfigError
from netbootd.config.settings import Settings

if TYPE_CHECKING:
    from netbootd.ui.auth import Credentials

SIGNING_KEY_FILE = "http.signing_key_file"
AUTH_FILE = "ui.auth_file"


class SecretFileError(Exception):
    """A secret file cannot be used. `setting` names the setting, the message the file and the fix;
    `at_start` is how the daemon's start says it (a StartupError's message)."""

    def __init__(self, setting: str, message: str, at_start: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.message = message
        self.at_start = at_start


# The owners are imported when a file is set, not above: netbootd.ui's package imports this module
# (the dashboard's reload), and both packages pull in much that a settings load has no use for.


def signing_key(settings: Settings) -> bytes | None:
    """http.signing_key_file's key; None when unset (the host keeps a key of its own in state_dir)."""
    path = settings.http.signing_key_file
    if path is None:
        return None
    from netbootd.core.signing import SigningKeyError, read_key_file

    try:
        return read_key_file(path)
    except SigningKeyError as exc:
        raise SecretFileError(SIGNING_KEY_FILE, str(exc), f"{SIGNING_KEY_FILE}: {exc}") from None


def ui_credentials(settings: Settings) -> Credentials | None:
    """ui.auth_file's credentials; None when unset (the dashboard asks no one)."""
    path = settings.ui.auth_file
    if path is None:
        return None
    from netbootd.ui.auth import AuthFileError, read_auth_file

    try:
        return read_auth_file(path)
    except AuthFileError as exc:
        raise SecretFileError(AUTH_FILE, str(exc), str(exc)) from None


def preflight(settings: Settings, locate: Callable[[str], int] | None = None) -> list[ConfigError]:
    """Every secret file `settings` name that cannot be used, as errors of the settings file
    (`locate`: a setting's line in it; without it, line 0). ui.auth_file counts only with a dashboard."""
    readers: list[Callable[[Settings], object]] = [signing_key]
    if settings.ui.listen:
        readers.append(ui_credentials)
    errors = []
    for read in readers:
        try:
            read(settings)
        except SecretFileError as exc:
            line = locate(exc.setting) if locate is not None else 0
            errors.append(ConfigError(settings.source or Path(), line, exc.setting, exc.message))
    return errors
