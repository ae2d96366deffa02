"""The simulated machines of bench/storm.py: one asyncio process, N machines, the whole boot flow.

Run by storm.py inside the clients' network namespace (`python storm_client.py SPEC.json`); prints
one JSON document (per-machine stage timings, failures, retries) on stdout.

Every machine has its own MAC, SMBIOS UUID and "leased" IPv4 address (a secondary address on the
clients' veth, added by storm.py; no address server is simulated: the lease is known in advance),
and follows the answers it gets, as firmware does, so the same client boots from netbootd and from
dnsmasq + nginx:

  BIOS PXE   DISCOVER (PXE ROM options) -> proxy OFFER: `file` (or, with a boot menu and no file, a
             4011 REQUEST/ACK) -> TFTP lock-step, blksize 1432 + tsize (the iPXE ROM's request in
             ../shared/captures/full-bios-undionly-chain)
  EFI PXE    DISCOVER (EDK2 options) -> OFFER without a file -> REQUEST to siaddr:4011 from
             leased-ip:4011 -> ACK naming the file -> TFTP as EDK2 does it (captured): a first RRQ
             with tsize 0, blksize 1468, windowsize 4 that is aborted (ERROR 8) once the OACK gives
             the size, then the download with blksize 1468, windowsize 4
  HTTP boot  DISCOVER (HTTPClient) -> OFFER with an http:// URL -> HEAD then GET (EDK2 HttpBootDxe)
  then, as the chained iPXE: DISCOVER with user class iPXE (+175) -> OFFER with the script URL ->
  GET script -> the script's `kernel`, `initrd` and `imgfetch` URLs in order, up to `boot`.

After each OFFER the machine also broadcasts the REQUEST it would send the site's address server
(fire and forget), which a proxy sees and may answer, as in a real storm.

Retries are bounded and firmware-like: DHCP retransmits after 4, 8, 16 s (PXE ROMs) or 1, 2, 4, 8 s
(iPXE); a TFTP packet is resent after 1, 2, 4, 4, 4 s of silence; an HTTP request gives up after
10 s without a connection or 60 s without a byte. A stage that fails (including a TFTP ERROR such
as "server busy") is retried up to `attempts` times after a short random back-off; then the machine
has failed. Body bytes are counted (into one shared buffer), never stored; sizes are checked.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import resource
import socket
import struct
import sys
import termios
import time
from urllib.parse import urlsplit

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
MAGIC = b"\x63\x82\x53\x63"
SITE_DHCP_SERVER = "10.255.255.254"  # the address server the machines "chose" (not simulated)

DHCP_ROM_TIMEOUTS = (4.0, 8.0, 16.0)
DHCP_IPXE_TIMEOUTS = (1.0, 2.0, 4.0, 8.0)
PROXY_TIMEOUTS = (4.0, 8.0, 16.0)
TFTP_TIMEOUTS = (1.0, 2.0, 4.0, 4.0, 4.0)  # silence before resending; then the attempt fails
HTTP_CONNECT_TIMEOUT = 10.0
HTTP_IDLE_TIMEOUT = 60.0  # iPXE has none of its own (TCP's); netbootd's http.stall_timeout is 60 s
SWEEP = 0.05

now = time.monotonic


class StageFailed(Exception):
    pass


# ------------------------------------------------------------------------------ DHCP


def _opt(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


PRL_ROM = bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60, 66, 67])
PRL_ROM += bytes([97, 128, 129, 130, 131, 132, 133, 134, 135])
PRL_IPXE = bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134, 135, 175, 203])
IPXE_175 = bytes.fromhex("b105011af41000eb03010000170101240101130101110101270101290101150101120101")

# (vendor class, arch, NDI, parameter request list, iPXE?) per firmware stage, from the captures
FIRMWARE = {
    "bios": (b"PXEClient:Arch:00000:UNDI:002001", 0, b"\x01\x02\x01", PRL_ROM, False),
    "efi": (b"PXEClient:Arch:00007:UNDI:003000", 7, b"\x01\x03\x00", PRL_ROM, False),
    "http": (b"HTTPClient:Arch:00016:UNDI:003000", 16, b"\x01\x03\x00", PRL_ROM, False),
    "ipxe-bios": (b"PXEClient:Arch:00000:UNDI:002001", 0, b"\x01\x02\x01", PRL_IPXE, True),
    "ipxe-efi": (b"PXEClient:Arch:00007:UNDI:003010", 7, b"\x01\x03\x0a", PRL_IPXE, True),
}


def dhcp_packet(msgtype: int, xid: int, mac: bytes, uuid: bytes, kind: str, *, ciaddr: str = "0.0.0.0",
                broadcast: bool = True, extra: bytes = b"") -> bytes:  # fmt: skip
    vendor, arch, ndi, prl, ipxe = FIRMWARE[kind]
    head = struct.pack("!BBBBIHH", 1, 1, 6, 0, xid, 0, 0x8000 if broadcast else 0)
    head += socket.inet_aton(ciaddr) + bytes(12) + mac + bytes(10) + bytes(64 + 128)
    opts = _opt(53, bytes([msgtype])) + _opt(57, b"\x05\xc0") + _opt(93, arch.to_bytes(2, "big"))
    opts += _opt(94, ndi) + _opt(60, vendor)
    if ipxe:
        opts += _opt(77, b"iPXE") + _opt(175, IPXE_175) + _opt(61, b"\x01" + mac)
    opts += _opt(55, prl) + _opt(97, b"\x00" + uuid) + extra + b"\xff"
    return head + MAGIC + opts


def parse_reply(data: bytes) -> dict | None:
    if len(data) < 240 or data[0] != 2 or data[236:240] != MAGIC:
        return None
    opts: dict[int, bytes] = {}
    i = 240
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        n = data[i + 1]
        opts[code] = opts.get(code, b"") + data[i + 2 : i + 2 + n]
        i += 2 + n
    file = data[108:236].split(b"\0", 1)[0].decode("latin-1")
    if 67 in opts:
        file = opts[67].split(b"\0", 1)[0].decode("latin-1")
    return {
        "type": opts.get(53, b"\0")[0],
        "xid": int.from_bytes(data[4:8], "big"),
        "siaddr": socket.inet_ntoa(data[20:24]),
        "file": file,
        "opts": opts,
    }


def pxe_menu_item(opt43: bytes) -> bytes | None:
    """The first boot item (type) of a PXE boot menu (option 43 sub-option 9), if any."""
    i = 0
    while i + 1 < len(opt43):
        code, n = opt43[i], opt43[i + 1]
        if code == 255:
            break
        if code == 9 and n >= 3:
            return opt43[i + 2 : i + 4]
        i += 2 + n
    return None


class DhcpMux(asyncio.DatagramProtocol):
    """The clients' one port-68 socket: broadcast answers are dispatched to waiters by xid."""

    def __init__(self) -> None:
        self.waiters: dict[int, asyncio.Future] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.stray = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 240 or data[0] != 2:
            return
        fut = self.waiters.get(int.from_bytes(data[4:8], "big"))
        if fut is None or fut.done():
            self.stray += 1  # e.g. the proxy's ACK to our REQUEST
            return
        reply = parse_reply(data)
        if reply is not None and reply["type"] == 2:  # OFFER
            fut.set_result(reply)


