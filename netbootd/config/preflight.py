"""The files of secrets a configuration names, read and judged in one place: http.signing_key_file
(the URL-signing key shared by a HA pair), ui.auth_file (the dashboard's credentials, when the
dashboard is on) and state.password_file (the state database's password, when state.url is set).
`netbootd check` and every settings load see their errors through preflight(); the daemon's start
reads what it uses through signing_key(), ui_credentials() and state_password(), with the same
words. What makes each file fit is its owner's (netbootd.core.signing, netbootd.ui.auth,
netbootd.state.password), all reading through netbootd.secretfile.

A file under /run/credentials/UNIT/ is a systemd credential (LoadCredential=): systemd makes it for the
service's run only. Outside that service (no $CREDENTIALS_DIRECTORY) and while that directory is
absent, it is not read here, so `netbootd check` of the service's settings works before its first
start (unit_credentials_absent names them); the daemon's own start still reads it, and fails."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from netbootd.config.errors import ConfigError
from netbootd.config.settings import Settings

if TYPE_CHECKING:
    from netbootd.ui.auth import Credentials

SYSTEMD_CREDENTIALS = Path("/run/credentials")
SIGNING_KEY_FILE = "http.signing_key_file"
AUTH_FILE = "ui.auth_file"
STATE_PASSWORD_FILE = "state.password_file"  # noqa: S105 - a setting's name
T = TypeVar("T")


class SecretFileError(Exception):
    """A secret file cannot be used. `setting` names the setting, the message the file and the fix;
    `at_start` is how the daemon's start says it (a StartupError's message)."""

    def __init__(self, setting: str, message: str, at_start: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.message = message
        self.at_start = at_start


def signing_key(settings: Settings) -> bytes | None:
    """http.signing_key_file's key; None when unset (the host keeps a key of its own in state_dir)."""
    from netbootd.core.signing import SigningKeyError, read_key_file

    return _read(SIGNING_KEY_FILE, settings.http.signing_key_file, read_key_file, SigningKeyError, named_at_start=True)


def ui_credentials(settings: Settings) -> Credentials | None:
    """ui.auth_file's credentials; None when unset (the dashboard asks no one)."""
    from netbootd.ui.auth import AuthFileError, read_auth_file

    # The daemon's start says these as they are: each names the file already.
    return _read(AUTH_FILE, settings.ui.auth_file, read_auth_file, AuthFileError, named_at_start=False)


def state_password(settings: Settings) -> str | None:
    """state.password_file's password; None when unset (libpq's own ways, or no password)."""
    from netbootd.state.password import PasswordFileError, read_password_file

    return _read(STATE_PASSWORD_FILE, settings.state.password_file, read_password_file, PasswordFileError,
                 named_at_start=True)


# The owners above are imported when asked, not at the top: netbootd.ui's package imports this
# module (the dashboard's reload), and both packages pull in much that a settings load naming no
# secret file has no use for.


def _read(setting: str, path: Path | None, read: Callable[[Path], T], error: type[Exception], *,
          named_at_start: bool) -> T | None:
    if path is None:
        return None
    try:
        return read(path)
    except error as exc:
        raise SecretFileError(setting, str(exc), f"{setting}: {exc}" if named_at_start else str(exc)) from None


def _in_use(settings: Settings) -> list[tuple[str, Path, Callable[[Settings], object]]]:
    """(setting, path, reader) of each secret file `settings` use: ui.auth_file only with a
    dashboard, state.password_file only with a state.url."""
    used: list[tuple[str, Path | None, Callable[[Settings], object]]] = [
        (SIGNING_KEY_FILE, settings.http.signing_key_file, signing_key),
        (AUTH_FILE, settings.ui.auth_file if settings.ui.listen else None, ui_credentials),
        (STATE_PASSWORD_FILE, settings.state.password_file if settings.state.url else None, state_password),
    ]
    return [(setting, path, read) for setting, path, read in used if path is not None]


def _absent_unit_credential(path: Path) -> bool:
    if "CREDENTIALS_DIRECTORY" in os.environ or path.parent.parent != SYSTEMD_CREDENTIALS:
        return False
    return not path.parent.exists()


def unit_credentials_absent(settings: Settings) -> list[tuple[str, Path]]:
    """(setting, path) of each secret file that is the credential of a systemd service not running
    (not read by preflight)."""
    return [(setting, path) for setting, path, _ in _in_use(settings) if _absent_unit_credential(path)]


def preflight(settings: Settings, locate: Callable[[str], int] | None = None) -> list[ConfigError]:
    """Every secret file `settings` name that cannot be used, as errors of the settings file
    (`locate`: a setting's line in it; without it, line 0). ui.auth_file counts only with a dashboard,
    state.password_file only with a state.url; a systemd service's credential only where it exists."""
    readers = [read for _, path, read in _in_use(settings) if not _absent_unit_credential(path)]
    errors = []
    for read in readers:
        try:
            read(settings)
        except SecretFileError as exc:
            line = locate(exc.setting) if locate is not None else 0
            errors.append(ConfigError(settings.source or Path(), line, exc.setting, exc.message))
    return errors
