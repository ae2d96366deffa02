"""[state] in netbootd.toml: every value checked with the file, the line and the key; the password
file judged like the other secret files; the store picked in one place."""

from __future__ import annotations

import textwrap

import pytest
from twisted.internet import reactor

from netbootd.config.errors import ConfigInvalid
from netbootd.config.settings import Settings, StateSettings, to_toml
from netbootd.config.settingsfile import load_settings
from netbootd.state import StateStoreError, open_store
from netbootd.state.postgres import PgConfig, PostgresStore
from netbootd.state.sqlite import SqliteStore


def errors_of(tmp_path, text: str) -> list[str]:
    cfg = tmp_path / "netbootd.toml"
    cfg.write_text(textwrap.dedent(text).lstrip())
    with pytest.raises(ConfigInvalid) as info:
        load_settings(cfg)
    return [str(e) for e in info.value.errors]


def secret(path, text: str, mode: int = 0o600):
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_good_state_table_loads(tmp_path):
    secret(tmp_path / "pw", "s3cret\n")
    (tmp_path / "ca.crt").write_text("")
    cfg = tmp_path / "netbootd.toml"
    cfg.write_text(textwrap.dedent("""
        [state]
        url = "postgresql://netbootd@db.example:5432/netbootd"
        password_file = "pw"
        sslmode = "verify-full"
        sslrootcert = "ca.crt"
        connect_timeout = 3
    """))
    s = load_settings(cfg).state
    assert s == StateSettings("postgresql://netbootd@db.example:5432/netbootd", tmp_path / "pw", "verify-full",
                              tmp_path / "ca.crt", None, None, 3)
    store = open_store(load_settings(cfg), reactor)
    assert isinstance(store, PostgresStore)
    assert store.config.password == "s3cret" and store.config.params()["sslmode"] == "verify-full"
    assert store.where == "PostgreSQL db.example:5432/netbootd"
    assert "s3cret" not in repr(store.config)


def test_every_bad_value_names_its_line_and_key(tmp_path):
    cfg = tmp_path / "netbootd.toml"
    text = errors_of(tmp_path, """
        [state]
        url = "postgresql://netbootd:hunter2@db.example/netbootd"
        sslmode = "maybe"
        sslrootcert = "nosuch.crt"
        connect_timeout = 1
    """)
    assert text == [
        f"{cfg}:3: state.sslmode: expected one of disable, allow, prefer, require, verify-ca, verify-full (or \"\"), "
        "got 'maybe'",
        f"{cfg}:5: state.connect_timeout: expected seconds 2..600 (libpq waits at least 2), got 1",
        f"{cfg}:2: state.url: holds a password: put it in a file named by state.password_file (netbootd.toml is "
        "not a secret)",
        f"{cfg}:4: state.sslrootcert: {tmp_path / 'nosuch.crt'} does not exist",
    ]
    assert errors_of(tmp_path, '[state]\nurl = "mysql://x@y/z"\n') == [
        f'{cfg}:2: state.url: expected a URL such as "postgresql://netbootd@db.example:5432/netbootd", got '
        "'mysql://x@y/z'"]
    assert errors_of(tmp_path, "[state]\nconnect_timeout = 2.5\n")[0].startswith(
        f"{cfg}:2: state.connect_timeout: expected an integer")


def test_the_password_file_is_a_secret_file(tmp_path):
    pw = secret(tmp_path / "pw", "s3cret\n", 0o644)
    cfg = tmp_path / "netbootd.toml"
    text = errors_of(tmp_path, '[state]\nurl = "postgresql://nb@db/nb"\npassword_file = "pw"\n')
    assert text == [f"{cfg}:3: state.password_file: password file {pw} is readable by other users (mode 0644): "
                    f"whoever can read it can change every machine's lifecycle state; run `chmod 600 {pw}` "
                    "(a Kubernetes Secret: defaultMode: 0400)"]
    # The daemon's start says it the same way (load_settings without secrets, as `netbootd status` does).
    settings = load_settings(cfg, signing_key=False)
    with pytest.raises(StateStoreError, match=r"^state.password_file: password file .* is readable by other users"):
        open_store(settings, reactor)
    # Without state.url the file is not used, so not read.
    assert load_settings(secret(cfg, '[state]\npassword_file = "pw"\n')).state.password_file == pw
    secret(pw, "", 0o600)
    assert errors_of(tmp_path, '[state]\nurl = "postgresql://nb@db/nb"\npassword_file = "pw"\n') == [
        f"{cfg}:3: state.password_file: password file {pw} is empty: put the role's password in it"]


def test_sqlite_without_a_url_and_the_settings_round_trip(tmp_path):
    settings = Settings(state_dir=tmp_path)
    assert isinstance(open_store(settings, reactor), SqliteStore)
    cfg = tmp_path / "netbootd.toml"
    cfg.write_text(to_toml(Settings(state=StateSettings(url="postgresql://nb@db/nb", sslmode="require"))))
    assert load_settings(cfg, signing_key=False).state == StateSettings(url="postgresql://nb@db/nb", sslmode="require")


def test_the_role_and_where_from_the_url():
    config = PgConfig("postgresql://netbootd@db1.example:6432/fleet")
    assert config.role() == "netbootd" and config.where() == "PostgreSQL db1.example:6432/fleet"
    assert "password" not in PgConfig("postgresql://nb@db/nb").params()
