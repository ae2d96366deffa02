"""The PostgreSQL fixtures of tests/state, for the two-daemon lifecycle tests."""

from tests.state.conftest import postgres, postgres_server  # noqa: F401
