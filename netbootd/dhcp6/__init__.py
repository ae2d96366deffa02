"""Proxy DHCPv6: the pure parts the DHCPv6 edge (UDP 547 and 4011 over IPv6) calls. No I/O here.

- codec.py: strict DHCPv6 decoding/encoding (bytes ↔ Message/Relay) and the answers EDK2 takes.
- duid.py: DUIDs and option 79: the client's MAC where the wire carries one, else its DUID.
- classify.py: a decoded packet → model.Client (firmware, arch, uuid) and the identity used.

Importing this package loads no Twisted and nothing of netbootd.dhcp (the edges stay apart).
"""
