"""Known machines first: a flood of DISCOVERs from spoofed MACs must not starve real boots.

A spoofed MAC costs an attacker nothing and, with a default.toml, every one would be answered: a
flood at tens of thousands a second outruns one Python process, the socket buffer fills, and a
configured machine's DISCOVER waits behind the flood (or is dropped by the kernel). So requests
from MACs without a machine file of their own are admitted at most `rate` a second (burst
`burst`), decided from the packet's chaddr before it is even decoded (a couple of microseconds,
so the queue drains at flood speed); a machine that has a file is always admitted. `rate` is far
above a real storm of new machines (a rack of 4000 powering on within two seconds asks ~2000 a
second, each a few times); beyond it, a new machine retries as firmware does.

And while the process is behind (a read of the socket found more queued than it takes) during a
flood (the budget ran out within the last FLOOD_MEMORY seconds), unknown MACs are not answered at
all: whatever the budget, a flood beyond what this process can answer would otherwise build a queue
in the kernel that a configured machine's DISCOVER waits behind. A storm of new machines also puts
the process behind, but stays within the budget: it is answered in full, only later (shedding it
cost a 4000-machine storm of unknown MACs a 4 s DISCOVER retry each, bench/storm.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

CHADDR = slice(28, 34)  # BOOTP's client hardware address (Ethernet: 6 bytes)
FLOOD_MEMORY = 1.0  # seconds a refusal keeps the guard in "flooding"


class FloodGuard:
    def __init__(self, known: Callable[[str], bool], rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.known = known  # a MAC (colon form) has a machine file
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock()
        self.refused_at = float("-inf")  # the last time the budget ran out

    def is_known(self, datagram: bytes) -> bool:
        raw = datagram[CHADDR]
        return len(raw) == 6 and self.known(":".join(f"{b:02x}" for b in raw))

    def order(self, batch: list) -> list:
        """A batch of received (datagram, ...) tuples, configured machines first (each read of the
        socket is answered in this order, so a flood queued ahead of a real machine does not delay it)."""
        if self.rate <= 0 or len(batch) < 2:
            return batch
        known = [p for p in batch if self.is_known(p[0])]
        return known + [p for p in batch if not self.is_known(p[0])] if known else batch

    def admit(self, datagram: bytes) -> bool:
        """True: handle this packet; False: an unknown MAC over the budget (drop it unanswered)."""
        if self.rate <= 0 or self.is_known(datagram):
            return True
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.refused_at = now
        return False

    def flooding(self) -> bool:
        """Unknown MACs come faster than the budget: half the burst is spent (a flood at
        dnsmasq's rate spends it within a tenth of a second, a rack powering on over a second or
        two does not), or the budget ran out within the last FLOOD_MEMORY seconds."""
        if self.rate <= 0:
            return False
        now = self.clock()
        tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        return tokens < self.burst / 2 or now - self.refused_at < FLOOD_MEMORY
