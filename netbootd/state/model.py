"""What the state store keeps: a machine's lifecycle state (its current Record) and every change of
it (a Transition), plus the store's own health (StoreStatus) and the errors it raises."""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Collection

import attrs


class State(enum.StrEnum):
    PROVISIONING = "provisioning"  # gets its [boot]
    PROVISIONED = "provisioned"  # the installer reported done: boots from its disk
    FAILED = "failed"  # the installer reported a failure: waits for an operator


# What `expect` may say: one state, or the states (None: no record at all) the machine may be in.
Expect = State | Collection[State | None] | None

_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}$")


def normalize_mac(mac: str) -> str:
    """"52-54-00-AB-CD-EF", "525400abcdef" or "52:54:00:ab:cd:ef" → "52:54:00:ab:cd:ef"; ValueError otherwise."""
    text = mac.strip().lower()
    if not _MAC.match(text):
        raise ValueError(f"{mac!r} is not a MAC address")
    digits = text.replace(":", "").replace("-", "")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


@attrs.frozen
class Record:
    """A machine's current state. `seq` grows with every change the database commits (across all
    machines and all nodes), so of two records of one machine the larger seq is the newer."""

    mac: str  # colon form, lower case
    state: State
    since: float  # epoch seconds of the change
    by: str  # who made it: "operator alice", "done_url", "ignition", ...
    source: str  # the client's address, or ""
    seq: int


@attrs.frozen
class Transition:
    """One change, as kept in the history. `state` None: the record was forgotten (forget())."""

    mac: str
    state: State | None
    previous: State | None  # None: the machine had no record
    since: float
    by: str
    source: str
    note: str
    seq: int


@attrs.frozen
class StoreStatus:
    ok: bool
    reason: str  # "" when ok; otherwise what is wrong, in words an operator can act on
    since: float  # epoch seconds since which this status holds
    loaded: bool  # the view was read in full at least once (False: it is empty, not "no machines")
    where: str  # "SQLite /var/lib/netbootd/state.sqlite3", "PostgreSQL db.example:5432/netbootd"

    @classmethod
    def up(cls, where: str, loaded: bool = True) -> StoreStatus:
        return cls(True, "", time.time(), loaded, where)


class StateStoreError(Exception):
    """The store cannot be used at all (a corrupt file, wrong credentials): start() raises it, and
    the message names the file or the setting and says what to do."""


class StoreUnavailable(Exception):
    """The database cannot take a change now; nothing was changed. Answer 503: the caller retries."""


class Conflict(Exception):
    """transition(expect=...) found the machine in another state; nothing was changed."""

    def __init__(self, mac: str, expected: Expect, current: Record | None) -> None:
        self.mac = mac
        self.expected = expected
        self.current = current
        now = current.state.value if current else "no record"
        super().__init__(f"{mac} is {now}, not {describe_expect(expected)}")


def describe_expect(expect: Expect) -> str:
    if expect is None:
        return "anything"
    if isinstance(expect, State):
        return expect.value
    return " or ".join(s.value if s is not None else "no record" for s in expect)


def expected(expect: Expect, current: State | None) -> bool:
    if expect is None:
        return True
    if isinstance(expect, State):
        return current == expect
    return current in expect


class Decision(enum.Enum):
    NOOP = "noop"  # already in that state: succeed without a new history row
    CONFLICT = "conflict"
    WRITE = "write"


def decide(current: Record | None, state: State, expect: Expect) -> Decision:
    """The one rule both databases apply inside their transaction. The same state again is a
    success before `expect` is asked: an installer that retries a done call that did commit (its
    answer was lost) must not be told it conflicts."""
    if current is not None and current.state == state:
        return Decision.NOOP
    if not expected(expect, current.state if current else None):
        return Decision.CONFLICT
    return Decision.WRITE
