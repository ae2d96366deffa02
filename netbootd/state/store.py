"""The one interface of the state store; netbootd.state.sqlite and netbootd.state.postgres
provide it, and netbootd.state.factory.open_store picks one from the settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from twisted.internet.defer import Deferred

from netbootd.state.model import Expect, Record, State, StoreStatus, Transition

# callback(mac, record): the machine's new record, None when it was forgotten. Called on the
# reactor thread, after the view has changed, for every change: this node's and other nodes'.
ChangeCallback = Callable[[str, Record | None], None]


class StateStore(Protocol):
    def view(self) -> Mapping[str, Record]:
        """Every machine's current record by colon-form MAC: a snapshot that never changes under
        its reader. Never blocks, never touches the database (the hot path reads it)."""
        ...

    def status(self) -> StoreStatus: ...

    def transition(self, mac: str, state: State | str, by: str, source: str, note: str = "",
                   expect: Expect = None) -> Deferred[Record]:
        """Fires with the machine's record once the change is durably committed and in the view.
        The same state again succeeds without a change. Errbacks StoreUnavailable (nothing
        changed: answer 503), Conflict (`expect` did not hold) or ValueError (not a MAC)."""
        ...

    def forget(self, mac: str, by: str, source: str = "", note: str = "") -> Deferred[Record | None]:
        """Drops the machine's record (history is kept); fires with the record it had, or None."""
        ...

    def history(self, mac: str, limit: int = 50) -> Deferred[list[Transition]]:
        """The machine's transitions, newest first."""
        ...

    def on_change(self, callback: ChangeCallback) -> None: ...

    def start(self) -> Deferred[None]:
        """Opens the database, migrates its schema and loads the view. Errbacks StateStoreError
        when the store cannot be used at all (the service must then not start)."""
        ...

    def stop(self) -> Deferred[None]: ...
