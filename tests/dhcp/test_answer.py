"""netbootd.dhcp.answer: our answers, byte by byte against what the captured firmware accepted."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from twisted.logger import LogLevel

from netbootd.dhcp import codec
from netbootd.dhcp.answer import Arrival, DhcpController
from netbootd.model import Offer, OfferKind
from tests.dhcp.conftest import (
    BOOT_SERVER,
    FakeCore,
    OfferingCore,
    capture_files,
    client_requests,
    port67_requests,
    read_capture,
    requires_captures,
)


def answered_pairs():
    """(request, the captured boot server's answer) for every request the proxy answered."""
    pairs = []
    for path in capture_files():
        last = None
        for d in read_capture(path):
            if d.payload[:1] == b"\x01" and d.dport in (67, 4011):
                last = d
            elif d.src == BOOT_SERVER and last is not None and d.payload[4:8] == last.payload[4:8]:
                pairs.append((last, d))
    return pairs


def arrival_for(d, server_ip=BOOT_SERVER):
    return Arrival(port=d.dport, proxy=d.dport == 4011, source=(d.src, d.sport), server_ip=server_ip)


def counter(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


@requires_captures
def test_captures_have_answers_of_every_kind():
    kinds = {(a.dport, codec.decode(r.payload).options.get(77) == b"iPXE") for r, a in answered_pairs()}
    assert kinds == {(68, True), (68, False), (4011, False)}


@requires_captures
@pytest.mark.parametrize("pair", answered_pairs(), ids=lambda p: f"{p[0].capture}#{p[0].index}")
def test_answer_matches_what_firmware_accepted(pair):
    req_d, theirs_d = pair
    request = codec.decode(req_d.payload)
    answer = DhcpController(FakeCore()).answer(request, arrival_for(req_d))
    assert answer is not None
    ours, theirs = answer.payload, theirs_d.payload
    # The whole fixed header: op htype hlen hops xid | flags ciaddr yiaddr siaddr giaddr chaddr sname file.
    # Only `secs` (bytes 8-9) differs: dnsmasq echoes it, we send 0 as RFC 2131 says.
    assert ours[:8] == theirs[:8]
    assert ours[10:240] == theirs[10:240]
    assert len(ours) == len(theirs) == 300
    mine = codec.decode(ours, op=codec.BOOTREPLY)
    other = codec.decode(theirs, op=codec.BOOTREPLY)
    assert mine.yiaddr == "0.0.0.0"
    assert mine.siaddr == BOOT_SERVER
    assert mine.broadcast == other.broadcast
    for code in (53, 54, 60, 97):
        assert mine.options[code] == other.options[code], code
    if 43 in other.options:
        sub = codec.parse_pxe_options(other.options[43])
        assert codec.parse_pxe_options(mine.options[43])[6] == sub[6] == b"\x08"
    else:
        assert 43 not in mine.options
    assert set(mine.options) <= set(other.options)
    # Where it goes: the broadcast/unicast the firmware received.
    assert answer.dest == (theirs_d.dst, theirs_d.dport)
    assert answer.broadcast == (theirs_d.dst == "255.255.255.255")


@requires_captures
def test_efi_pxe_offer_has_no_file_but_4011_ack_does():
    pairs = [p for p in answered_pairs() if p[0].capture.startswith("proxy-uefi-edk2")]
    ctl = DhcpController(FakeCore())
    files = {}
    for req_d, _ in pairs:
        request = codec.decode(req_d.payload)
        if 77 in request.options:
            continue  # the chained iPXE
        reply = codec.decode(ctl.answer(request, arrival_for(req_d)).payload, op=codec.BOOTREPLY)
        files[req_d.dport] = (reply.file, reply.sname)
    assert files == {67: (b"", b""), 4011: (b"snponly.efi", BOOT_SERVER.encode())}


def discover(
    options: dict[int, bytes], *, msgtype=codec.DISCOVER, giaddr="0.0.0.0", flags=0, ciaddr="0.0.0.0"
):
    return codec.Packet(
        op=1,
        htype=1,
        hlen=6,
        hops=0,
        xid=0xABCD,
        secs=3,
        flags=flags,
        ciaddr=ciaddr,
        yiaddr="0.0.0.0",
        siaddr="0.0.0.0",
        giaddr=giaddr,
        chaddr=bytes.fromhex("525400aabbcc"),
        sname=b"",
        file=b"",
        msgtype=msgtype,
        options={53: bytes([msgtype]), **options},
    )


BIOS_PXE = {60: b"PXEClient:Arch:00000:UNDI:002001", 93: b"\x00\x00", 97: b"\x00" + bytes(range(16))}
EFI_PXE = {60: b"PXEClient:Arch:00007:UNDI:003000", 93: b"\x00\x07"}
HTTP = {60: b"HTTPClient:Arch:00016:UNDI:003000", 93: b"\x00\x10"}
ON_67 = Arrival(port=67, proxy=False, source=("0.0.0.0", 68), server_ip="192.0.2.1")
ON_4011 = Arrival(port=4011, proxy=True, source=("192.0.2.50", 4011), server_ip="192.0.2.1")


def reply_of(ctl, request, arrival=ON_67):
    answer = ctl.answer(request, arrival)
    return answer, (codec.decode(answer.payload, op=codec.BOOTREPLY) if answer else None)


def test_bios_pxe_gets_tftp_file_and_discovery_control():
    answer, reply = reply_of(DhcpController(FakeCore()), discover(BIOS_PXE))
    assert reply.msgtype == codec.OFFER
    assert reply.file == b"undionly.kpxe"
    assert reply.siaddr == "192.0.2.1"
    assert reply.options[54] == bytes([192, 0, 2, 1])
    assert reply.options[43] == b"\x06\x01\x08\xff"
    assert reply.options[97] == BIOS_PXE[97]
    assert reply.xid == 0xABCD
    assert reply.chaddr == bytes.fromhex("525400aabbcc")
    assert reply.broadcast
    assert answer.dest == ("255.255.255.255", 68)


def test_bios_on_4011_is_answered_with_boot_item_echo():
    item = b"\x80\x00\x00\x00"
    request = discover(
        {**BIOS_PXE, 43: codec.pxe_options([(71, item)])}, msgtype=codec.REQUEST, ciaddr="192.0.2.50"
    )
    answer, reply = reply_of(DhcpController(FakeCore()), request, ON_4011)
    assert reply.msgtype == codec.ACK
    assert reply.file == b"undionly.kpxe"
    assert reply.sname == b"192.0.2.1"
    assert reply.ciaddr == "192.0.2.50"
    assert codec.parse_pxe_options(reply.options[43]) == {71: item}
    assert answer.dest == ("192.0.2.50", 4011)
    assert not answer.broadcast
    assert not reply.broadcast  # flags copied on 4011


def site_server_of(d) -> str:
    return socket.inet_ntoa(codec.decode(d.payload).options[54])


@requires_captures
def test_captured_port67_requests_all_name_the_site_server():
    """What the firmware sends on 67 after the OFFERs: a REQUEST for the site server's lease,
    never one naming the proxy (10.77.0.2), which is why netbootd answers none of them."""
    requests = port67_requests()
    assert len(requests) >= 10
    assert {site_server_of(d) for d in requests} == {"10.77.0.1", "10.99.0.1"}
    assert all(54 in codec.decode(d.payload).options and 50 in codec.decode(d.payload).options for d in requests)


@requires_captures
@pytest.mark.parametrize("shared", [False, True], ids=["own-address", "dhcp-server-address"])
@pytest.mark.parametrize("req_d", port67_requests(), ids=lambda d: f"{d.capture}#{d.index}")
def test_captured_port67_request_is_never_answered(req_d, shared, capture_log):
    """Whether netbootd advertises an address of its own or the one the REQUEST names in option 54
    (netbootd on the DHCP server's host and address: an ACK from us would race the real one and
    EDK2 would DECLINE the lease), a REQUEST on 67 gets nothing. It is counted, logged at debug
    only, and reported to the boot timeline with the address the machine asks for (option 50)."""
    request = codec.decode(req_d.payload)
    core = FakeCore()
    arrival = arrival_for(req_d, site_server_of(req_d) if shared else BOOT_SERVER)
    before = counter("netbootd_dhcp_dropped_total", reason="request-for-dhcp-server")
    assert DhcpController(core).answer(request, arrival) is None
    assert counter("netbootd_dhcp_dropped_total", reason="request-for-dhcp-server") == before + 1
    assert core.calls == []  # nothing to decide
    ((client, offer, reason, ip, port),) = core.seen
    assert (client.mac, offer, port) == (request.mac, None, 67)
    assert ip == socket.inet_ntoa(request.options[50])
    assert site_server_of(req_d) in reason
    ours = [e for e in capture_log if e.get("log_namespace") == "netbootd.dhcp"]
    assert [e["log_level"] for e in ours] == [LogLevel.debug]
    assert ours[0]["reason"] == "request-for-dhcp-server"
    assert ours[0]["server_id"] == site_server_of(req_d)


@requires_captures
@pytest.mark.parametrize("shared", [False, True], ids=["own-address", "dhcp-server-address"])
def test_captured_discovers_and_4011_requests_are_still_answered(shared):
    """The same captures: every DISCOVER gets an OFFER on 67 and every 4011 REQUEST an ACK, also
    when netbootd advertises the DHCP server's own address."""
    ctl = DhcpController(FakeCore())
    kinds = set()
    for d in client_requests():
        request = codec.decode(d.payload)
        if d.dport == 67 and request.msgtype == codec.REQUEST:
            continue
        server_ip = "10.77.0.1" if shared else BOOT_SERVER
        answer = ctl.answer(request, arrival_for(d, server_ip))
        assert answer is not None, d
        reply = codec.decode(answer.payload, op=codec.BOOTREPLY)
        kinds.add((d.dport, request.msgtype_name, reply.msgtype_name))
        assert reply.yiaddr == "0.0.0.0" and reply.options[54] == socket.inet_aton(server_ip)
    assert kinds == {(67, "discover", "offer"), (4011, "request", "ack")}


def test_request_on_67_is_not_answered():
    """A REQUEST on 67 names the server whose lease the client takes: never a proxy's to ACK, even
    with the PXE options of a client we would answer on 4011 (iPXE here)."""
    core = FakeCore()
    request = discover({**BIOS_PXE, 77: b"iPXE", 50: bytes([192, 0, 2, 50])}, msgtype=codec.REQUEST)
    labels = {"firmware": "ipxe", "arch": "bios", "msgtype": "request"}
    before = counter("netbootd_dhcp_requests_total", **labels)
    assert DhcpController(core).answer(request, ON_67) is None
    assert counter("netbootd_dhcp_requests_total", **labels) == before + 1  # still counted as received
    assert [(ip, port) for _c, _o, _r, ip, port in core.seen] == [("192.0.2.50", 67)]
    assert "server id none" in core.seen[0][2]
    # the same request on 4011 is answered
    _, reply = reply_of(DhcpController(core), request, ON_4011)
    assert reply.msgtype == codec.ACK
    assert reply.file == b"http://192.0.2.1:8080/E.ipxe"


def test_request_on_67_from_a_non_pxe_client_is_refused_as_such():
    before = counter("netbootd_dhcp_dropped_total", reason="not-pxe")
    core = FakeCore()
    assert DhcpController(core).answer(discover({60: b"MSFT 5.0"}, msgtype=codec.REQUEST), ON_67) is None
    assert counter("netbootd_dhcp_dropped_total", reason="not-pxe") == before + 1
    assert core.seen == [] and core.calls == []


def test_http_boot_gets_url_and_httpclient():
    _, reply = reply_of(DhcpController(FakeCore()), discover(HTTP))
    assert reply.file == b"http://192.0.2.1:8080/ipxe.efi"
    assert reply.options[60] == b"HTTPClient"
    assert 43 not in reply.options
    assert 97 not in reply.options  # not sent, not echoed


def test_relayed_request_goes_to_giaddr():
    answer, reply = reply_of(DhcpController(FakeCore()), discover(EFI_PXE, giaddr="198.51.100.1"))
    assert answer.dest == ("198.51.100.1", 67)
    assert not answer.broadcast
    assert reply.giaddr == "198.51.100.1"
    assert reply.broadcast  # so the relay broadcasts it onto the client's segment


def test_long_url_goes_to_option_67():
    class LongCore(OfferingCore):
        def offer(self, client, server_ip):
            return Offer(OfferKind.IPXE_SCRIPT, "http://192.0.2.1/ipxe?" + "x" * 300, "m")

    _, reply = reply_of(DhcpController(LongCore()), discover({**BIOS_PXE, 77: b"iPXE"}))
    assert reply.file == b""
    assert reply.options[67] == b"http://192.0.2.1/ipxe?" + b"x" * 300


def test_long_tftp_name_is_refused_not_truncated():
    class LongCore(OfferingCore):
        def offer(self, client, server_ip):
            return Offer(OfferKind.TFTP, "d/" * 70, "m")

    before = counter("netbootd_dhcp_dropped_total", reason="bootfile-too-long")
    assert DhcpController(LongCore()).answer(discover(BIOS_PXE), ON_67) is None
    assert counter("netbootd_dhcp_dropped_total", reason="bootfile-too-long") == before + 1


def test_core_declines():
    core = FakeCore(answer=False)
    before = counter("netbootd_dhcp_answers_total", firmware="efi-pxe", kind="none")
    assert DhcpController(core).answer(discover(EFI_PXE), ON_67) is None
    assert counter("netbootd_dhcp_answers_total", firmware="efi-pxe", kind="none") == before + 1
    assert core.calls[0][1] == "192.0.2.1"


def test_metrics_per_request_and_answer():
    labels = {"firmware": "efi-pxe", "arch": "efi64", "msgtype": "discover"}
    before = counter("netbootd_dhcp_requests_total", **labels)
    answers = counter("netbootd_dhcp_answers_total", firmware="efi-pxe", kind="tftp")
    DhcpController(FakeCore()).answer(discover(EFI_PXE), ON_67)
    assert counter("netbootd_dhcp_requests_total", **labels) == before + 1
    assert counter("netbootd_dhcp_answers_total", firmware="efi-pxe", kind="tftp") == answers + 1


@pytest.mark.parametrize(
    ("msgtype", "arrival"),
    [(codec.RELEASE, ON_67), (codec.INFORM, ON_67), (codec.DECLINE, ON_67), (codec.DISCOVER, ON_4011)],
)
def test_other_message_types_are_not_answered(msgtype, arrival):
    before = counter("netbootd_dhcp_dropped_total", reason="msgtype")
    assert DhcpController(FakeCore()).answer(discover(BIOS_PXE, msgtype=msgtype), arrival) is None
    assert counter("netbootd_dhcp_dropped_total", reason="msgtype") == before + 1


def test_non_pxe_client_is_ignored_and_core_not_asked():
    core = FakeCore()
    assert DhcpController(core).answer(discover({60: b"MSFT 5.0"}), ON_67) is None
    assert core.calls == []


def test_answer_is_logged(capture_log):
    DhcpController(FakeCore()).answer(discover(BIOS_PXE, giaddr="198.51.100.1"), ON_67)
    (event,) = [e for e in capture_log if e.get("log_format") == "answered"]
    assert event["mac"] == "52:54:00:aa:bb:cc"
    assert event["firmware"] == "bios-pxe"
    assert event["arch"] == "bios"
    assert event["offered"] == "tftp undionly.kpxe"
    assert event["machine"] == "default"
    assert event["port"] == 67
    assert event["relay"] == "198.51.100.1"


def test_metrics_exposition_names():
    from prometheus_client import generate_latest

    DhcpController(FakeCore()).answer(discover(EFI_PXE), ON_67)
    text = generate_latest(REGISTRY).decode()
    for family in ("dropped", "requests", "answers"):
        assert f"# TYPE netbootd_dhcp_{family}_total counter" in text
    assert 'netbootd_dhcp_answers_total{firmware="efi-pxe",kind="tftp"}' in text
    assert 'netbootd_dhcp_requests_total{arch="efi64",firmware="efi-pxe",msgtype="discover"}' in text


def test_answer_lines_are_capped_per_second_in_a_storm(capture_log):
    from twisted.internet.task import Clock

    from netbootd.logs import RateLimiter

    clock = Clock()
    ctl = DhcpController(FakeCore())
    ctl.answer_lines = RateLimiter(burst=3, period=1.0, clock=clock.seconds)
    before = counter("netbootd_dhcp_answers_total", firmware="bios-pxe", kind="tftp")
    for _ in range(10):
        assert ctl.answer(discover(BIOS_PXE), ON_67) is not None  # every client is answered
    clock.advance(1.5)
    ctl.answer(discover(BIOS_PXE), ON_67)
    lines = [e for e in capture_log if e.get("log_format") == "answered"]
    assert len(lines) == 4
    assert "unlogged_before" not in lines[0]
    assert lines[3]["unlogged_before"] == 7
    assert counter("netbootd_dhcp_answers_total", firmware="bios-pxe", kind="tftp") == before + 11


def test_answer_lines_unlimited():
    ctl = DhcpController(FakeCore(), answer_lines_per_second=None)
    assert ctl.answer_lines is None
    assert ctl.answer(discover(BIOS_PXE), ON_67) is not None


# ------------------------------------------------------------------ answers from templates (encode_reply)

class ChosenCore(OfferingCore):
    """Offers whatever the test sets (`offer`): one controller, and so one set of answer
    templates, serves every example below."""

    offer_next: Offer | None = None

    def offer(self, client, server_ip):
        return self.offer_next


_TEMPLATED = DhcpController(ChosenCore())
_FIRMWARE = [BIOS_PXE, EFI_PXE, HTTP, {**BIOS_PXE, 77: b"iPXE"}, {k: v for k, v in BIOS_PXE.items() if k != 97},
             {60: b"PXEClient:Arch:00011:UNDI:003000", 93: b"\x00\x0b"}]
_BOOTFILES = ["undionly.kpxe", "snponly.efi", "http://192.0.2.1:8080/ipxe?mac=52-54-00-aa-bb-cc&arch=bios",
              "http://192.0.2.1/" + "u" * 140, "http://192.0.2.1/" + "v" * 140, "d/" * 70]


@settings(max_examples=400, deadline=None)
@given(
    firmware=st.sampled_from(_FIRMWARE),
    uuid=st.none() | st.sampled_from([b"", b"\x00" + bytes(16), b"\x00" + bytes(range(16)), b"\x01" * 300]),
    item=st.none() | st.binary(min_size=0, max_size=6),
    port=st.sampled_from([67, 4011]),
    server_ip=st.sampled_from(["192.0.2.1", "192.0.2.2", "198.51.100.7"]),
    kind=st.sampled_from(list(OfferKind)),
    bootfile=st.sampled_from(_BOOTFILES),
    xid=st.integers(0, 2**32 - 1),
    mac=st.binary(min_size=6, max_size=6),
    flags=st.sampled_from([0, 0x8000, 0x0001]),
    ciaddr=st.sampled_from(["0.0.0.0", "192.0.2.50"]),
    giaddr=st.sampled_from(["0.0.0.0", "10.1.2.3"]),
)
def test_answers_are_the_bytes_of_the_reply_built_for_them(
    firmware, uuid, item, port, server_ip, kind, bootfile, xid, mac, flags, ciaddr, giaddr
):
    """encode_reply answers from templates shared between requests; every answer must be the
    encoding of the reply `build` makes for that very request (a template key that missed an
    input would hand one request another's bytes)."""
    from netbootd.dhcp.classify import classify_reason

    options = {k: v for k, v in firmware.items() if k != 97}
    if uuid is not None:
        options[97] = uuid
    if item is not None:
        options[43] = codec.pxe_options([(71, item)])
    msgtype = codec.REQUEST if port == 4011 else codec.DISCOVER
    request = discover(options, msgtype=msgtype, giaddr=giaddr, flags=flags, ciaddr=ciaddr)._replace(xid=xid, chaddr=mac)
    arrival = Arrival(port=port, proxy=port == 4011, source=("192.0.2.50", port), server_ip=server_ip)
    offer = Offer(kind, bootfile, "m")
    ChosenCore.offer_next = offer
    client, _ = classify_reason(request.options, request.mac)
    reply_type = codec.ACK if port == 4011 else codec.OFFER
    try:
        expected = codec.encode(_TEMPLATED.build(request, client, offer, arrival, reply_type))
    except codec.FieldTooLong:
        expected = None
    answer = _TEMPLATED.answer(request, arrival)
    assert (answer.payload if answer else None) == expected
