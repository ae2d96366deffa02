"""Fixtures for the state store: a private PostgreSQL server (tests/state/pgserver.py) with a
role that logs in with a password, and a fresh database for each test."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twisted.internet import reactor, task

from tests.state.pgserver import PgServer, find_bindir

ROLE = "netbootd"


async def eventually(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.02) -> float:
    """Waits (on the reactor) until `predicate()` is true; the seconds it took. Fails after `timeout`."""
    start = reactor.seconds()
    while not predicate():
        if reactor.seconds() - start > timeout:
            raise AssertionError(f"not true within {timeout} s: {predicate}")
        await task.deferLater(reactor, step, lambda: None)
    return reactor.seconds() - start


class Postgres:
    """The running server, its role's password (in a file fit for state.password_file), and the
    databases made for the tests."""

    def __init__(self, server: PgServer, password_file: Path) -> None:
        self.server = server
        self.password_file = password_file
        self._names = itertools.count(1)

    def database(self) -> str:
        name = f"state_{next(self._names)}"
        self.server.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return name

    def url(self, database: str) -> str:
        return self.server.url(ROLE, database)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory) -> Iterator[Postgres]:
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL's server is not installed (Debian: apt-get install postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = PgServer(bindir)
    try:
        server.start()
        password = secrets.token_urlsafe(18)
        server.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")
        password_file = tmp_path_factory.mktemp("pg-secret") / "password"
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        yield Postgres(server, password_file)
    finally:
        server.destroy()


@pytest.fixture
def postgres(postgres_server) -> Postgres:
    if postgres_server.server.proc is None:  # a test that stopped it failed before starting it again
        postgres_server.server.start()
    return postgres_server
