"""Machine lifecycle states (provisioning → provisioned / failed), kept across restarts and shared
by every netbootd that uses the same database. Self-contained: nothing here knows of the boot
core, the service or the protocol edges; they use it through StateStore.

- model: State, Record, Transition, StoreStatus and the errors;
- store: the StateStore interface;
- sqlite, postgres: its two implementations; factory.open_store picks one from the settings.
"""

from netbootd.state.factory import open_store
from netbootd.state.model import (
    Conflict,
    Expect,
    Record,
    State,
    StateStoreError,
    StoreStatus,
    StoreUnavailable,
    Transition,
    normalize_mac,
)
from netbootd.state.store import ChangeCallback, StateStore

__all__ = [
    "ChangeCallback",
    "Conflict",
    "Expect",
    "Record",
    "State",
    "StateStore",
    "StateStoreError",
    "StoreStatus",
    "StoreUnavailable",
    "Transition",
    "normalize_mac",
    "open_store",
]
