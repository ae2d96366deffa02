"""TransferSession state machine on a task.Clock with a fake transport (no sockets, no real
time): windows, Sorcerer's Apprentice, retransmission, rollover, netascii, negotiation."""

from __future__ import annotations

import io

import pytest
from twisted.internet import task

from netbootd.config.settings import TftpSettings
from netbootd.tftp import codec
from netbootd.tftp.session import MAX_WINDOWSIZE, TransferSession, negotiate


class FakeTransport:
    """Test double of the connected UDP port the session writes to (only what it uses)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.history: list[bytes] = []  # every packet ever written
        self.connected_to: tuple[str, int] | None = None
        self.stopped = False

    def connect(self, host: str, port: int) -> None:
        self.connected_to = (host, port)

    def write(self, data: bytes, addr=None) -> None:
        self.written.append(bytes(data))
        self.history.append(bytes(data))

    def stopListening(self) -> None:
        self.stopped = True

    def take(self) -> list[codec.Packet]:
        packets = [codec.parse(p) for p in self.written]
        self.written.clear()
        return packets


class Harness:
    def __init__(self, data: bytes, options=None, mode="octet", drop_every=0, **settings) -> None:
        self.clock = task.Clock()
        self.file = io.BytesIO(data)
        self.done: list[str] = []
        base = dict(timeout=1.0, retries=3)
        base.update(settings)
        self.session = TransferSession(
            ("127.0.0.1", 5555),
            codec.ReadRequest("f.bin", mode, options or {}),
            self.file,
            len(data),
            TftpSettings(**base),
            self.clock,
            on_done=lambda s, outcome: self.done.append(outcome),
            drop_every=drop_every,
        )
        self.transport = FakeTransport()
        self.session.makeConnection(self.transport)

    def ack(self, block: int) -> list[codec.Packet]:
        self.session.datagramReceived(codec.encode_ack(block), ("127.0.0.1", 5555))
        return self.transport.take()

    def take(self) -> list[codec.Packet]:
        return self.transport.take()


def data_blocks(packets) -> list[int]:
    assert all(isinstance(p, codec.Data) for p in packets), packets
    return [p.block for p in packets]


def test_lockstep_without_options():
    h = Harness(b"x" * 1000)
    assert h.transport.connected_to == ("127.0.0.1", 5555)
    first = h.take()
    assert first == [codec.Data(1, 512)]
    assert h.ack(1) == [codec.Data(2, 488)]
    # a delayed duplicate ACK 1 must not resend block 2 (Sorcerer's Apprentice)
    assert h.ack(1) == []
    assert h.ack(1) == []
    assert h.ack(2) == []
    assert h.done == ["completed"]
    assert h.file.closed and h.transport.stopped
    assert h.clock.getDelayedCalls() == []


def test_windowed_transfer_and_duplicate_acks():
    data = bytes(range(256)) * 2  # 512 bytes = 64 blocks of 8, then an empty block 65
    h = Harness(data, {"blksize": "8", "windowsize": "4", "tsize": "0"})
    (oack,) = h.take()
    assert oack == codec.OptionAck({"blksize": "8", "windowsize": "4", "tsize": "512"})
    assert data_blocks(h.ack(0)) == [1, 2, 3, 4]
    assert h.ack(0) == []  # a duplicate of the OACK's ACK
    assert data_blocks(h.ack(4)) == [5, 6, 7, 8]
    for _ in range(3):  # duplicates of the ACK before the window: nothing is sent
        assert h.ack(4) == []
    # ACK 6 inside the window: the client saw a gap after 6, the window restarts at 7 (RFC 7440)
    assert data_blocks(h.ack(6)) == [7, 8, 9, 10]
    assert h.ack(6) == []
    assert h.ack(5) == []  # stale
    assert h.ack(200) == []  # never sent
    # only the timer retransmits, once per timeout
    h.clock.advance(1.0)
    assert data_blocks(h.take()) == [7, 8, 9, 10]
    h.clock.advance(0.5)
    assert h.take() == []
    h.clock.advance(0.5)
    assert data_blocks(h.take()) == [7, 8, 9, 10]
    assert h.session.retransmits == 2
    block = 10
    while not h.done:
        sent = h.ack(block)
        if sent:
            block = data_blocks(sent)[-1]
    assert block == 65
    assert h.done == ["completed"]
    assert h.file.closed


def test_payloads_reassemble_the_file():
    data = bytes(range(256)) * 40 + b"tail"
    h = Harness(data, {"blksize": "100", "windowsize": "7"})
    h.take()
    got = {}
    packets = h.ack(0)
    while packets:
        for p, raw in zip(packets, h.transport.history[-len(packets) :], strict=True):
            got[p.block] = raw[4:]
        packets = h.ack(packets[-1].block)
    assert b"".join(got[i] for i in sorted(got)) == data
    assert h.done == ["completed"]


def test_timeout_gives_up_and_frees_everything():
    h = Harness(b"y" * 5000, retries=3)
    assert data_blocks(h.take()) == [1]
    for _ in range(3):
        h.clock.advance(1.0)
        assert data_blocks(h.take()) == [1]
    h.clock.advance(1.0)
    (err,) = h.take()
    assert isinstance(err, codec.Error) and "timed out" in err.message
    assert h.done == ["timeout"]
    assert h.file.closed and h.transport.stopped
    assert h.clock.getDelayedCalls() == []


def test_progress_resets_retries_and_lazy_timer_does_not_fire_early():
    h = Harness(b"z" * 512 * 20, retries=1)
    h.take()
    for block in range(1, 20):
        h.clock.advance(0.9)  # just before the timeout, every time
        assert data_blocks(h.ack(block)) == [block + 1]
    assert h.session.retransmits == 0
    h.ack(20)
    h.ack(21)
    assert h.done == ["completed"]


def test_client_error_ends_session():
    h = Harness(b"a" * 2000)
    h.take()
    h.session.datagramReceived(codec.encode_error(0, "user aborted"), ("127.0.0.1", 5555))
    assert h.done == ["client_error"]
    assert h.file.closed and h.transport.stopped
    assert h.take() == []  # no ERROR answering an ERROR


def test_garbage_on_transfer_port_is_ignored():
    h = Harness(b"a" * 2000)
    h.take()
    for junk in [b"", b"\x00", b"\x00\x03\x00\x01abc", b"\xff\xff\xff\xff", b"\x00\x01\xff\x00"]:
        h.session.datagramReceived(junk, ("127.0.0.1", 5555))
    assert h.done == []
    assert data_blocks(h.ack(1)) == [2]


@pytest.mark.parametrize("size", [0, 8, 16, 17])
def test_sizes_around_block_boundaries(size):
    h = Harness(b"q" * size, {"blksize": "8"})
    h.take()
    payload = b""
    packets = h.ack(0)
    while packets:
        (p,) = packets
        payload += h.transport.history[-1][4:]
        packets = h.ack(p.block)
    assert payload == b"q" * size
    # an exact multiple ends with an empty block
    assert h.transport.history[-1][4:] == (b"" if size % 8 == 0 else b"q" * (size % 8))
    assert h.done == ["completed"]


def test_block_number_rollover():
    blocks = 65536 + 10
    h = Harness(b"r" * (8 * blocks + 3), {"blksize": "8", "windowsize": "16"})
    h.take()
    seen: list[int] = []
    packets = h.ack(0)
    while packets:
        numbers = data_blocks(packets)
        seen += numbers
        packets = h.ack(numbers[-1])
    assert h.done == ["completed"]
    assert len(seen) == blocks + 1
    i = seen.index(65535)
    assert seen[i : i + 3] == [65535, 0, 1]
    assert h.session.bytes_acked == 8 * blocks + 3


def test_rollover_duplicate_ack_is_still_a_duplicate():
    # at the wrap, ACK 65535 after the window moved to 0.. is a duplicate, not progress
    h = Harness(b"s" * (8 * 70000), {"blksize": "8"})
    h.take()
    block = 0
    packets = h.ack(0)
    while data_blocks(packets) != [0]:
        block = data_blocks(packets)[0]
        packets = h.ack(block)
    assert h.ack(65535) == []
    assert data_blocks(h.ack(0)) == [1]


def test_netascii_translation():
    text = b"a\nb\rc\r\nd"
    h = Harness(text, {"tsize": "0"}, mode="netascii")
    # tsize is not offered in netascii mode; no other option: no OACK
    packets = h.take()
    assert data_blocks(packets) == [1]
    assert h.transport.history[-1][4:] == b"a\r\nb\r\x00c\r\x00\r\nd"


def test_netascii_expansion_across_blocks():
    text = b"\n" * 20 + b"\r" * 5
    h = Harness(text, {"blksize": "8"}, mode="netascii")
    h.take()
    wire = b""
    packets = h.ack(0)
    while packets:
        wire += h.transport.history[-1][4:]
        packets = h.ack(data_blocks(packets)[0])
    assert wire == b"\r\n" * 20 + b"\r\x00" * 5
    assert h.session.bytes_acked == 50


def test_drop_hook_loses_packets_and_retransmission_recovers():
    data = bytes(range(256)) * 8
    h = Harness(data, {"blksize": "64", "windowsize": "4"}, drop_every=3)
    got: dict[int, bytes] = {}
    h.take()  # OACK was packet 1
    h.ack(0)
    expected = 1
    for _ in range(500):
        if h.done:
            break
        for raw in h.transport.written:
            p = codec.parse(raw)
            if isinstance(p, codec.Data) and p.block == expected:
                got[p.block] = raw[4:]
                expected += 1
        h.transport.written.clear()
        if expected - 1 >= 1:
            h.ack(expected - 1)
        h.clock.advance(1.0)
    assert h.done == ["completed"]
    assert b"".join(got[i] for i in sorted(got)) == data
    assert h.session.retransmits > 0


def test_shutdown_abort_sends_error_and_closes():
    h = Harness(b"a" * 5000)
    h.take()
    h.session.abort()
    (err,) = h.take()
    assert isinstance(err, codec.Error)
    assert h.done == ["shutdown"]
    assert h.file.closed


# -- negotiation -----------------------------------------------------------------------------

S = TftpSettings(max_blksize=1468, timeout=1.0)


@pytest.mark.parametrize(
    ("options", "blksize", "windowsize", "oack"),
    [
        ({}, 512, 1, {}),
        ({"blksize": "1024"}, 1024, 1, {"blksize": "1024"}),
        ({"blksize": "8"}, 8, 1, {"blksize": "8"}),
        ({"blksize": "7"}, 512, 1, {}),  # below RFC 2348's range: ignored
        ({"blksize": "65464"}, 1468, 1, {"blksize": "1468"}),  # capped by settings
        ({"blksize": "99999999"}, 1468, 1, {"blksize": "1468"}),
        ({"blksize": "abc"}, 512, 1, {}),
        ({"blksize": "-5"}, 512, 1, {}),
        ({"blksize": ""}, 512, 1, {}),
        ({"blksize": "1" * 40}, 512, 1, {}),
        ({"windowsize": "16"}, 512, 16, {"windowsize": "16"}),
        ({"windowsize": "0"}, 512, 1, {}),
        ({"windowsize": "65536"}, 512, 1, {}),
        ({"windowsize": "65535"}, 512, MAX_WINDOWSIZE, {"windowsize": str(MAX_WINDOWSIZE)}),
        ({"windowsize": "64", "blksize": "65464"}, 1468, 64, {"windowsize": "64", "blksize": "1468"}),
        ({"foo": "bar", "multicast": ""}, 512, 1, {}),  # unknown options ignored
        ({"timeout": "0"}, 512, 1, {}),
        ({"timeout": "256"}, 512, 1, {}),
        ({"timeout": "3"}, 512, 1, {"timeout": "3"}),
    ],
)
def test_negotiate(options, blksize, windowsize, oack):
    n = negotiate(options, S, size=1000)
    assert (n.blksize, n.windowsize, dict(n.oack)) == (blksize, windowsize, oack)


def test_negotiate_tsize_timeout_and_window_bytes():
    n = negotiate({"tsize": "0", "timeout": "5"}, S, size=123456)
    assert n.tsize == 123456 and n.timeout == 5.0
    assert dict(n.oack) == {"tsize": "123456", "timeout": "5"}
    assert negotiate({"tsize": "0"}, S, size=None).oack == {}
    assert negotiate({"tsize": "0"}, S, size=10, mode="netascii").oack == {}
    big = TftpSettings(max_blksize=65464)
    n = negotiate({"blksize": "65464", "windowsize": "64"}, big, size=1)
    assert n.blksize == 65464 and n.windowsize * n.blksize <= 256 * 1024 + 65464
    # the path MTU caps blksize further
    n = negotiate({"blksize": "65464"}, big, size=1, path_mtu=1500)
    assert n.blksize == 1468


class FailingFile(io.BytesIO):
    """A file whose reads fail after `good` bytes (test double of a disk error)."""

    def __init__(self, data: bytes, good: int) -> None:
        super().__init__(data)
        self.good = good

    def read(self, n=-1):
        if self.tell() >= self.good:
            raise OSError(5, "Input/output error")
        return super().read(min(n, self.good - self.tell()) if n and n > 0 else n)


@pytest.mark.parametrize("good", [0, 512 * 300])
def test_read_error_ends_transfer_with_error(good):
    h = Harness(b"")
    h.file = FailingFile(b"x" * 512 * 1000, good)
    h2_done: list[str] = []
    session = TransferSession(
        ("127.0.0.1", 5555),
        codec.ReadRequest("f.bin", "octet", {}),
        h.file,
        512 * 1000,
        TftpSettings(timeout=1.0, retries=3),
        h.clock,
        on_done=lambda s, outcome: h2_done.append(outcome),
    )
    transport = FakeTransport()
    session.makeConnection(transport)
    block = 0
    while not h2_done and block < 2000:
        block += 1
        session.datagramReceived(codec.encode_ack(block), ("127.0.0.1", 5555))
    assert h2_done == ["read_error"]
    assert isinstance(codec.parse(transport.history[-1]), codec.Error)
    assert h.file.closed and transport.stopped


def test_all_sent():
    h = Harness(b"x" * 600)
    h.take()
    assert not h.session.all_sent
    h.ack(1)
    assert h.session.all_sent  # block 2 (88 bytes) is out, only its ACK is missing
