"""netbootd.config.preflight: the secret files a configuration names, judged once for `netbootd
check` (errors of the settings file, with their lines) and for the daemon's start (its words)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netbootd.config.errors import ConfigInvalid
from netbootd.config.preflight import SecretFileError, preflight, signing_key, ui_credentials, unit_credentials_absent
from netbootd.config.settings import HttpSettings, Settings, UiSettings
from netbootd.config.settingsfile import load_settings


def secret(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def settings(tmp_path: Path, key: Path | None, auth: Path | None, listen: str = "127.0.0.1:9180") -> Settings:
    return Settings(http=HttpSettings(signing_key_file=key), ui=UiSettings(listen=listen, auth_file=auth),
                    source=tmp_path / "netbootd.toml")


def test_unset_files_are_fine_and_read_as_none(tmp_path):
    s = settings(tmp_path, None, None)
    assert preflight(s) == []
    assert signing_key(s) is None and ui_credentials(s) is None


def test_good_files_are_read(tmp_path):
    key = secret(tmp_path / "key", os.urandom(32), 0o600)
    auth = secret(tmp_path / "auth", b"admin:secret\n", 0o600)
    s = settings(tmp_path, key, auth)
    assert preflight(s) == []
    assert signing_key(s) == key.read_bytes()
    creds = ui_credentials(s)
    assert creds is not None and creds.describe() == "1 user(s)"


def test_every_unfit_file_is_an_error_of_the_settings_file(tmp_path):
    key = secret(tmp_path / "key", os.urandom(32), 0o644)
    auth = secret(tmp_path / "auth", b"admin:secret\n", 0o604)
    lines = {"http.signing_key_file": 7, "ui.auth_file": 12}
    errors = preflight(settings(tmp_path, key, auth), lines.__getitem__)
    assert [(e.file, e.line, e.key) for e in errors] == [
        (tmp_path / "netbootd.toml", 7, "http.signing_key_file"), (tmp_path / "netbootd.toml", 12, "ui.auth_file")]
    assert errors[0].message.startswith(f"signing key file {key} is readable by other users (mode 0644)")
    assert errors[1].message.startswith(f"ui.auth_file {auth} is readable by other users (mode 0604)")


def test_without_a_dashboard_its_auth_file_is_not_read(tmp_path):
    assert preflight(settings(tmp_path, None, tmp_path / "nosuch", listen="")) == []


def test_the_daemon_start_words(tmp_path):
    """As service.url_signer and start_ui have always said them: the key's with its setting first,
    the auth file's as the dashboard words them (they name the file)."""
    s = settings(tmp_path, tmp_path / "nokey", secret(tmp_path / "auth", b"nocolon\n", 0o600))
    with pytest.raises(SecretFileError) as key_error:
        signing_key(s)
    assert key_error.value.message.startswith(f"signing key file {tmp_path / 'nokey'} does not exist: ")
    assert key_error.value.at_start == f"http.signing_key_file: {key_error.value.message}"
    with pytest.raises(SecretFileError) as auth_error:
        ui_credentials(s)
    assert auth_error.value.at_start == auth_error.value.message
    assert auth_error.value.message.startswith(f"{tmp_path / 'auth'}:1: a bearer token is one word")


def test_load_settings_reports_them_with_the_line_and_skips_them_when_asked(tmp_path):
    key = secret(tmp_path / "key", b"short", 0o600)
    config = tmp_path / "netbootd.toml"
    config.write_text(f'state_dir = "state"\n\n[http]\nsigning_key_file = "{key}"\n')
    with pytest.raises(ConfigInvalid) as info:
        load_settings(config)
    [error] = info.value.errors
    assert (error.file, error.line, error.key) == (config, 4, "http.signing_key_file")
    assert error.message.startswith(f"signing key file {key} holds 5 bytes; a key needs at least 32 random bytes")
    assert load_settings(config, signing_key=False).http.signing_key_file == key


def test_credentials_of_a_systemd_service_not_running_are_left_to_its_start(tmp_path, monkeypatch):
    """/run/credentials/UNIT/ exists only while UNIT runs (LoadCredential=): outside it, check reads
    the rest and names what it left; inside a service ($CREDENTIALS_DIRECTORY), missing is an error."""
    unit = Path("/run/credentials/netbootd-preflight-test.service")
    assert not unit.exists()
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    s = settings(tmp_path, unit / "signing.key", unit / "ui-auth")
    assert preflight(s) == []
    assert unit_credentials_absent(s) == [("http.signing_key_file", unit / "signing.key"),
                                          ("ui.auth_file", unit / "ui-auth")]
    with pytest.raises(SecretFileError, match="does not exist"):
        signing_key(s)  # the daemon's start still reads it
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(unit))
    assert [e.key for e in preflight(s)] == ["http.signing_key_file", "ui.auth_file"]
    assert unit_credentials_absent(s) == []
    # a file of another place under /run is read as always
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert [e.key for e in preflight(settings(tmp_path, Path("/run/netbootd-nosuch.key"), None))] == [
        "http.signing_key_file"]
