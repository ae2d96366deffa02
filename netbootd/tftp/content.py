"""One in-memory copy of each small file that many TFTP clients fetch at once.

In a boot storm every machine asks for the same iPXE binary (70 KiB to 1 MiB). Read per session,
4000 concurrent transfers held 4000 read-ahead buffers (~170 MiB more RSS in bench/storm.py) and
made one read syscall and copy per 64 KiB each. Shared, the file is read once and every session
sends slices of the same bytes.

The key is the opened file's identity and version (device, inode, size, mtime), taken with fstat on
the descriptor the core opened safely, so an edited or replaced binary is read afresh and nothing
is ever looked up by name here. A plain LRU by bytes (functools.lru_cache cannot bound by size).

Each file also keeps its DATA packets per block size (`packets`): the bytes of block n of a file
are the same for every client that asked for that blksize, header included, so a storm builds
each packet once instead of once per session (an allocation and a copy per packet sent). They
count against the same byte bound as the content.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from collections import OrderedDict
from typing import BinaryIO

MAX_FILE = 16 * 1024 * 1024  # larger files (an ISO over TFTP) are read per session, in chunks
MAX_BYTES = 64 * 1024 * 1024
MAX_PACKETS = 32768  # per file and blksize: 16 MiB in blocks of 512 (building them takes ~10 ms)


_HEADER = struct.Struct("!HH")
OP_DATA = 3  # netbootd.tftp.codec.OP_DATA (codec imports tftpy: not needed here)
# Per packet beyond its bytes: the bytes object's own header and its slot in the list
PACKET_OVERHEAD = 33 + 8


class _Entry:
    __slots__ = ("data", "packets", "size")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.packets: dict[int, list[bytes]] = {}  # blksize → DATA packets of blocks 1, 2, ...
        self.size = len(data)  # bytes held: content and packets


def build_packets(data: bytes, blksize: int) -> list[bytes]:
    """Every DATA packet of `data` sent in blocks of `blksize`: block n (from 1) at index n - 1,
    the last one short (empty when the size is a multiple of blksize), block numbers on the wire
    modulo 65536."""
    view = memoryview(data)
    pack = _HEADER.pack
    return [pack(OP_DATA, (i + 1) & 0xFFFF) + view[i * blksize : (i + 1) * blksize]
            for i in range(len(data) // blksize + 1)]


class SharedContent:
    def __init__(self, max_bytes: int = MAX_BYTES, max_file: int = MAX_FILE) -> None:
        self.max_bytes = max_bytes
        self.max_file = max_file
        self.bytes = 0
        self._files: OrderedDict[tuple[int, int, int, int], _Entry] = OrderedDict()

    def get(self, fileobj: BinaryIO) -> bytes | None:
        """The whole content of this open regular file, or None (too large, not a plain file,
        or it changed while being read)."""
        entry = self._entry(fileobj)
        return entry.data if entry is not None else None

    def packets(self, fileobj: BinaryIO, blksize: int) -> list[bytes] | None:
        """The DATA packets of this open regular file for `blksize` (see build_packets), or None
        when its content is not shared (as for `get`)."""
        entry = self._entry(fileobj)
        if entry is None:
            return None
        packets = entry.packets.get(blksize)
        if packets is None:
            count = len(entry.data) // blksize + 1
            held = len(entry.data) + (4 + PACKET_OVERHEAD) * count
            if count > MAX_PACKETS or held > self.max_bytes // 2:
                return None  # a tiny blksize: built on the reactor at once, too many objects; sliced per session
            packets = entry.packets[blksize] = build_packets(entry.data, blksize)
            entry.size += held
            self.bytes += held
            self._evict()
        return packets

    def _entry(self, fileobj: BinaryIO) -> _Entry | None:
        try:
            fd = fileobj.fileno()
            st = os.fstat(fd)
        except (AttributeError, OSError, io.UnsupportedOperation):
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_file:
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        entry = self._files.get(key)
        if entry is not None:
            self._files.move_to_end(key)
            return entry
        data = _read_all(fd, st.st_size)
        if data is None or os.fstat(fd).st_mtime_ns != st.st_mtime_ns:
            return None  # being rewritten: this session reads it itself
        entry = self._files[key] = _Entry(data)
        self.bytes += entry.size
        self._evict()
        return entry

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and len(self._files) > 1:
            _, old = self._files.popitem(last=False)
            self.bytes -= old.size


def _read_all(fd: int, size: int) -> bytes | None:
    parts, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            return None  # shorter than fstat said: truncated under us
        parts.append(chunk)
        offset += len(chunk)
    if os.pread(fd, 1, size):
        return None  # longer: growing under us
    return parts[0] if len(parts) == 1 else b"".join(parts)
