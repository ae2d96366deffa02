"""Why a listener could not bind its port, said so that an operator can act: what the error means
here and which setting to change. Every listener (HTTP, dashboard, DHCP, DHCPv6, TFTP) words its
failures through `bind_message`; each passes its own port, setting and, where it knows better than
the defaults (who else may hold a DHCP port, say), its own phrases."""

from __future__ import annotations

import errno

# The defaults (the HTTP and dashboard listeners'). Phrases are templates: {port}, {setting}, {error}.
DENIED = ("ports below 1024 need root or CAP_NET_BIND_SERVICE "
          "(run as root, use systemd/netbootd.service, or set {setting} to a higher port)")
IN_USE = "another program holds it (find it with `ss -lnp`, or set {setting})"
NOT_HERE = "the listen address is not on this host (check {setting})"
OTHER = "{error}"


def bind_errno(exc: BaseException | None) -> int | None:
    """The errno of a failed bind: an OSError's, or that of the one Twisted's CannotListenError wraps."""
    return getattr(getattr(exc, "socketError", exc), "errno", None)


def no_ipv6(exc: BaseException | None) -> bool:
    """The bind of an IPv6 wildcard address failed because this host has no IPv6: the listeners go
    on with IPv4 only (logged), rather than refuse to start."""
    return bind_errno(exc) in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


def bind_message(where: str, exc: BaseException | None, *, port: int, setting: str, denied: str = DENIED,
                 in_use: str = IN_USE, not_here: str = NOT_HERE, other: str = OTHER) -> str:
    """`where` (what could not be bound: "cannot bind TCP port 80"), then why: the phrase for the
    error's errno (EACCES or EPERM: `denied`; EADDRINUSE: `in_use`; EADDRNOTAVAIL: `not_here`;
    anything else: `other`)."""
    err = getattr(exc, "socketError", exc)
    code = bind_errno(exc)
    if code in (errno.EACCES, errno.EPERM):
        phrase = denied
    elif code == errno.EADDRINUSE:
        phrase = in_use
    elif code == errno.EADDRNOTAVAIL:
        phrase = not_here
    else:
        phrase = other
    error = str(err) if err is not None else "unknown error"
    return f"{where}: " + phrase.format(port=port, setting=setting, error=error)