async def dhcp_offer(ctx: Ctx, m: Machine, kind: str, timeouts: tuple[float, ...]) -> dict:
    """DISCOVER (retransmitted on the firmware's schedule) -> the proxy's OFFER; then the
    broadcast REQUEST the machine sends its address server."""
    xid = random.getrandbits(32)
    fut = ctx.loop.create_future()
    ctx.mux.waiters[xid] = fut
    try:
        for attempt, wait in enumerate(timeouts):
            if attempt:
                m.retransmits += 1
            ctx.mux.transport.sendto(dhcp_packet(1, xid, m.mac, m.uuid, kind), ("255.255.255.255", 67))
            try:
                reply = await asyncio.wait_for(asyncio.shield(fut), wait)
                break
            except TimeoutError:
                continue
        else:
            raise StageFailed("no OFFER")
    finally:
        del ctx.mux.waiters[xid]
    if ctx.send_request:
        extra = _opt(54, socket.inet_aton(SITE_DHCP_SERVER)) + _opt(50, socket.inet_aton(m.ip))
        ctx.mux.transport.sendto(dhcp_packet(3, xid, m.mac, m.uuid, kind, extra=extra), ("255.255.255.255", 67))
    return reply


class ProxyRequest(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future, xid: int) -> None:
        self.fut, self.xid = fut, xid

    def datagram_received(self, data: bytes, addr) -> None:
        reply = parse_reply(data)
        if reply is not None and reply["xid"] == self.xid and reply["type"] == 5 and not self.fut.done():
            self.fut.set_result(reply)


