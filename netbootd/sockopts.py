"""Socket options shared by the UDP edges (DHCP, TFTP)."""

from __future__ import annotations

import socket

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; lets root exceed net.core.rmem_max

# A boot storm arrives in bursts (a rack powering on), and this process may be busy for tens of
# milliseconds (hundreds of downloads to feed). The default receive buffer (~200 KiB, a few
# hundred requests) overflows then, and a dropped DISCOVER or RRQ costs the firmware a retry
# seconds later, where a queued one costs milliseconds. 4 MiB holds a few thousand requests.
STORM_RECEIVE_BUFFER = 4 << 20


def enlarge_receive_buffer(skt: socket.socket, size: int = STORM_RECEIVE_BUFFER) -> None:
    """As large as allowed: SO_RCVBUFFORCE needs CAP_NET_ADMIN; without it the kernel caps
    SO_RCVBUF at net.core.rmem_max (raise that sysctl on a boot server for large fleets)."""
    try:
        skt.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
