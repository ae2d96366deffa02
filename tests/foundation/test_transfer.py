"""Downloads move their bytes on worker threads (http.sendfile_threads) or on the reactor thread
("0"): either way every byte arrives, concurrent downloads of one file stay separate, the byte
counters are exact, and a file shrinking under a download cuts that download short."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import socket

import httpx
import pytest


@pytest.mark.parametrize("threads", ["0", "2", "auto"])
def test_concurrent_downloads(daemon_factory, threads):
    d = daemon_factory()
    # sendfile_threads belongs in the fixture's [http] table
    d.config.write_text(d.config.read_text().replace("[http]\n", f'[http]\nsendfile_threads = "{threads}"\n', 1))
    blob = os.urandom(24 * 1024 * 1024 + 123)
    (d.files / "big.img").write_bytes(blob)
    d.start()
    want = hashlib.sha256(blob).hexdigest()

    def fetch(_i: int) -> str:
        with httpx.stream("GET", d.url + "/files/big.img", timeout=60) as r:
            assert r.status_code == 200 and r.headers["content-length"] == str(len(blob))
            h = hashlib.sha256()
            for chunk in r.iter_bytes():
                h.update(chunk)
            return h.hexdigest()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(fetch, range(8))) == [want] * 8
    text = d.get("/metrics").text
    sent = float(re.search(r'netbootd_http_bytes_sent_total\{route="files"\} ([0-9.e+]+)', text).group(1))
    assert sent == 8 * len(blob)
    # a file shrinking under a download: that client is cut short
    victim = d.files / "victim.img"
    victim.write_bytes(os.urandom(48 * 1024 * 1024))
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(b"GET /files/victim.img HTTP/1.1\r\nHost: x\r\n\r\n")
    total = len(s.recv(65536))
    with open(victim, "r+b") as f:
        f.truncate(1024 * 1024)
    s.settimeout(20)
    try:
        while chunk := s.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    s.close()
    assert total < 48 * 1024 * 1024
    assert d.get("/healthz").status_code == 200
