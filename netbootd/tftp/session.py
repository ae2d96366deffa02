"""One TFTP read transfer, on its own ephemeral UDP port.

The port-69 listener (`server.py`) binds a `TransferSession` with `reactor.listenUDP(0, session)`;
the session `connect()`s its socket to the client (so the kernel drops packets from any other
transfer ID), negotiates options, and sends the file, owning retransmission on the clock it was
given (an `IReactorTime`: the reactor in production, `task.Clock` in tests).

Sending follows RFC 7440 (windowsize 1 is plain RFC 1350 lock-step):
- blocks are numbered with unbounded integers inside; the wire carries `block & 0xFFFF`, so a
  file longer than 65535 blocks rolls over to block 0 (what tftp-hpa, curl, atftp and iPXE expect).
- the OACK, when sent, is "block 0" of the transfer: its ACK is ACK 0.
- an ACK of block k (base <= k <= last sent) acknowledges everything up to k; the next window
  starts at k + 1 (if k is inside the window, the client saw a gap: RFC 7440 resend).
- any other ACK (a duplicate of the ACK before the window, or stale) is ignored: only the timer
  retransmits, so duplicate ACKs can never make a window go out twice (Sorcerer's Apprentice).
- after `retries` timeouts without progress the transfer is abandoned and its port and file freed.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import attrs
from twisted.internet.protocol import DatagramProtocol

from netbootd.config.settings import TftpSettings
from netbootd.logs import get_logger
from netbootd.tftp import codec, metrics
from netbootd.tftp.content import SharedContent

log = get_logger("netbootd.tftp")

DEFAULT_BLKSIZE = 512
# Windows are bounded, whatever the client asks for: a session keeps its window until it is
# acknowledged (for retransmission) plus one window read ahead, so at most twice this.
MAX_WINDOWSIZE = 64
MAX_WINDOW_BYTES = 256 * 1024
# read-ahead: the file is read in chunks of about this size (a multiple of blksize)
READ_CHUNK = 64 * 1024
IP_MTU = getattr(socket, "IP_MTU", 14)  # Linux
IPV6_MTU = getattr(socket, "IPV6_MTU", 24)  # Linux
IPV4_UDP_TFTP_OVERHEAD = 20 + 8 + 4


@attrs.frozen
class Negotiated:
    """The transfer parameters agreed with the client, and the OACK that says so."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float = 1.0
    tsize: int | None = None
    oack: Mapping[str, str] = attrs.field(factory=dict)


def _int_option(value: str) -> int | None:
    value = value.strip()
    if not value or len(value) > 10 or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def blksize_cap(settings: TftpSettings, path_mtu: int | None = None) -> int:
    """Largest blksize granted: the configured cap, within RFC 2348, within the path MTU."""
    cap = max(codec.MIN_BLKSIZE, min(settings.max_blksize, codec.MAX_BLKSIZE))
    if path_mtu:
        cap = min(cap, max(DEFAULT_BLKSIZE, path_mtu - IPV4_UDP_TFTP_OVERHEAD))
    return cap