async def proxy_ack(ctx: Ctx, m: Machine, kind: str, server: str, offer: dict) -> dict:
    """PXE boot-server discovery: REQUEST unicast to server:4011 from leased-ip:4011 -> ACK."""
    extra = b""
    item = pxe_menu_item(offer["opts"].get(43, b""))
    if item is not None:  # answer the menu with its first item, layer 0 (a ROM with no prompt)
        extra = _opt(43, _opt(71, item + b"\0\0") + b"\xff")
    xid = random.getrandbits(32)
    packet = dhcp_packet(3, xid, m.mac, m.uuid, kind, ciaddr=m.ip, broadcast=False, extra=extra)
    fut = ctx.loop.create_future()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((m.ip, 4011))
    sock.setblocking(False)
    transport, _ = await ctx.loop.create_datagram_endpoint(lambda: ProxyRequest(fut, xid), sock=sock)
    try:
        for attempt, wait in enumerate(PROXY_TIMEOUTS):
            if attempt:
                m.retransmits += 1
            transport.sendto(packet, (server, 4011))
            try:
                return await asyncio.wait_for(asyncio.shield(fut), wait)
            except TimeoutError:
                continue
        raise StageFailed("no 4011 ACK")
    finally:
        transport.close()


# ------------------------------------------------------------------------------ TFTP


