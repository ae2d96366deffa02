"""One in-memory copy of each small file that many TFTP clients fetch at once.

In a boot storm every machine asks for the same iPXE binary (70 KiB to 1 MiB). Read per session,
4000 concurrent transfers held 4000 read-ahead buffers (~170 MiB more RSS in bench/storm.py) and
made one read syscall and copy per 64 KiB each. Shared, the file is read once and every session
sends slices of the same bytes.

The key is the opened file's identity and version (device, inode, size, mtime), taken with fstat on
the descriptor the core opened safely, so an edited or replaced binary is read afresh and nothing
is ever looked up by name here. A plain LRU by bytes (functools.lru_cache cannot bound by size).
"""

from __future__ import annotations

import io
import os
import stat
from collections import OrderedDict
from typing import BinaryIO

MAX_FILE = 16 * 1024 * 1024  # larger files (an ISO over TFTP) are read per session, in chunks
MAX_BYTES = 64 * 1024 * 1024


class SharedContent:
    def __init__(self, max_bytes: int = MAX_BYTES, max_file: int = MAX_FILE) -> None:
        self.max_bytes = max_bytes
        self.max_file = max_file
        self.bytes = 0
        self._files: OrderedDict[tuple[int, int, int, int], bytes] = OrderedDict()

    def get(self, fileobj: BinaryIO) -> bytes | None:
        """The whole content of this open regular file, or None (too large, not a plain file,
        or it changed while being read)."""
        try:
            fd = fileobj.fileno()
            st = os.fstat(fd)
        except (AttributeError, OSError, io.UnsupportedOperation):
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_file:
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        data = self._files.get(key)
        if data is not None:
            self._files.move_to_end(key)
            return data
        data = _read_all(fd, st.st_size)
        if data is None or os.fstat(fd).st_mtime_ns != st.st_mtime_ns:
            return None  # being rewritten: this session reads it itself
        self._files[key] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes and len(self._files) > 1:
            _, old = self._files.popitem(last=False)
            self.bytes -= len(old)
        return data


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
