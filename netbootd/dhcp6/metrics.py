"""Prometheus counters of the DHCPv6 edge (the DHCPv4 edge's, for IPv6)."""

from prometheus_client import Counter

REQUESTS = Counter("netbootd_dhcp6_requests_total", "DHCPv6 requests from boot clients", ["firmware", "arch", "msgtype"])
ANSWERS = Counter("netbootd_dhcp6_answers_total", "DHCPv6 answers sent (or none) by firmware and offer", ["firmware", "offer"])
DROPPED = Counter("netbootd_dhcp6_dropped_total", "DHCPv6 packets dropped, by reason", ["reason"])
