"""Per-client token buckets: how the HTTP and TFTP edges refuse a client that asks too fast.

Each client (an IP address) has a bucket of `burst` tokens refilled at `rate` tokens a second;
a request takes one token or is refused, and the refusal says how long until the next token.
A boot storm never notices: every machine has its own address and asks a handful of times.

Memory is bounded: at most `max_clients` buckets. When they are all taken, the clients seen
longest ago are forgotten (they start full again, which errs towards serving).

Pure: the clock is injected (`reactor.seconds` in the daemon, a fake in tests).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_CLIENTS = 65536


class PerClientLimiter:
    """`take(client)` → 0.0 if allowed, else seconds until a token is available.

    `rate <= 0` disables the limiter: every request is allowed and nothing is stored.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.clock = clock
        self.max_clients = max(1, int(max_clients))
        # client → (tokens, time of last update); least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and math.isfinite(self.rate)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float:
        if not self.enabled:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            tokens = float(self.burst)
            self._make_room()
        else:
            tokens, then = bucket
            tokens = min(float(self.burst), tokens + max(0.0, now - then) * self.rate)
            self._buckets.move_to_end(client)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _make_room(self) -> None:
        if len(self._buckets) < self.max_clients:
            return
        # Forget the clients not seen for longest (an eighth, so this runs rarely): their
        # buckets have had the most time to refill, and a forgotten client starts full.
        for _ in range(max(1, self.max_clients // 8)):
            self._buckets.popitem(last=False)


def retry_after(seconds: float) -> int:
    """A Retry-After value: whole seconds, at least 1."""
    if not math.isfinite(seconds):
        return 1
    return max(1, math.ceil(seconds))
