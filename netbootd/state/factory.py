"""The one place that picks the store from the settings: state.url unset, SQLite in state_dir;
set, the PostgreSQL database it names."""

from __future__ import annotations

from typing import Any

from netbootd.config.settings import Settings
from netbootd.state.model import StateStoreError
from netbootd.state.password import SETTING, PasswordFileError, read_password_file
from netbootd.state.store import StateStore


def open_store(settings: Settings, reactor: Any = None) -> StateStore:
    """The store the settings name, not started yet (start() opens it). Raises StateStoreError
    when state.password_file cannot be used."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    if not settings.state.url:
        from netbootd.state.sqlite import SqliteStore

        return SqliteStore(reactor, settings.state_dir)
    from netbootd.state.postgres import PgConfig, PostgresStore  # psycopg only for those who use it

    s = settings.state
    password = None
    if s.password_file is not None:
        try:
            password = read_password_file(s.password_file)
        except PasswordFileError as exc:  # as config.preflight says it for `netbootd check`
            raise StateStoreError(f"{SETTING}: {exc}") from None
    return PostgresStore(reactor, PgConfig(s.url, password, s.password_file, s.sslmode, s.sslrootcert, s.sslcert,
                                           s.sslkey, s.connect_timeout))
