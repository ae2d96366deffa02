"""HTTP abuse limits against a real daemon: 429 with Retry-After, a queue then 503 beyond the download cap,
413/414/431 for oversized requests; and a boot storm from many addresses is never limited."""

from __future__ import annotations

import socket

import httpx

from tests.conftest import wait_for
from tests.limits.conftest import boot_machines, http_settings, loopback_client, metric, raw_http

MAC = "52:54:00:12:34:56"


def _machine(d, kernel_size: int = 300_000) -> None:
    (d.files / "vmlinuz").write_bytes(b"k" * kernel_size)
    (d.files / "initrd.img").write_bytes(b"i" * 100_000)
    (d.machines / "default.toml").write_text(
        '[boot]\nkernel = "vmlinuz"\ninitrds = ["initrd.img"]\ncmdline = "console=ttyS0"\n'
    )


def test_rate_limit_answers_429_with_retry_after(daemon_factory):
    d = daemon_factory()
    http_settings(d, "rate_limit = 2\nrate_burst = 5")
    d.start()
    before = metric(d, "netbootd_http_rate_limited_total")
    with httpx.Client(timeout=10) as client:
        codes = [client.get(d.url + "/healthz") for _ in range(30)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    r = limited[0]
    assert int(r.headers["retry-after"]) >= 1
    assert r.text.startswith("rate limit exceeded") and r.text.count("\n") == 1
    assert r.headers["content-type"].startswith("text/plain")
    # another address is not affected
    with loopback_client("127.0.0.2") as other:
        assert other.get(d.url + "/healthz").status_code == 200
    assert metric(d, "netbootd_http_rate_limited_total") >= before + len(limited)
    assert metric(d, "netbootd_http_requests_total", route="healthz", status="429") >= len(limited)
    # and the client is served again once its bucket refills
    wait_for(lambda: httpx.get(d.url + "/healthz", timeout=10).status_code == 200, timeout=10)
    assert "Traceback" not in d.log()


def test_boot_storm_from_many_addresses_is_never_limited(daemon_factory):
    """100 machines (each its own 127.0.0.x address) boot at once with the default limits:
    script, kernel, initrd, beacon, each a few times (retries), plus the chain stub."""
    d = daemon_factory()
    _machine(d)
    d.start()

    def boot(n: int, address: str) -> list[str]:
        failures = []
        mac = f"52:54:00:00:{n // 256:02x}:{n % 256:02x}"
        with loopback_client(address) as client:
            for _ in range(3):
                for path in ("/ipxe", f"/ipxe?mac={mac}&arch=efi64", "/files/vmlinuz", "/files/initrd.img",
                             f"/beacon?mac={mac}&stage=loaded"):
                    r = client.get(d.url + path)
                    if r.status_code != 200:
                        failures.append(f"{n} {path} {r.status_code} {r.text[:80]}")
        return failures

    failures = boot_machines(100, boot)
    assert not failures, failures[:5]
    assert metric(d, "netbootd_http_rate_limited_total") == 0
    assert metric(d, "netbootd_http_refused_total", reason="busy") == 0


def test_downloads_over_the_cap_wait_then_503(daemon_factory):
    d = daemon_factory()
    _machine(d, kernel_size=64 * 1024 * 1024)  # larger than the socket buffers: the download stays open
    http_settings(d, "max_transfers = 1\nmax_queued = 1\nqueue_timeout = 4")
    d.start()
    stalled = socket.create_connection(("127.0.0.1", d.http_port))
    waiter = socket.create_connection(("127.0.0.1", d.http_port))
    try:
        stalled.sendall(b"GET /files/vmlinuz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert stalled.recv(100).startswith(b"HTTP/1.1 200")  # then it stops reading
        wait_for(lambda: metric(d, "netbootd_http_active_transfers") == 1, timeout=10)
        # over the cap a download waits for a slot, at most queue_timeout seconds, then 503
        r = d.get("/files/initrd.img")
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.text.startswith("server busy: no download slot free within 4 s")
        assert metric(d, "netbootd_http_refused_total", reason="queue_timeout") == 1
        assert d.get(f"/ipxe?mac={MAC}").status_code == 200  # scripts are not downloads: never wait
        # one waits (max_queued = 1); the next is refused at once
        waiter.sendall(b"GET /files/initrd.img HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wait_for(lambda: metric(d, "netbootd_http_queued_transfers") == 1, timeout=10)
        r = d.get("/files/initrd.img")
        assert r.status_code == 503 and r.text.startswith("server busy: 1 downloads in progress and 1 waiting")
        assert metric(d, "netbootd_http_refused_total", reason="busy") == 1
    finally:
        stalled.close()  # its slot goes to the one waiting
    waiter.settimeout(10)
    answer = b""
    while chunk := waiter.recv(65536):
        answer += chunk
    waiter.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"i" * 100_000)
    wait_for(lambda: metric(d, "netbootd_http_active_transfers") == 0, timeout=20)
    assert metric(d, "netbootd_http_queued_transfers") == 0
    assert d.get("/files/initrd.img").status_code == 200


def test_request_size_limits(daemon_factory):
    d = daemon_factory()
    http_settings(d, "max_url_length = 1024\nmax_header_bytes = 4096\nmax_headers = 20")
    _machine(d)
    d.start()
    with httpx.Client(timeout=10) as client:
        r = client.get(d.url + "/files/" + "a" * 2000)
        assert r.status_code == 414, r.text
        r = client.get(d.url + "/healthz", headers={"x-big": "b" * 5000})
        assert r.status_code == 431 and "larger than 4096" in r.text
        r = client.get(d.url + "/healthz", headers={f"x-h{i}": "1" for i in range(30)})
        assert r.status_code == 431 and "header lines" in r.text
        r = client.post(d.url + "/ipxe", content=b"x" * 100)
        assert r.status_code == 413
        r = client.post(d.url + "/ipxe", content=iter([b"chunk"] * 3))  # Transfer-Encoding: chunked
        assert r.status_code == 413
        r = client.get(d.url + "/files/vmlinuz")  # a new connection: the limits kept nothing
        assert r.status_code == 200 and len(r.content) == 300_000
    # a body far larger than the lingering read is cut off, and the daemon carries on
    head = b"PUT /files/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", d.http_port), timeout=10) as s:
        s.sendall(head)
        assert s.recv(100).startswith(b"HTTP/1.1 413")
        try:
            for _ in range(2000):
                s.sendall(b"z" * 65536)
        except OSError:
            pass  # reset by the daemon once it has dropped enough
        else:
            raise AssertionError("the daemon read 128 MiB of a refused body")
    # a request line longer than Twisted's own line limit still gets a 414, not a silent close
    assert raw_http(d.http_port, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 414")
    assert d.get("/healthz").status_code == 200
    for reason in ("url_too_long", "headers_too_large", "body"):
        assert metric(d, "netbootd_http_refused_total", reason=reason) >= 1
    assert "Traceback" not in d.log()