class TftpGet(asyncio.DatagramProtocol):
    """One RRQ, firmware-style: lock-step (or `windowsize` blocks per ACK if the server agrees).
    probe=True: stop after the OACK with ERROR 8 (EDK2's size query); result = tsize."""

    def __init__(self, ctx: Ctx, m: Machine, server: str, name: str, options: dict[str, str], probe: bool):
        self.ctx, self.m = ctx, m
        self.server = (server, 69)
        self.peer: tuple | None = None
        self.rrq = b"\0\x01" + name.encode() + b"\0octet\0"
        self.rrq += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in options.items())
        self.probe = probe
        self.blksize, self.windowsize, self.tsize = 512, 1, None
        self.expected = 1  # next block (unwrapped)
        self.unacked = 0
        self.received = 0
        self.fut = ctx.loop.create_future()
        self.last = b""
        self.last_to: tuple = self.server
        self.tries = 0
        self.deadline = 0.0
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send(self.rrq, self.server)

    def send(self, packet: bytes, dest: tuple) -> None:
        self.last, self.last_to = packet, dest
        self.deadline = now() + TFTP_TIMEOUTS[min(self.tries, len(TFTP_TIMEOUTS) - 1)]
        self.transport.sendto(packet, dest)

    def ack(self, block: int) -> None:
        self.unacked = 0
        self.send(b"\0\x04" + (block & 0xFFFF).to_bytes(2, "big"), self.peer)

    def finish(self, result=None, error: str | None = None) -> None:
        if not self.fut.done():
            if error:
                self.fut.set_exception(StageFailed(error))
            else:
                self.fut.set_result(result)

    def tick(self, t: float) -> None:
        if self.fut.done() or t < self.deadline:
            return
        if self.tries >= len(TFTP_TIMEOUTS):
            self.finish(error="tftp timeout" if self.peer else "tftp: no answer to RRQ")
            return
        self.tries += 1
        self.m.retransmits += 1
        self.send(self.last, self.last_to)

    def datagram_received(self, data: bytes, addr) -> None:
        if self.fut.done() or len(data) < 4:
            return
        if self.peer is None:
            self.peer = addr
        elif addr != self.peer:
            self.transport.sendto(b"\0\x05\0\x05unknown transfer ID\0", addr)
            return
        op = data[1]
        if op == 6:  # OACK
            if self.expected != 1:
                return
            fields = data[2:].split(b"\0")
            opts = {fields[i].decode().lower(): fields[i + 1].decode() for i in range(0, len(fields) - 1, 2)}
            self.blksize = int(opts.get("blksize", 512))
            self.windowsize = int(opts.get("windowsize", 1))
            self.tsize = int(opts["tsize"]) if "tsize" in opts else None
            self.tries = 0
            if self.probe:
                self.transport.sendto(b"\0\x05\0\x08User aborted the transfer\0", self.peer)
                self.finish(self.tsize)
                return
            self.ack(0)
        elif op == 3:
            if self.probe:
                self.finish(error="tftp: no OACK to the size query")
                return
            block = int.from_bytes(data[2:4], "big")
            if block == self.expected & 0xFFFF:
                self.tries = 0
                size = len(data) - 4
                self.received += size
                self.expected += 1
                self.unacked += 1
                if size < self.blksize:
                    self.ack(block)
                    if self.tsize is not None and self.received != self.tsize:
                        self.finish(error=f"tftp: got {self.received} bytes of {self.tsize}")
                    else:
                        self.finish(self.received)
                elif self.unacked >= self.windowsize:
                    self.ack(block)
                else:
                    self.deadline = now() + TFTP_TIMEOUTS[0]
            elif self.windowsize > 1 and ((block - self.expected) & 0xFFFF) < 0x8000 and self.unacked:
                self.ack(self.expected - 1)  # RFC 7440: a gap; ask for the rest of the window again
        elif op == 5:
            code = int.from_bytes(data[2:4], "big")
            self.finish(error=f"tftp ERROR {code}: {data[4:].split(bytes(1))[0].decode('latin-1')[:80]}")


async def tftp_get(ctx: Ctx, m: Machine, server: str, name: str, options: dict[str, str], probe: bool = False):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((m.ip, 0))
    sock.setblocking(False)
    proto = TftpGet(ctx, m, server, name, options, probe)
    transport, _ = await ctx.loop.create_datagram_endpoint(lambda: proto, sock=sock)
    ctx.timed.add(proto)
    try:
        return await proto.fut
    finally:
        ctx.timed.discard(proto)
        transport.close()


# ------------------------------------------------------------------------------ HTTP

F_SETPIPE_SZ = 1031
RCVLOWAT = 512 << 10
_SHARED = bytearray(1 << 20)
_SHARED_VIEW = memoryview(_SHARED)


