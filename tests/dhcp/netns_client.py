"""A PXE client (or relay agent) for the namespace tests, decoding answers with dpkt only.

Runs inside the client namespace (`ip netns exec NS python netns_client.py MODE ...`) and prints
one JSON object per answer received, then exits after `--expect` answers or `--wait` seconds.

Modes:
- discover: an address-less client: a raw Ethernet frame from 0.0.0.0:68 to 255.255.255.255:67 on
  `--iface`, answers read from the same AF_PACKET socket (the interface has no IPv4 address).
- proxy: an EFI PXE client's REQUEST from its leased address to the boot server's UDP 4011.
- relay: a relay agent: a DISCOVER with giaddr set, unicast from giaddr:67 to the server's 67.
- lease: what firmware does beside a proxy, as `discover` does it: DISCOVER; once both a lease OFFER
  and a proxy OFFER (yiaddr 0) are in, the REQUEST for the lease (option 54 = its server id, option
  50 = its address); then a second DISCOVER, the barrier. Prints every answer (field `to`: discover,
  request, barrier) until both the lease server's ACK (or NAK) and the proxy's OFFER to the barrier
  are in: the proxy handles its packets in order on one socket and answers out of one interface, so
  by then it has sent whatever it would ever send to the REQUEST. `--wait` only bounds the run.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import time

import dpkt

ETH_P_IP = 0x0800


def dhcp_request(
    mac: bytes,
    xid: int,
    msgtype: int,
    arch: int,
    *,
    giaddr: str = "0.0.0.0",
    ciaddr="0.0.0.0",
    broadcast: bool | None = None,
    extra: tuple[tuple[int, bytes], ...] = (),
    user_class: str = "",
):
    vendor = b"PXEClient:Arch:%05d:UNDI:003000" % arch
    if user_class:  # "iPXE": iPXE asking for its script
        extra = (*extra, (77, user_class.encode()))
    return dpkt.dhcp.DHCP(
        op=1,
        xid=xid,
        flags=0x8000 if (msgtype == 1 if broadcast is None else broadcast) else 0,
        hops=1 if giaddr != "0.0.0.0" else 0,
        giaddr=struct.unpack("!I", socket.inet_aton(giaddr))[0],
        ciaddr=struct.unpack("!I", socket.inet_aton(ciaddr))[0],
        chaddr=mac + b"\0" * 10,
        opts=[
            (53, bytes([msgtype])),
            *extra,
            (57, b"\x05\xc0"),
            (93, arch.to_bytes(2, "big")),
            (94, b"\x01\x03\x00"),
            (60, vendor),
            (97, b"\x00" + bytes(range(16))),
        ],
    )


def describe(ip_src: str, sport: int, ip_dst: str, dport: int, payload: bytes) -> dict:
    d = dpkt.dhcp.DHCP(payload)
    return {
        "src": ip_src,
        "sport": sport,
        "dst": ip_dst,
        "dport": dport,
        "len": len(payload),
        "xid": d.xid,
        "flags": d.flags,
        "yiaddr": socket.inet_ntoa(struct.pack("!I", d.yiaddr)),
        "siaddr": socket.inet_ntoa(struct.pack("!I", d.siaddr)),
        "giaddr": socket.inet_ntoa(struct.pack("!I", d.giaddr)),
        "chaddr": d.chaddr[:6].hex(),
        "sname": d.sname.split(b"\0")[0].decode(),
        "file": d.file.split(b"\0")[0].decode(),
        "options": {str(code): value.hex() for code, value in d.opts},
    }


class RawClient:
    """An address-less client on `iface`: broadcast frames out, answers to port 68 in, both on one
    AF_PACKET socket (the interface has no IPv4 address, so no UDP socket would see them)."""

    def __init__(self, iface: str, mac: bytes) -> None:
        self.mac = mac
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self.sock.bind((iface, ETH_P_IP))

    def broadcast(self, dhcp: bytes) -> None:
        udp = dpkt.udp.UDP(sport=68, dport=67, data=dhcp)
        udp.ulen = len(udp)
        ip = dpkt.ip.IP(src=b"\0\0\0\0", dst=b"\xff\xff\xff\xff", p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=udp)
        ip.len = len(ip)
        self.sock.send(bytes(dpkt.ethernet.Ethernet(dst=b"\xff" * 6, src=self.mac, type=ETH_P_IP, data=ip)))

    def answer(self, xids: set[int], deadline: float) -> dict | None:
        """The next answer to one of `xids` (decoded), or None once `deadline` passed."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            raw, (_ifname, _proto, pkttype, *_rest) = self.sock.recvfrom(65535)
            if pkttype == socket.PACKET_OUTGOING:
                continue
            try:
                eth = dpkt.ethernet.Ethernet(raw)
                ipp = eth.data
                u = ipp.data
                if not isinstance(u, dpkt.udp.UDP) or u.dport != 68:
                    continue
                if int.from_bytes(bytes(u.data)[4:8], "big") not in xids:
                    continue
                info = describe(
                    socket.inet_ntoa(ipp.src), u.sport, socket.inet_ntoa(ipp.dst), u.dport, bytes(u.data)
                )
            except (dpkt.UnpackError, AttributeError):
                continue
            info["eth_dst"] = eth.dst.hex()
            return info