def negotiate(
    options: Mapping[str, str],
    settings: TftpSettings,
    size: int | None,
    mode: str = "octet",
    path_mtu: int | None = None,
) -> Negotiated:
    """RFC 2347/2348/2349/7440 negotiation (option names already lower case).

    Invalid or out-of-range values make the server ignore that option (RFC 2347 allows a
    server to leave out any option it does not accept); unknown options are ignored.
    Values are answered in the order the client sent them.
    """
    blksize = DEFAULT_BLKSIZE
    windowsize = 1
    timeout = float(settings.timeout)
    tsize = None
    oack: dict[str, str] = {}
    # blksize first: windowsize's byte bound depends on it
    if "blksize" in options:
        value = _int_option(options["blksize"])
        if value is not None and value >= codec.MIN_BLKSIZE:
            blksize = min(value, blksize_cap(settings, path_mtu))
    for name, raw in options.items():
        value = _int_option(raw)
        if value is None:
            continue
        if name == "blksize":
            if value >= codec.MIN_BLKSIZE:
                oack[name] = str(blksize)
        elif name == "tsize":
            # netascii: the size on the wire is only known after conversion (reading the
            # whole file), so tsize is not offered then.
            if mode == "octet" and size is not None:
                tsize = size
                oack[name] = str(size)
        elif name == "timeout":
            if 1 <= value <= 255:
                timeout = float(value)
                oack[name] = str(value)
        elif name == "windowsize":
            if 1 <= value <= codec.MAX_WINDOWSIZE:
                windowsize = max(1, min(value, MAX_WINDOWSIZE, MAX_WINDOW_BYTES // blksize))
                oack[name] = str(windowsize)
    return Negotiated(blksize, windowsize, timeout, tsize, oack)


class _Source:
    """Blocks of `blksize` bytes from a file, read ahead in chunks; a short block ends it.

    netascii: LF becomes CR LF and a bare CR becomes CR NUL (RFC 764); the mapping is per
    byte, so chunks are translated independently.
    """

    def __init__(self, fileobj: BinaryIO, blksize: int, netascii: bool, content: bytes | None = None) -> None:
        self._file = fileobj
        self._blksize = blksize
        self._netascii = netascii
        self._chunk = max(1, READ_CHUNK // blksize) * blksize
        self._buf: bytes = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._eof = False
        if content is not None and not netascii:  # the whole file, shared with other sessions
            self._buf, self._view, self._eof = content, memoryview(content), True

    def _read_chunk(self) -> bytes:
        want = self._chunk
        parts = []
        while want > 0:
            data = self._file.read(want)
            if not data:
                self._eof = True
                break
            parts.append(data)
            want -= len(data)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if self._netascii:
            data = data.replace(b"\r", b"\r\x00").replace(b"\n", b"\r\n")
        return data

    def block(self) -> memoryview:
        blksize = self._blksize
        if len(self._buf) - self._pos < blksize and not self._eof:
            rest = self._buf[self._pos :]
            while len(rest) < blksize and not self._eof:
                rest += self._read_chunk()
            self._buf = rest
            self._view = memoryview(rest)
            self._pos = 0
        start = self._pos
        self._pos = min(start + blksize, len(self._buf))
        return self._view[start : self._pos]

    def close(self) -> None:
        self._view = memoryview(b"")
        self._buf = b""
        self._file.close()


# outcome values passed to the `on_done` callback (and the `reason` label of failures)
COMPLETED = "completed"
ABORTED_AFTER_OACK = "aborted_after_oack"  # the client refused the options we acknowledged
# The client read tsize from the OACK and ended the transfer before ACK 0, to ask for the file
# again: EDK2's PXE does this before every NBP download (ERROR 8 "User aborted the transfer",
# ../shared/captures/proxy-uefi-edk2-pxe.pcap). A normal step, not a failure.
SIZE_PROBE = "size_probe"
FINAL_ACK_LOST = "final_ack_lost"  # every block sent, then the client's port closed: it most likely has the file


class TransferSession(DatagramProtocol):
    """Sends one file to one client. Create, then `reactor.listenUDP(0, session)`."""

    noisy = False  # no "Starting protocol" log line per transfer

    def __init__(
        self,
        client: tuple[str, int],
        request: codec.ReadRequest,
        fileobj: BinaryIO,
        size: int | None,
        settings: TftpSettings,
        clock: Any,
        on_done: Callable[[TransferSession, str], None] | None = None,
        drop_every: int = 0,
        shared: SharedContent | None = None,
    ) -> None:
        self.client = client
        self.shared = shared  # the server's in-memory copies of hot files (content.py)
        self.mac: str | None = None  # the client's MAC when DHCP told the core (for log lines)
        self.request = request
        self.size = size
        self.settings = settings
        self.clock = clock
        self.on_done = on_done
        # Test hook: silently drop every Nth outgoing packet (0: never) to exercise retransmission.
        self.drop_every = drop_every
        self._file = fileobj
        self._source: _Source | None = None
        self._prebuilt: list[bytes] | None = None  # every DATA packet of a shared file (block n at n - 1)
        self.negotiated = Negotiated(timeout=float(settings.timeout))
        self.outcome: str | None = None  # set once finished: "completed" or a failure reason
        self.client_error: str | None = None  # "code message" of an ERROR the client sent
        self.started_at = 0.0
        self.duration = 0.0  # seconds, set when finished
        self.bytes_read = 0  # payload bytes read from the file (netascii: after conversion)
        self.retransmits = 0
        self._out_count = 0
        self._dropped: set[bytes] = set()
        self.hook_dropped = 0
        # window state (see module docstring); block 0 is the OACK. `_packets` holds the
        # packets from block `_base` on: the window, then up to one more window read ahead.
        self._packets: list[bytes] = []
        self._windowsize = 1
        self._unflushed_bytes = 0
        self._base = 1
        self._sent_upto = 0
        self._last_block: int | None = None
        self._retries = 0
        self._last_send = 0.0
        self._timer: Any = None
        self._send: Callable[[bytes], Any] = self._send_via_transport
        self._fast_send: Callable[[bytes], Any] | None = None  # lock-step shortcut (real sockets)
        self._socket: socket.socket | None = None  # kept: Twisted drops `transport` before stopProtocol

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def all_sent(self) -> bool:
        """Every block has been sent at least once (only the final ACK is missing)."""
        return self._last_block is not None and self._sent_upto >= self._last_block

    @property
    def bytes_acked(self) -> int:
        """Payload bytes the client has acknowledged (every block but the last is full)."""
        acked = self._base - 1
        if self._last_block is not None and acked >= self._last_block:
            return self.bytes_read
        return max(acked, 0) * self.negotiated.blksize

    def startProtocol(self) -> None:
        try:
            self._start()
        except Exception:
            log.failure("tftp session failed to start", client=self.client[0], file=self.request.filename)
            self._finish("internal", (codec.ERR_UNDEFINED, "internal error"))

    def _start(self) -> None:
        host, port = self.client
        assert self.transport is not None
        self.transport.connect(host, port)
        sock = getattr(self.transport, "socket", None)
        path_mtu = None
        if sock is not None:
            try:
                if sock.family == socket.AF_INET6:
                    # the IPv6 header is 20 bytes longer: report the MTU as blksize_cap's IPv4 sums need it
                    path_mtu = sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU) - 20
                else:
                    path_mtu = sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
            except OSError:
                path_mtu = None
            # the hot path: a connected socket's send(), without Twisted's per-call checks
            self._socket = sock
            self._sock_send = sock.send
            self._send = self._send_via_socket
            if not self.drop_every:
                self._fast_send = sock.send
        self.started_at = self.clock.seconds()
        req = self.request
        self.negotiated = neg = negotiate(req.options, self.settings, self.size, req.mode, path_mtu)
        if self.shared is not None and req.mode == "octet":
            # a shared file's packets, built once for every session (content.py); else its bytes
            self._prebuilt = self.shared.packets(self._file, neg.blksize)
            content = self.shared.get(self._file) if self._prebuilt is None else None
        else:
            content = None
        if self._prebuilt is None:
            self._source = _Source(self._file, neg.blksize, netascii=req.mode == "netascii", content=content)
        self._windowsize = neg.windowsize
        if neg.oack:
            self._base = 0
            self._packets = [codec.encode_oack(neg.oack)]
            self._send_window()
        else:
            self._base = 1
            self._fill(self._windowsize)
            if self.outcome is not None:
                return
            self._send_window()
            if self._last_block is None and self.outcome is None:
                self._fill(2 * self._windowsize)

    def stopProtocol(self) -> None:
        # the port went away under us: reactor shutdown without the server stopping us first, or
        # the client's ICMP port unreachable, which epoll reports as an error on the socket and
        # Twisted then treats as a lost connection (the client vanished mid-transfer)
        if not self.finished:
            sock, self._socket = self._socket, None
            try:
                refused = sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
            except OSError:
                refused = False
            self._finish("client_unreachable" if refused else "shutdown", None, stop_port=False)

    def abort(self, reason: str = "shutdown", message: str = "server shutting down") -> None:
        """End the transfer now (server shutdown): tell the client, free port and file."""
        self._finish(reason, (codec.ERR_UNDEFINED, message))

    def _finish(self, outcome: str, error: tuple[int, str] | None = None, stop_port: bool = True) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        if error is not None:
            try:
                self._send_raw(codec.encode_error(*error))
            except Exception:  # noqa: S110 - best effort: the transfer ends either way
                pass
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._socket = None
        try:
            if self._source is not None:
                self._source.close()
            else:
                self._file.close()
        except Exception:
            log.failure("closing file failed", file=self.request.filename)
        self._packets = []
        self._prebuilt = None
        self._flush_metrics()
        if stop_port and self.transport is not None:
            try:
                self.transport.stopListening()
            except Exception:
                log.failure("closing transfer port failed")
        self._log_and_count(outcome)
        if self.on_done is not None:
            try:
                self.on_done(self, outcome)
            except Exception:
                log.failure("tftp on_done callback failed")

    def _log_and_count(self, outcome: str) -> None:
        self.duration = duration = max(self.clock.seconds() - self.started_at, 1e-6)
        neg = self.negotiated
        fields = dict(
            mac=self.mac or "",
            client=f"{self.client[0]}:{self.client[1]}",
            file=self.request.filename,
            mode=self.request.mode,
            size=self.size if self.size is not None else -1,
            sent=self.bytes_acked,
            options=",".join(f"{k}={v}" for k, v in self.request.options.items()) or "-",
            blksize=neg.blksize,
            windowsize=neg.windowsize,
            retransmits=self.retransmits,
            duration=round(duration, 3),
            mbps=round(self.bytes_acked / duration / 1e6, 2),
        )
        if self.client_error is not None:
            fields["client_error"] = self.client_error
        if outcome == COMPLETED:
            metrics.TRANSFERS_COMPLETED.inc()
            log.info("tftp transfer completed", **fields)
        elif outcome == SIZE_PROBE:
            metrics.SIZE_PROBES.inc()
            log.debug("tftp size probe answered", outcome=outcome, **fields)
        elif outcome in (ABORTED_AFTER_OACK, "shutdown"):
            metrics.TRANSFERS_FAILED.labels(outcome).inc()
            log.info("tftp transfer ended", reason=outcome, **fields)
        elif outcome == "client_unreachable" and self.all_sent:
            # RFC 1350 lets a client close once it sent its final ACK, which may be lost: its port
            # is gone after it had every block (frequent in storms). Not worth a warning.
            metrics.TRANSFERS_FAILED.labels(FINAL_ACK_LOST).inc()
            log.info("tftp transfer ended: every block sent, final ACK lost", reason=FINAL_ACK_LOST, **fields)
        else:
            metrics.TRANSFERS_FAILED.labels(outcome).inc()
            log.warn("tftp transfer failed", reason=outcome, **fields)

    # -- receiving ---------------------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            if len(data) >= 4 and data[1] == 4 and data[0] == 0:  # ACK: the hot path
                self._on_ack((data[2] << 8) | data[3])
                return
            try:
                packet = codec.parse(data)
            except codec.MalformedPacket as e:
                metrics.DROPPED_PACKETS.labels(e.reason).inc()
                return
            if isinstance(packet, codec.Error):
                self.client_error = f"{packet.code} {packet.message}"
                if self._base != 0:  # after ACK 0 (or with no OACK): a real error mid-transfer
                    self._finish("client_error")
                elif self.negotiated.tsize is not None:
                    # ended after an OACK that gave the size, before any DATA: a size probe,
                    # whatever the code (EDK2 sends 8, others 0); the real request follows
                    self._finish(SIZE_PROBE)
                else:
                    self._finish(ABORTED_AFTER_OACK)  # it refused blksize/windowsize/timeout
            else:
                metrics.DROPPED_PACKETS.labels("unexpected").inc()
        except Exception:
            log.failure("tftp session error", client=self.client[0], file=self.request.filename)
            self._finish("internal", (codec.ERR_UNDEFINED, "internal error"))

    def connectionRefused(self) -> None:
        # ICMP port unreachable: the client's socket is gone
        self._finish("client_unreachable")

    def _on_ack(self, wire_block: int) -> None:
        # The hot path: the next window is already built (read ahead while the client was
        # busy), so an ACK goes out as DATA before any bookkeeping.
        base = self._base
        offset = (wire_block - base) & 0xFFFF
        if offset > self._sent_upto - base or self.outcome is not None:
            # a duplicate of the ACK before this window, or stale: only the timer resends
            return
        acked = base + offset
        if acked == self._last_block:
            self._base = acked + 1
            self._finish(COMPLETED)
            return
        packets = self._packets
        del packets[: offset + 1]
        self._base = base = acked + 1
        self._retries = 0
        windowsize = self._windowsize
        if windowsize == 1 and packets and self._fast_send is not None:
            # lock-step with the next block read ahead: send first, then the bookkeeping
            packet = packets[0]
            try:
                self._fast_send(packet)
            except OSError as e:
                self._send_failed(e)
                return
            self._unflushed_bytes += len(packet) - 4
            self._sent_upto = base
            self._last_send = self.clock.seconds()
            if self._timer is None:
                self._timer = self.clock.callLater(self.negotiated.timeout, self._on_timer)
            if self._last_block is None:
                prebuilt = self._prebuilt
                if prebuilt is not None and len(packets) == 1:  # _fill(2), inline: the next shared packet
                    packet = prebuilt[base]  # block base + 1
                    packets.append(packet)
                    size = len(packet) - 4
                    self.bytes_read += size
                    if size < self.negotiated.blksize:
                        self._last_block = base + 1
                else:
                    self._fill(2)
            return
        if len(packets) < windowsize and self._last_block is None:
            self._fill(windowsize)  # first window after the OACK, or read-ahead fell short
            if self.outcome is not None:
                return
        self._send_window()
        if self._last_block is None and self.outcome is None:
            self._fill(2 * windowsize)

    # -- sending -----------------------------------------------------------------------------

    def _fill(self, count: int) -> None:
        """Read blocks until `count` are queued from the window's start, or the last one is."""
        packets = self._packets
        if self._last_block is not None or len(packets) >= count:
            return
        blksize = self.negotiated.blksize
        prebuilt = self._prebuilt
        if prebuilt is not None:  # no read, no allocation: the shared packets themselves
            index = self._base + len(packets) - 1
            read = 0
            while len(packets) < count:
                packet = prebuilt[index]
                packets.append(packet)
                index += 1
                size = len(packet) - 4
                read += size
                if size < blksize:
                    self._last_block = index
                    break
            self.bytes_read += read
            return
        source = self._source
        assert source is not None
        header = codec.data_header
        block = self._base + len(packets)
        read = 0
        while len(packets) < count:
            try:
                payload = source.block()
            except OSError as e:
                log.error("tftp read error", file=self.request.filename, error=str(e))
                self._finish("read_error", (codec.ERR_UNDEFINED, "read error"))
                return
            packets.append(header(block) + payload)
            read += len(payload)
            if len(payload) < blksize:
                self._last_block = block
                break
            block += 1
        self.bytes_read += read

    def _send_window(self) -> None:
        """Send the window: the first `windowsize` queued packets (just the OACK while base is 0)."""
        packets = self._packets
        send = self._send
        if self._base == 0 or self._windowsize == 1:
            packet = packets[0]
            send(packet)
            count = 1
            if self._base:  # not the OACK
                self._unflushed_bytes += len(packet) - 4
        else:
            count = min(self._windowsize, len(packets))
            sent = 0
            for i in range(count):
                packet = packets[i]
                send(packet)
                sent += len(packet) - 4
            self._unflushed_bytes += sent
        if self.outcome is not None:  # a send failed and ended the transfer
            return
        self._sent_upto = self._base + count - 1
        self._last_send = self.clock.seconds()
        if self._timer is None:
            self._timer = self.clock.callLater(self.negotiated.timeout, self._on_timer)

    def _flush_metrics(self) -> None:
        # payload bytes are counted per packet but reported in batches (timer, end of transfer):
        # a prometheus Counter.inc per packet would be the most expensive line of the hot path
        if self._unflushed_bytes:
            metrics.BYTES_SENT.inc(self._unflushed_bytes)
            self._unflushed_bytes = 0

    def _on_timer(self) -> None:
        self._timer = None
        if self.outcome is not None:
            return
        try:
            self._flush_metrics()
            timeout = self.negotiated.timeout
            due = self._last_send + timeout
            now = self.clock.seconds()
            if now < due:
                self._timer = self.clock.callLater(due - now, self._on_timer)
                return
            self._retries += 1
            if self._retries > self.settings.retries:
                self._finish("timeout", (codec.ERR_UNDEFINED, "timed out waiting for ACK"))
                return
            self.retransmits += 1
            metrics.RETRANSMISSIONS.inc()
            self._send_window()
        except Exception:
            log.failure("tftp retransmission failed", client=self.client[0])
            self._finish("internal", (codec.ERR_UNDEFINED, "internal error"))

    def _dropped_by_hook(self, packet: bytes) -> bool:
        """Test hook: drop every Nth outgoing packet, but never the same packet twice.

        Real loss is not periodic: with a strict period, a window whose length is a multiple of
        N would lose the same blocks on every resend forever. Each packet (by its first bytes:
        opcode and block) is dropped at most once, so a transfer always completes.
        """
        self._out_count += 1
        if self._out_count % self.drop_every:
            return False
        key = packet[:4]
        if key in self._dropped:
            self._out_count -= 1  # drop the next one instead
            return False
        self._dropped.add(key)
        self.hook_dropped += 1
        return True

    def _send_via_socket(self, packet: bytes) -> None:
        if self.drop_every and self._dropped_by_hook(packet):
            return
        try:
            self._sock_send(packet)
        except OSError as e:
            self._send_failed(e)

    def _send_via_transport(self, packet: bytes) -> None:
        if self.drop_every and self._dropped_by_hook(packet):
            return
        try:
            self.transport.write(packet, None)  # type: ignore[union-attr]  # connected
        except OSError as e:
            self._send_failed(e)

    def _send_failed(self, e: OSError) -> None:
        if e.errno in (errno.EAGAIN, errno.ENOBUFS, errno.EINTR):
            return  # like a lost packet: the timer retransmits
        if e.errno == errno.ECONNREFUSED:
            self._finish("client_unreachable")
            return
        self._finish("send_error")

    def _send_raw(self, packet: bytes) -> None:
        """Send outside the drop hook (ERROR packets)."""
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            sock.send(packet)
        elif self.transport is not None:
            self.transport.write(packet, None)  # connected


def file_size(fileobj: BinaryIO) -> int | None:
    """Size in bytes of an open file, or None when it cannot be known (a pipe, a stream)."""
    try:
        return os.fstat(fileobj.fileno()).st_size
    except Exception:  # noqa: S110 - not a real file: try seeking
        pass
    try:
        pos = fileobj.tell()
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(pos)
        return end - pos
    except Exception:
        return None
