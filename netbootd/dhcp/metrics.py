"""Prometheus counters of the DHCP edge (prometheus_client's default REGISTRY).

- netbootd_dhcp_dropped_total{reason}: packets not answered for a packet-level reason: malformed
  (codec.REASONS), not a PXE client, unsupported arch, wrong message type, wrong interface,
  no address to advertise, internal error, send failure.
- netbootd_dhcp_requests_total{firmware,arch,msgtype}: classified PXE/iPXE/HTTP-boot requests.
- netbootd_dhcp_answers_total{firmware,kind}: decisions; kind is the offer kind or "none" when the
  core declined the machine.
"""

from __future__ import annotations

from prometheus_client import Counter

DROPPED = Counter("netbootd_dhcp_dropped_total", "DHCP packets dropped without an answer", ["reason"])
REQUESTS = Counter(
    "netbootd_dhcp_requests_total",
    "PXE/iPXE/HTTP-boot DHCP requests received",
    ["firmware", "arch", "msgtype"],
)
ANSWERS = Counter("netbootd_dhcp_answers_total", "DHCP boot decisions", ["firmware", "kind"])
