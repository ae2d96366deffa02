"""Prometheus metrics of the TFTP edge (prometheus_client's default registry).

Invariant: started = completed + size_probes + failed + active. Requests refused before a transfer
starts (file not found, write request, busy, ...) are counted in `requests_refused`, not in `failed`.
A size probe (the client reads tsize from the OACK and ends the transfer, to ask again: EDK2 does
before every download) is a normal step, counted apart from both.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

TRANSFERS_STARTED = Counter("netbootd_tftp_transfers_started", "TFTP transfers started")
TRANSFERS_COMPLETED = Counter("netbootd_tftp_transfers_completed", "TFTP transfers acknowledged to the end")
TRANSFERS_FAILED = Counter(
    "netbootd_tftp_transfers_failed",
    "TFTP transfers that did not complete",
    # timeout, client_error, aborted_after_oack (options refused), client_unreachable, final_ack_lost, superseded,
    # shutdown, read_error, send_error, internal
    ["reason"],
)
SIZE_PROBES = Counter(
    "netbootd_tftp_size_probes",
    "TFTP transfers the client ended after reading tsize from the OACK, before any DATA (outcome size_probe)",
)
REQUESTS_REFUSED = Counter(
    "netbootd_tftp_requests_refused",
    "TFTP requests answered with an ERROR instead of a transfer (busy: dropped unanswered, the client resends)",
    ["reason"],  # not_found, access_denied, write_request, bad_mode, busy, draining, malformed, internal, rate_limited
)
BYTES_SENT = Counter("netbootd_tftp_bytes_sent", "Payload bytes sent in DATA packets (retransmissions included)")
ACTIVE_TRANSFERS = Gauge("netbootd_tftp_active_transfers", "TFTP transfers in progress")
DROPPED_PACKETS = Counter(
    "netbootd_tftp_dropped_packets",
    "Received TFTP packets ignored",
    ["reason"],  # malformed reasons (short, bad_request, bad_opcode, ...), unexpected, duplicate_request
)
RETRANSMISSIONS = Counter("netbootd_tftp_retransmissions", "Windows (or blocks) sent again after a timeout")
