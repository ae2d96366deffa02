"""The port-69 listener: requests in, a `TransferSession` per accepted read request.

Thin on purpose: parse, refuse what cannot be served (with an ERROR packet, from this port),
ask the resolver for an open file, and hand the transfer to a session on its own port.
Nothing raises out of `datagramReceived`; malformed input is counted and logged rate-limited.
"""

from __future__ import annotations

from typing import Any, BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from netbootd.config.settings import TftpSettings
from netbootd.core.files import AccessDenied, FileNotFound
from netbootd.core.ident import mac_in_path
from netbootd.core.interfaces import TftpCore
from netbootd.logs import RateLimiter, get_logger
from netbootd.ratelimit import PerClientLimiter
from netbootd.sockopts import PacketInfo
from netbootd.tftp import codec, metrics
from netbootd.tftp.content import SharedContent
from netbootd.tftp.session import SIZE_PROBE, TransferSession, file_size

log = get_logger("netbootd.tftp")

RATE_LIMITED = "rate limit exceeded, retry later"


class TftpServer(DatagramProtocol):
    """Listens for RRQ/WRQ; one `TransferSession` per transfer, at most `max_transfers` at once."""

    noisy = False  # no "Starting protocol" log line per transfer

    def __init__(
        self,
        reactor: Any,
        settings: TftpSettings,
        files: TftpCore,
        *,
        drop_every: int = 0,
        log_limiter: RateLimiter | None = None,
    ) -> None:
        """One server per listening port (a port has one protocol); `sibling()` makes another for
        the other address family, sharing the transfers, caps and limits."""
        self.reactor = reactor
        self.settings = settings
        self.files = files
        # test hook passed to every session: drop every Nth outgoing packet
        self.drop_every = drop_every
        self.sessions: dict[tuple[str, int], TransferSession] = {}
        self.fetching: dict[tuple[str, int], codec.ReadRequest] = {}  # requests waiting for their file to be fetched
        self.shared = SharedContent()  # one copy of each hot file (the iPXE binaries) for every session
        self.hook_dropped = 0  # packets dropped by the test hook, over all finished sessions
        # the local address the current datagram was sent to (from TftpPort; None if unknown)
        self.local_address: str | None = None
        self.draining = False  # drain(): new requests refused, running transfers carry on
        self._limiter = log_limiter or RateLimiter(burst=5, period=60.0, clock=reactor.seconds)
        # requests per client IP (settings), and at most one ERROR a second to a client over its
        # limit: a flood with a forged source address is not reflected packet for packet
        self._rate = PerClientLimiter(settings.rate_limit, settings.rate_burst, reactor.seconds)
        self._rate_replies = PerClientLimiter(1.0, 1, reactor.seconds)

    def reconfigure(self, settings: TftpSettings, rate: PerClientLimiter | None) -> None:
        """New settings from a reload: new transfers use them, running ones keep what they agreed.
        `rate`: a new per-client limiter (shared with the sibling), or None to keep this one."""
        self.settings = settings
        if rate is not None:
            self._rate = rate

    def sibling(self) -> TftpServer:
        """A server for another port (IPv6 beside IPv4) sharing this one's transfers, in-memory
        copies and rate limits: tftp.max_transfers and the per-client limits count both."""
        other = TftpServer(self.reactor, self.settings, self.files, drop_every=self.drop_every, log_limiter=self._limiter)
        other.sessions, other.fetching, other.shared = self.sessions, self.fetching, self.shared
        other._rate, other._rate_replies = self._rate, self._rate_replies
        return other

    # -- receiving ---------------------------------------------------------------------------

    def packetReceived(self, data: bytes, addr: Any, info: PacketInfo | None, truncated: bool) -> None:
        """From TftpPort (netbootd.udpport): the datagram with the local address it was sent to."""
        self.local_address = info.spec_dst if info is not None else None
        self.datagramReceived(data, addr)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            self._handle(data, (addr[0], addr[1]))
        except Exception:
            metrics.DROPPED_PACKETS.labels("internal").inc()
            if self._limiter.allow("internal"):
                log.failure(
                    "tftp request handling failed",
                    client=str(addr),
                    suppressed=self._limiter.take_suppressed("internal"),
                )

    def _handle(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            packet = codec.parse(data)
        except codec.MalformedPacket as e:
            metrics.DROPPED_PACKETS.labels(e.reason).inc()
            self._log_limited("malformed", "tftp malformed packet", client=addr[0], reason=e.reason, detail=e.detail[:100])
            if e.opcode in (codec.OP_RRQ, codec.OP_WRQ) and not self._rate_limited(addr):
                self._refuse(addr, "malformed", codec.ERR_ILLEGAL_OP, "malformed request")
            return
        if isinstance(packet, codec.ReadRequest):
            self._read_request(packet, addr)
        elif isinstance(packet, codec.WriteRequest):
            if self._rate_limited(addr):
                return
            self._log_limited("refused", "tftp write request refused", client=addr[0], file=packet.filename)
            self._refuse(addr, "write_request", codec.ERR_ACCESS, "read-only server: writing is not allowed")
        else:
            # ACK/DATA/ERROR/OACK belong on a transfer port; stale packets of a finished transfer
            metrics.DROPPED_PACKETS.labels("unexpected").inc()

    def _read_request(self, request: codec.ReadRequest, addr: tuple[str, int]) -> None:
        if self.fetching.get(addr) == request:
            # the client repeated its request while its file is being fetched (an image layer or a URL
            # for GRUB): the transfer starts when the fetch ends
            metrics.DROPPED_PACKETS.labels("duplicate_request").inc()
            return
        existing = self.sessions.get(addr)
        if existing is not None:
            if existing.request == request and not existing.all_sent:
                # the client repeated its request (our first answer was slow or lost): the
                # running session retransmits on its own timer
                metrics.DROPPED_PACKETS.labels("duplicate_request").inc()
                return
        if self._rate_limited(addr):
            return
        if existing is not None:
            # a new request from the same port: the old transfer is over for this client
            # (e.g. it finished but our last block's ACK was lost)
            existing.abort("superseded", "superseded by a new request")
        if self.draining:
            self._refuse(addr, "draining", codec.ERR_UNDEFINED, "server shutting down, try again later")
            return
        if request.mode not in ("octet", "netascii"):
            self._log_limited("refused", "tftp mode refused", client=addr[0], mode=request.mode)
            self._refuse(addr, "bad_mode", codec.ERR_ILLEGAL_OP, f"unsupported mode {request.mode[:20]!r}")
            return
        if len(self.sessions) >= self.settings.max_transfers:
            # Dropped, not refused: PXE firmware takes an ERROR as a failed boot, but resends an
            # unanswered RRQ (with backoff), by when a slot is likely free.
            metrics.REQUESTS_REFUSED.labels("busy").inc()
            self._log_limited("busy", "tftp request dropped: too many transfers; the client will resend",
                              client=addr[0], file=request.filename, active=len(self.sessions))
            return
        local = self.local_address
        try:
            opened = self.files.open_tftp(request.filename, addr[0], local or "")
        except Exception as exc:
            self._not_opened(exc, request, addr)
            return
        if isinstance(opened, Deferred):
            self.fetching[addr] = request
            log.debug("tftp file being fetched first", client=addr[0], file=request.filename)

            def fetched(fileobj: BinaryIO) -> None:
                if self.fetching.get(addr) == request:
                    del self.fetching[addr]
                    self._start_session(request, addr, fileobj, local)
                else:
                    fileobj.close()  # the client moved on (a new request from this port)

            def failed(failure) -> None:
                if self.fetching.get(addr) == request:
                    del self.fetching[addr]
                    self._not_opened(failure.value, request, addr)

            opened.addCallbacks(fetched, failed)
            return
        self._start_session(request, addr, opened, local)

    def _not_opened(self, exc: BaseException, request: codec.ReadRequest, addr: tuple[str, int]) -> None:
        """Answer a request whose file could not be opened (at once, or after a failed fetch)."""
        if isinstance(exc, FileNotFound):
            self._log_limited("refused", "tftp file not found", client=addr[0], file=request.filename, why=str(exc))
            self._refuse(addr, "not_found", codec.ERR_NOT_FOUND, "File not found")
            self._report(addr[0], request.filename, 0, 0.0, "file not found")
        elif isinstance(exc, AccessDenied):
            self._log_limited("refused", "tftp access denied", client=addr[0], file=request.filename, why=str(exc))
            self._refuse(addr, "access_denied", codec.ERR_ACCESS, "Access violation")
            self._report(addr[0], request.filename, 0, 0.0, f"access denied: {exc}")
        elif isinstance(getattr(exc, "status", None), int):  # an upstream error (image registry, URL)
            # a URL or image layer that could not be fetched: say so to the client and the operator
            log.warn("tftp file could not be fetched", client=addr[0], file=request.filename, error=str(exc))
            self._refuse(addr, "fetch_failed", codec.ERR_UNDEFINED, f"fetch failed: {str(exc)[:100]}")
            self._report(addr[0], request.filename, 0, 0.0, f"fetch failed: {exc}")
        else:
            log.failure("tftp file lookup failed", failure=Failure(exc), client=addr[0], file=request.filename)
            self._refuse(addr, "internal", codec.ERR_UNDEFINED, "internal error")

    def _start_session(self, request: codec.ReadRequest, addr: tuple[str, int], fileobj: BinaryIO,
                       local: str | None = None) -> None:
        session = TransferSession(
            addr,
            request,
            fileobj,
            file_size(fileobj),
            self.settings,
            self.reactor,
            on_done=self._session_done,
            drop_every=self.drop_every,
            shared=self.shared,
        )
        # for log lines: the MAC a per-machine file name carries, else the one the core knows
        # at this address (from DHCP)
        session.mac = mac_in_path(request.filename)
        if session.mac is None:
            session.mac = self.files.mac_for_ip(addr[0])
        self.sessions[addr] = session
        metrics.TRANSFERS_STARTED.inc()
        metrics.ACTIVE_TRANSFERS.inc()
        log.debug(
            "tftp transfer starting",
            client=f"{addr[0]}:{addr[1]}",
            file=request.filename,
            mode=request.mode,
            options=",".join(f"{k}={v}" for k, v in request.options.items()) or "-",
        )
        try:
            # startProtocol() runs inside: connect, negotiate, first packet
            # answer from the address the client asked (see TftpPort)
            interface = self.settings.listen or local or ("::" if ":" in addr[0] else "")
            self.reactor.listenUDP(0, session, interface=interface, maxPacketSize=2048)
        except Exception:
            log.failure("tftp cannot open a transfer port", client=addr[0])
            if not session.finished:
                session._finish("internal", None, stop_port=False)  # closes the file, calls _session_done
            self._reply(addr, codec.encode_error(codec.ERR_UNDEFINED, "cannot open a transfer port"))

    def _session_done(self, session: TransferSession, outcome: str) -> None:
        self.hook_dropped += session.hook_dropped
        if self.sessions.get(session.client) is session:
            del self.sessions[session.client]
            metrics.ACTIVE_TRANSFERS.dec()
        name = session.request.filename
        if outcome == SIZE_PROBE:  # a normal step of EDK2's download, not an error
            self._report(session.client[0], name, 0, session.duration, "", probe=True)
            return
        error = "" if outcome == "completed" else outcome
        if session.client_error:
            error = f"{outcome}: {session.client_error}"
        self._report(session.client[0], name, session.bytes_acked, session.duration, error)

    def _report(self, client_ip: str, name: str, size: int, seconds: float, error: str, probe: bool = False) -> None:
        """Tell the core (its boot timeline)."""
        try:
            self.files.tftp_done(client_ip, name, size, seconds, error, probe)
        except Exception:
            log.failure("tftp_done report failed", client=client_ip, file=name)

    # -- answering ---------------------------------------------------------------------------

    def _rate_limited(self, addr: tuple[str, int]) -> bool:
        """True (and the client told, at most once a second) when it is over its request rate."""
        if not self._rate.take(addr[0]):
            return False
        metrics.REQUESTS_REFUSED.labels("rate_limited").inc()
        self._log_limited("rate_limited", "tftp rate limit exceeded", client=addr[0])
        if not self._rate_replies.take(addr[0]):
            self._reply(addr, codec.encode_error(codec.ERR_UNDEFINED, RATE_LIMITED))
        return True

    def _refuse(self, addr: tuple[str, int], reason: str, code: int, message: str) -> None:
        metrics.REQUESTS_REFUSED.labels(reason).inc()
        self._reply(addr, codec.encode_error(code, message))

    def _reply(self, addr: tuple[str, int], packet: bytes) -> None:
        try:
            send_from = getattr(self.transport, "sendFrom", None)
            if send_from is not None and self.local_address and not self.settings.listen:
                send_from(packet, addr, source=self.local_address)
            elif self.transport is not None:
                self.transport.write(packet, addr)
        except Exception:  # noqa: S110 - unreachable client: nothing else to do
            pass

    def _log_limited(self, key: str, message: str, **fields: Any) -> None:
        self._limiter.log(log.info, key, message, **fields)

    # -- shutdown ----------------------------------------------------------------------------

    def drain(self) -> None:
        """Graceful shutdown, step one: refuse new requests, let running transfers finish.
        (Step two, `stopListening()` on the port, ends whatever is left.)"""
        self.draining = True

    def stopProtocol(self) -> None:
        self.abort_all()

    def abort_all(self) -> None:
        """End every transfer (shutdown): clients get an ERROR, ports and files are freed."""
        for session in list(self.sessions.values()):
            session.abort()