def run_discover(args) -> None:
    mac = bytes.fromhex(args.mac.replace(":", ""))
    xid = int.from_bytes(os.urandom(4), "big")
    client = RawClient(args.iface, mac)
    client.broadcast(bytes(dhcp_request(mac, xid, 1, args.arch, user_class=args.user_class)))
    deadline = time.monotonic() + args.wait
    for _ in range(args.expect):
        info = client.answer({xid}, deadline)
        if info is None:
            break
        print(json.dumps(info), flush=True)


def run_lease(args) -> None:
    mac = bytes.fromhex(args.mac.replace(":", ""))
    xid, barrier = (int.from_bytes(os.urandom(4), "big") for _ in range(2))
    client = RawClient(args.iface, mac)
    deadline = time.monotonic() + args.wait

    def show(info: dict, to: str) -> dict:
        info["to"] = to
        print(json.dumps(info), flush=True)
        return info

    client.broadcast(bytes(dhcp_request(mac, xid, 1, args.arch)))
    offers: dict[bool, dict] = {}  # is a proxy offer (yiaddr 0) -> the first such OFFER
    while len(offers) < 2:
        info = client.answer({xid}, deadline)
        if info is None:
            raise SystemExit(f"no lease OFFER and proxy OFFER within {args.wait} s: {offers}")
        offers.setdefault(show(info, "discover")["yiaddr"] == "0.0.0.0", info)
    lease = offers[False]
    extra = ((54, bytes.fromhex(lease["options"]["54"])), (50, socket.inet_aton(lease["yiaddr"])))
    client.broadcast(bytes(dhcp_request(mac, xid, 3, args.arch, broadcast=True, extra=extra)))
    client.broadcast(bytes(dhcp_request(mac, barrier, 1, args.arch)))
    server_answered = proxy_done = False  # the lease server's ACK/NAK; the proxy's barrier OFFER
    while not (server_answered and proxy_done):
        info = client.answer({xid, barrier}, deadline)
        if info is None:
            raise SystemExit(f"within {args.wait} s: lease server answered {server_answered}, barrier {proxy_done}")
        show(info, "request" if info["xid"] == xid else "barrier")
        if info["xid"] == xid:
            server_answered |= info["yiaddr"] != "0.0.0.0" or info["options"].get("53") == "06"
        else:
            proxy_done |= info["yiaddr"] == "0.0.0.0"


def run_udp(args, sock: socket.socket, payload: bytes, dest: tuple[str, int]) -> None:
    sock.sendto(payload, dest)
    received = 0
    deadline = time.monotonic() + args.wait
    while received < args.expect and time.monotonic() < deadline:
        if not select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        data, (host, port) = sock.recvfrom(65535)
        local = sock.getsockname()
        print(json.dumps(describe(host, port, local[0], local[1], data)), flush=True)
        received += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["discover", "proxy", "relay", "lease"])
    parser.add_argument("--iface", default="")
    parser.add_argument("--mac", default="52:54:00:77:00:10")
    parser.add_argument("--arch", type=int, default=7)
    parser.add_argument("--server", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--bind", default="")
    parser.add_argument("--expect", type=int, default=1)
    parser.add_argument("--wait", type=float, default=10.0)
    parser.add_argument("--user-class", default="", help='option 77, e.g. "iPXE" (discover only)')
    args = parser.parse_args()
    mac = bytes.fromhex(args.mac.replace(":", ""))
    xid = int.from_bytes(os.urandom(4), "big")
    if args.mode == "discover":
        run_discover(args)
        return
    if args.mode == "lease":
        run_lease(args)
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.mode == "proxy":
        sock.bind((args.bind, 4011))
        payload = bytes(dhcp_request(mac, xid, 3, args.arch, ciaddr=args.bind))
        run_udp(args, sock, payload, (args.server, args.port or 4011))
    else:
        sock.bind((args.bind, 67))
        payload = bytes(dhcp_request(mac, xid, 1, args.arch, giaddr=args.bind))
        run_udp(args, sock, payload, (args.server, args.port or 67))


if __name__ == "__main__":
    main()
