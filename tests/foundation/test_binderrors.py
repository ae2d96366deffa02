"""Every listener's bind failures, worded by netbootd.binderrors: what happened and the setting to change."""

from __future__ import annotations

import errno

import pytest
import pytest_twisted
from twisted.internet.error import CannotListenError

from netbootd.binderrors import bind_errno, bind_message, no_ipv6
from netbootd.config.settings import DhcpSettings, Settings
from netbootd.dhcp import _bind_message
from netbootd.service import bind_error
from netbootd.tftp import _explain
from tests.helpers import held_udp_port, ipv6_loopback


def failed(code: int, port: int = 80) -> CannotListenError:
    return CannotListenError("", port, OSError(code, errno.errorcode[code]))


def test_the_errno_inside_twisteds_error():
    assert bind_errno(failed(errno.EADDRINUSE)) == errno.EADDRINUSE
    assert bind_errno(OSError(errno.EACCES, "x")) == errno.EACCES
    assert bind_errno(None) is None
    assert no_ipv6(failed(errno.EAFNOSUPPORT)) and no_ipv6(failed(errno.EADDRNOTAVAIL))
    assert not no_ipv6(failed(errno.EADDRINUSE))


def test_http_and_dashboard_messages():
    says = {code: str(bind_error("TCP", 80, "http.port", failed(code)))
            for code in (errno.EACCES, errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EINVAL)}
    assert says == {
        errno.EACCES: "cannot bind TCP port 80: ports below 1024 need root or CAP_NET_BIND_SERVICE "
                      "(run as root, use systemd/netbootd.service, or set http.port to a higher port)",
        errno.EADDRINUSE: "cannot bind TCP port 80: another program holds it (find it with `ss -lnp`, or set http.port)",
        errno.EADDRNOTAVAIL: "cannot bind TCP port 80: the listen address is not on this host (check http.port)",
        errno.EINVAL: "cannot bind TCP port 80: [Errno 22] EINVAL",
    }


def test_dhcp_messages_name_the_port_setting_and_dnsmasq():
    assert _bind_message(67, failed(errno.EPERM, 67)) == (
        "cannot bind UDP 67: needs root or CAP_NET_BIND_SERVICE (set dhcp.port or run as root)"
    )
    in_use = _bind_message(4011, failed(errno.EADDRINUSE, 4011), "dhcp.proxy_port")
    assert in_use.startswith("cannot bind UDP 4011: another DHCP server holds it without SO_REUSEADDR.")
    assert "--bind-interfaces" in in_use and in_use.endswith("change dhcp.proxy_port")
    assert _bind_message(67, failed(errno.EINVAL, 67)) == "cannot bind UDP 67: [Errno 22] EINVAL (check dhcp.port)"


def test_tftp_messages_name_tftp_port():
    where = "cannot listen for TFTP on UDP 0.0.0.0:69: "
    assert _explain("", 69, OSError(errno.EACCES, "x")) == (
        where + "permission denied: port 69 needs root or CAP_NET_BIND_SERVICE (or set tftp.port)"
    )
    assert _explain("", 69, OSError(errno.EADDRINUSE, "x")) == (
        where + "address already in use: is another TFTP server (tftpd-hpa, dnsmasq, ...) running? (or set tftp.port)"
    )
    assert _explain("10.0.0.9", 6969, OSError(errno.EADDRNOTAVAIL, "x")) == (
        "cannot listen for TFTP on UDP 10.0.0.9:6969: address not available on this host: check tftp.listen"
    )
    assert _explain("", 6969, OSError(errno.EACCES, "x")).endswith(":6969: permission denied")
    assert _explain("", 69, None) == where + "unknown error"


def test_phrases_are_templates():
    message = bind_message("cannot bind X", OSError(errno.EADDRINUSE, "x"), port=7, setting="x.port",
                           in_use="port {port} taken ({setting})")
    assert message == "cannot bind X: port 7 taken (x.port)"


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 loopback")
@pytest_twisted.ensureDeferred
async def test_dhcp6_port_in_use_names_its_setting_and_the_switch():
    from twisted.internet import reactor

    from netbootd.dhcp6.listen import listen_dhcp6

    with held_udp_port("::") as busy, pytest.raises(OSError) as info:
        listen_dhcp6(reactor, Settings(dhcp=DhcpSettings(port6=busy, proxy_port=0)), object())
    assert str(info.value) == (
        f"cannot bind UDP [::]:{busy} for proxy DHCPv6: another DHCPv6 server holds it without SO_REUSEADDR "
        "(run dnsmasq with --bind-interfaces) (or set dhcp.port6, or dhcp.ipv6 = false)"
    )
