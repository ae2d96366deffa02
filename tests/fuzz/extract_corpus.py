"""Regenerate the seed corpora under tests/fuzz/corpus/ from the firmware captures.

    python -m tests.fuzz.extract_corpus [CAPTURES_DIR]     (default: ../shared/captures beside the repo)

dhcp/: every DHCP datagram of the captures (requests to 67/4011 and the answers), one file each,
       deduplicated by content; named <capture>-<frame>-<from>-<to>.bin.
tftp/: the TFTP packets: every request to 69, OACKs, ERRORs, the first ACKs and DATA blocks of
       each transfer (a whole transfer adds nothing but size).
http/: request targets: the HTTP URLs the captured answers carried (option 67 / file field),
       as paths; the hand-written seeds beside them cover every route.
The output is committed; the tests read only the corpus, never the captures.
"""

from __future__ import annotations

import hashlib
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import dpkt

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
DEFAULT_CAPTURES = HERE.parents[2] / "shared" / "captures"
MAX_DATA_BLOCKS = 3  # per transfer
MAX_ACKS = 3


def _udp(path: Path):
    with path.open("rb") as fh:
        for index, (_ts, frame) in enumerate(dpkt.pcap.Reader(fh)):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
                yield index, socket.inet_ntoa(ip.src), ip.data.sport, socket.inet_ntoa(ip.dst), ip.data.dport, bytes(ip.data.data)


def _write(directory: Path, name: str, data: bytes, seen: set[bytes]) -> bool:
    digest = hashlib.sha256(data).digest()
    if digest in seen:
        return False
    seen.add(digest)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)
    return True


def extract(captures: Path) -> dict[str, int]:
    counts = {"dhcp": 0, "tftp": 0, "http": 0}
    seen: set[bytes] = set()
    urls: set[str] = set()
    for pcap in sorted(captures.glob("*.pcap")):
        stem = pcap.stem
        tftp_ports: set[int] = set()
        data_blocks: dict[tuple[int, int], int] = {}
        acks: dict[tuple[int, int], int] = {}
        for index, _src, sport, _dst, dport, payload in _udp(pcap):
            name = f"{stem}-{index:04d}-{sport}-{dport}.bin"
            if {sport, dport} & {67, 68, 4011}:
                counts["dhcp"] += _write(CORPUS / "dhcp", name, payload, seen)
                try:
                    msg = dpkt.dhcp.DHCP(payload)
                except (dpkt.UnpackError, ValueError):
                    continue
                candidates = [bytes(msg.file)] + [v for k, v in msg.opts if k == 67]
                urls.update(c.rstrip(b"\0").strip().decode("latin-1") for c in candidates if c.startswith(b"http"))
                continue
            opcode = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
            if dport == 69:
                tftp_ports.add(sport)
                counts["tftp"] += _write(CORPUS / "tftp", name, payload, seen)
            elif sport in tftp_ports or dport in tftp_ports:
                key = (min(sport, dport), max(sport, dport))
                if opcode == 3:  # DATA
                    data_blocks[key] = data_blocks.get(key, 0) + 1
                    if data_blocks[key] > MAX_DATA_BLOCKS:
                        continue
                elif opcode == 4:  # ACK
                    acks[key] = acks.get(key, 0) + 1
                    if acks[key] > MAX_ACKS:
                        continue
                counts["tftp"] += _write(CORPUS / "tftp", name, payload, seen)
    for n, url in enumerate(sorted(urls)):
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        counts["http"] += _write(CORPUS / "http", f"capture-{n:02d}.txt", target.encode() + b"\n", seen)
    return counts


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CAPTURES
    if not where.is_dir():
        sys.exit(f"no captures at {where}")
    print(extract(where))
