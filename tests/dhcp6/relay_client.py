"""A DHCPv6 client for tests/dhcp6/test_relay.py, run inside the client's network namespace: sends
one captured SOLICIT from [link-local]:546 to ff02::1:2 on an interface and prints the hex of every
datagram that comes back to port 546 within the timeout, one a line.

    python tests/dhcp6/relay_client.py IFACE FIXTURE_FILE [--timeout S]
"""

from __future__ import annotations

import argparse
import select
import socket
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("iface")
    parser.add_argument("fixture", type=Path)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    ifindex = socket.if_nametoindex(args.iface)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        s.bind(("::", 546))
        s.sendto(args.fixture.read_bytes(), ("ff02::1:2", 547, 0, ifindex))
        deadline = time.monotonic() + args.timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            data, addr = s.recvfrom(4096)
            print(f"{addr[0]} {data.hex()}", flush=True)


if __name__ == "__main__":
    main()