class Sink:
    """Where counted body bytes go: splice(2) socket -> pipe -> /dev/null moves pages without
    copying them into this process, so the simulated machines cost little CPU per byte (the
    host's 2 cores are shared with the server under test). Falls back to recv_into."""

    def __init__(self) -> None:
        self.ok = hasattr(os, "splice")
        if self.ok:
            self.r, self.w = os.pipe()
            try:
                fcntl.fcntl(self.w, F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
            self.null = os.open(os.devnull, os.O_WRONLY)

    def drain(self, fd: int, want: int) -> int:
        """Up to `want` bytes from socket `fd`, discarded; 0 at EOF; raises BlockingIOError."""
        if self.ok:
            try:
                n = os.splice(fd, self.w, min(want, 1 << 20), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except OSError as exc:
                if isinstance(exc, BlockingIOError):
                    raise
                self.ok = False  # splice unsupported here: copy instead
                return self.drain(fd, want)
            left = n
            while left:
                left -= os.splice(self.r, self.null, left, flags=os.SPLICE_F_MOVE)
            return n
        return _recv_into(fd, want)


def _recv_into(fd: int, want: int) -> int:
    return os.readv(fd, [_SHARED_VIEW[: min(want, len(_SHARED))]])


class HttpConn:
    """One keep-alive HTTP/1.1 connection on a plain non-blocking socket (the loop's add_reader):
    bodies are counted (Sink), or kept when `store`."""

    def __init__(self, ctx: Ctx, sock: socket.socket) -> None:
        self.ctx, self.sock, self.fd = ctx, sock, sock.fileno()
        self.closed = False
        self.fut: asyncio.Future | None = None
        self.last_rx = now()
        self.lowat = 1
        self.queued = 0

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.ctx.loop.remove_reader(self.fd)
            self.sock.close()

    def request(self, method: str, host: str, target: str, store: bool) -> asyncio.Future:
        self.fut = self.ctx.loop.create_future()
        self.method, self.store = method, store
        self.state, self.head, self.body = "head", bytearray(), bytearray()
        self.length: int | None = None
        self.chunked = False
        self.got = 0
        self.last_rx = now()
        data = f"{method} {target} HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.0.0+\r\nHost: {host}\r\n\r\n"
        try:
            if self.sock.send(data.encode()) != len(data):
                raise OSError("short send")
        except OSError as exc:
            self.fail(f"http: send: {exc}")
            return self.fut
        self.ctx.loop.add_reader(self.fd, self.readable)
        return self.fut

    def fail(self, why: str) -> None:
        self.close()
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(StageFailed(why))

    def readable(self) -> None:
        try:
            self._readable()
        except BlockingIOError:
            pass
        except (OSError, ValueError) as exc:
            self.fail(f"http: {type(exc).__name__}: {exc}")

    def _readable(self) -> None:
        self.last_rx = now()
        if self.state == "head":
            data = self.sock.recv(65536)
            if not data:
                self.fail("http: connection closed by server")
                return
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self.fail("http: header too long")
                return
            lines = bytes(self.head[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                self.headers[k.strip().lower()] = v.strip()
            self.keep = parts[0] == "HTTP/1.1" and self.headers.get("connection", "").lower() != "close"
            rest = bytes(self.head[end + 4 :])
            self.head = bytearray()
            self.state = "body"
            if "content-length" in self.headers:
                self.length = int(self.headers["content-length"])
            self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
            if self.method == "HEAD" or self.status in (204, 304) or self.length == 0:
                self.done()
                return
            if rest:
                self.take(rest)
            return
        if self.store or self.chunked or self.length is None:
            data = self.sock.recv(1 << 20)
            if not data:
                if self.length is None and not self.chunked:
                    self.done()  # body delimited by the close
                else:
                    self.fail("http: connection closed mid-body")
                return
            self.take(data)
            return
        try:
            while self.got < self.length:  # counted, not kept
                n = self.ctx.sink.drain(self.fd, self.length - self.got)
                if n == 0:
                    self.fail(f"http: connection closed after {self.got} of {self.length} bytes")
                    return
                self.got += n
        except BlockingIOError:
            # Wake up again only when a good chunk (or the rest) is there: fewer wake-ups of this
            # process, whose CPU the server under test needs (a server writing 64 KiB at a time
            # would otherwise wake it per 64 KiB).
            lowat = min(self.length - self.got, RCVLOWAT)
            if lowat != self.lowat:
                self.lowat = lowat
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            return
        if self.lowat != 1:
            self.lowat = 1
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        self.done()

    def take(self, data: bytes) -> None:
        self.got += len(data)
        if self.store or self.chunked:
            self.body += data
            if len(self.body) > (64 << 20):
                self.fail("http: stored body too large")
                return
        if self.chunked:
            if self.body.endswith(b"0\r\n\r\n"):
                self.body = dechunk(self.body)
                self.done()
        elif self.length is not None and self.got >= self.length:
            self.done()

    def done(self) -> None:
        self.ctx.loop.remove_reader(self.fd)
        if not self.keep:
            self.close()
        self.fut.set_result((self.status, self.headers, self.got if not self.chunked else len(self.body),
                             bytes(self.body)))  # fmt: skip

    def tick(self, t: float) -> None:
        if self.fut is None or self.fut.done() or t - self.last_rx <= HTTP_IDLE_TIMEOUT:
            return
        # With SO_RCVLOWAT the socket is readable only once a chunk is queued: bytes that arrived
        # but were not read yet are activity too.
        try:
            queued = struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            queued = self.queued
        if queued != self.queued:
            self.queued, self.last_rx = queued, t
            return
        self.fail(f"http: {HTTP_IDLE_TIMEOUT:.0f} s without data")


def dechunk(raw: bytearray) -> bytearray:
    out, i = bytearray(), 0
    while True:
        j = raw.find(b"\r\n", i)
        size = int(bytes(raw[i:j]).split(b";")[0], 16)
        if size == 0:
            return out
        out += raw[j + 2 : j + 2 + size]
        i = j + 2 + size + 2


class HttpClient:
    """A machine's HTTP: one keep-alive connection per server, reopened when the server closes it."""

    def __init__(self, ctx: Ctx, m: Machine) -> None:
        self.ctx, self.m = ctx, m
        self.conns: dict[tuple[str, int], HttpConn] = {}

    async def fetch(self, url: str, method: str = "GET", store: bool = False) -> tuple[int, dict, int, bytes]:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise StageFailed(f"unsupported URL {url[:80]}")
        addr = (parts.hostname or "", parts.port or 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn = self.conns.get(addr)
        if conn is None or conn.closed:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((self.m.ip, 0))
                await asyncio.wait_for(self.ctx.loop.sock_connect(sock, addr), HTTP_CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                sock.close()
                raise StageFailed(f"http: connect: {exc or 'timeout'}") from None
            conn = self.conns[addr] = HttpConn(self.ctx, sock)
        self.ctx.timed.add(conn)
        try:
            status, headers, size, body = await conn.request(method, parts.netloc, target, store)
        finally:
            self.ctx.timed.discard(conn)
        if status != 200:
            raise StageFailed(f"http: {method} {parts.path} -> {status}")
        return status, headers, size, body

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


# ------------------------------------------------------------------------------ the machines


class Ctx:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.mux = DhcpMux()
        self.timed: set = set()
        self.lags: list[float] = []
        self.sink = Sink()
        self.send_request = spec.get("send_request", True)
        self.sizes: dict[str, int] = spec.get("sizes", {})
        self.attempts = int(spec.get("attempts", 3))
        self.t0 = now()


class Machine:
    def __init__(self, index: int, firmware: str, ip: str, rng: random.Random, mac_offset: int = 0) -> None:
        self.index, self.firmware, self.ip = index, firmware, ip
        self.mac = bytes([0x52, 0x54, 0x01]) + ((index + mac_offset) & 0xFFFFFF).to_bytes(3, "big")
        self.uuid = rng.randbytes(16)
        self.stages: dict[str, list[float]] = {}  # name -> [start, duration, attempts]
        self.retransmits = 0
        self.retries = 0
        self.retry_errors: list[str] = []  # "stage: error" of each failed try that was retried
        self.error = ""
        self.failed_stage = ""
        self.start = self.end = 0.0


async def stage(ctx: Ctx, m: Machine, name: str, make):
    """Run one stage with bounded retries; records its timing (first try to success)."""
    start = now()
    for attempt in range(1, ctx.attempts + 1):
        try:
            result = await make()
        except StageFailed as exc:
            m.error = str(exc)
            if attempt == ctx.attempts:
                m.failed_stage = name
                m.stages[name] = [start - ctx.t0, now() - start, attempt]
                raise
            m.retries += 1
            m.retry_errors.append(f"{name}: {exc}")
            await asyncio.sleep(random.uniform(1.0, 3.0))
            continue
        m.stages[name] = [start - ctx.t0, now() - start, attempt]
        return result
    raise AssertionError("unreachable")


def script_commands(text: str) -> list[tuple[str, str]]:
    """(command, URL) of the iPXE script's kernel/initrd/imgfetch/chain lines, up to `boot`."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ":")):
            continue
        for part in line.replace(" || ", " && ").split(" && "):
            words = part.split()
            if not words:
                continue
            cmd = words[0]
            if cmd == "boot":
                return out
            if cmd in ("kernel", "initrd", "imgfetch", "chain", "module"):
                url = next((w for w in words[1:] if not w.startswith("-") and "://" in w), None)
                if url:
                    out.append((cmd, url))
    return out


async def boot(ctx: Ctx, m: Machine, delay: float) -> None:
    await asyncio.sleep(delay)
    m.start = now()
    http = HttpClient(ctx, m)
    try:
        await _boot(ctx, m, http)
        m.error = ""
    except StageFailed:
        pass
    except Exception as exc:  # a bug in the simulator or a garbled answer: a failed machine, not a crash
        m.failed_stage = m.failed_stage or "internal"
        m.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        http.close()
        m.end = now()


async def _boot(ctx: Ctx, m: Machine, http: HttpClient) -> None:
    fw = m.firmware
    offer = await stage(ctx, m, "dhcp", lambda: dhcp_offer(ctx, m, fw, DHCP_ROM_TIMEOUTS))
    server = offer["siaddr"] if offer["siaddr"] != "0.0.0.0" else socket.inet_ntoa(offer["opts"].get(54, bytes(4)))
    if fw == "http":
        url = offer["file"]
        if not url.startswith("http://"):
            raise StageFailed(f"HTTP-boot offer without an http URL: {url!r}")

        async def nbp_http() -> None:
            await http.fetch(url, "HEAD")
            _, _, size, _ = await http.fetch(url)
            want = ctx.sizes.get(url.rsplit("/", 1)[-1])
            if want is not None and size != want:
                raise StageFailed(f"http: {size} bytes of {want}")

        await stage(ctx, m, "nbp", nbp_http)
        ipxe_kind = "ipxe-efi"
    else:
        name = offer["file"]
        if not name:
            ack = await stage(ctx, m, "4011", lambda: proxy_ack(ctx, m, fw, server, offer))
            name = ack["file"]
            server = ack["siaddr"] if ack["siaddr"] != "0.0.0.0" else server
        if not name:
            raise StageFailed("no boot file in the answers")

        async def nbp_tftp() -> None:
            if fw == "efi":
                await tftp_get(ctx, m, server, name, {"tsize": "0", "blksize": "1468", "windowsize": "4"}, True)
                size = await tftp_get(ctx, m, server, name, {"blksize": "1468", "windowsize": "4"})
            else:
                size = await tftp_get(ctx, m, server, name, {"blksize": "1432", "tsize": "0"})
            want = ctx.sizes.get(name.rsplit("/", 1)[-1])
            if want is not None and size != want:
                raise StageFailed(f"tftp: {size} bytes of {want}")

        await stage(ctx, m, "nbp", nbp_tftp)
        ipxe_kind = "ipxe-bios" if fw == "bios" else "ipxe-efi"

    offer = await stage(ctx, m, "ipxe-dhcp", lambda: dhcp_offer(ctx, m, ipxe_kind, DHCP_IPXE_TIMEOUTS))
    url = offer["file"]
    if not url.startswith("http://"):
        raise StageFailed(f"iPXE offer without a script URL: {url!r}")
    for _depth in range(4):

        async def get_script(url=url) -> str:
            _, _, _, body = await http.fetch(url, store=True)
            return body.decode("utf-8", "replace")

        script = await stage(ctx, m, "script", get_script)
        commands = script_commands(script)
        if commands and commands[0][0] == "chain":
            url = commands[0][1]  # a chain stub (no ${variables} expected here)
            continue
        break
    names = {"kernel": "kernel", "initrd": "initrd", "module": "initrd", "imgfetch": "beacon"}
    seen: set[str] = set()
    for cmd, url in commands:
        name = names.get(cmd)
        if name is None or name in seen:
            continue
        seen.add(name)

        async def get(url=url) -> None:
            _, _, size, _ = await http.fetch(url)
            want = ctx.sizes.get(urlsplit(url).path.rsplit("/", 1)[-1])
            if want is not None and size != want:
                raise StageFailed(f"http: {size} bytes of {want}")

        await stage(ctx, m, name, get)
    if "kernel" not in seen:
        raise StageFailed("the script loads no kernel")


async def sweeper(ctx: Ctx) -> None:
    """Timeouts of every TFTP transfer and HTTP request; also measures the event loop's lag (how
    late this wakes up), which is how late the simulated machines may see their answers."""
    while True:
        due = now() + SWEEP
        await asyncio.sleep(SWEEP)
        t = now()
        ctx.lags.append(t - due)
        for item in list(ctx.timed):
            item.tick(t)


async def run(spec: dict) -> dict:
    ctx = Ctx(spec)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, spec["iface"].encode())
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    sock.bind(("", 68))
    sock.setblocking(False)
    await ctx.loop.create_datagram_endpoint(lambda: ctx.mux, sock=sock)
    rng = random.Random(spec.get("seed", 1))
    offset = int(spec.get("mac_offset", 0))
    machines = [Machine(i, fw, ip, rng, offset) for i, (fw, ip) in enumerate(zip(spec["firmware"], spec["ips"], strict=True))]
    ramp = float(spec.get("ramp", 0.0))
    sweep = asyncio.create_task(sweeper(ctx))
    cpu0 = time.process_time()
    tasks = [asyncio.create_task(boot(ctx, m, rng.uniform(0, ramp))) for m in machines]
    _, pending = await asyncio.wait(tasks, timeout=float(spec.get("deadline", 600)))
    for t in pending:
        t.cancel()
    for m in machines:
        if not m.end:
            m.failed_stage = m.failed_stage or next(
                (s for s in ("dhcp", "4011", "nbp", "ipxe-dhcp", "script", "kernel", "initrd", "beacon")
                 if s not in m.stages), "deadline")  # fmt: skip
            m.error = "run deadline reached"
            m.end = now()
    sweep.cancel()
    return {
        "client_cpu": time.process_time() - cpu0,
        "stray_dhcp": ctx.mux.stray,
        "client_rusage": (resource.getrusage(resource.RUSAGE_SELF).ru_utime, resource.getrusage(resource.RUSAGE_SELF).ru_stime),
        "loop_lag": [*sorted(ctx.lags)[len(ctx.lags) // 2 :: max(1, len(ctx.lags) // 20)], max(ctx.lags, default=0)],
        "wall": now() - ctx.t0,
        "machines": [
            {
                "fw": m.firmware,
                "ok": not m.failed_stage,
                "start": m.start - ctx.t0,
                "total": m.end - m.start,
                "stages": m.stages,
                "failed_stage": m.failed_stage,
                "error": m.error,
                "retries": m.retries,
                "retry_errors": m.retry_errors,
                "retransmits": m.retransmits,
            }
            for m in machines
        ],
    }


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    random.seed(spec.get("seed", 1) * 7919 + os.getpid())
    result = asyncio.run(run(spec))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
