"""Every HTTP route, over real HTTP on loopback, against `netbootd serve` in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import textwrap

import httpx
import pytest

from tests.conftest import wait_for

IGN = '{"ignition": {"version": "3.4.0"}, "passwd": {"users": [{"name": "core"}]}}'


@pytest.fixture
def daemon(daemon_factory):
    d = daemon_factory()
    m = d.machines
    (d.files / "os").mkdir()
    (d.files / "os" / "vmlinuz").write_bytes(os.urandom(100_000))
    (d.files / "os" / "initrd.img").write_bytes(b"initrd" * 1000)
    (d.files / "uki.efi").write_bytes(b"MZ" + os.urandom(5000))
    (m / "profiles" / "worker.toml").write_text(
        textwrap.dedent(
            """
            [vars]
            role = "worker"
            [boot]
            kernel = "os/vmlinuz"
            initrds = ["os/initrd.img", "http://mirror.example/extra.img"]
            cmdline = "console=ttyS0 role={{ role }} host={{ hostname }} ign={{ ignition_url }}"
            [ignition]
            inline = '''IGN'''
            """
        ).replace("IGN", IGN)
    )
    (m / "52-54-00-12-34-56.toml").write_text(
        'profile = "worker"\nuuid = "4C4C4544-0042-4810-8056-B4C04F395931"\n[vars]\nhostname = "w1"\n'
    )
    (m / "52-54-00-12-34-57.toml").write_text('[boot]\nefi = "uki.efi"\n')
    # boot-operator's unsigned /ignition/<uuid> contract, for a machine that opts out of signed URLs
    (m / "52-54-00-12-34-5a.toml").write_text(
        'profile = "worker"\nuuid = "4C4C4544-0042-4810-8056-B4C04F39595A"\nsigned_urls = false\n[vars]\nhostname = "w5a"\n'
    )
    (m / "52-54-00-12-34-58.toml").write_text("[boot]\nignore = true\n")
    (m / "52-54-00-12-34-59.toml").write_text(
        textwrap.dedent(
            """
            [boot]
            local = true
            [booty]
            action = "writeImage"
            sourceImage = "http://img.example/ubuntu.img"
            destinationDevice = "/dev/sda"
            growPartition = 1
            """
        )
    )
    (m / "52-54-00-12-34-5b.toml").write_text(
        textwrap.dedent(
            """
            [boot]
            kernel = "http://x/booty-kernel"
            cmdline = "BOOTYURL={{ booty_url }}"
            [booty]
            action = "readImage"
            sourceDevice = "/dev/sda"
            destinationAddress = "http://img.example/upload"
            """
        )
    )
    return d.start()


def test_script_by_mac_uuid_and_query(daemon):
    r = daemon.get("/ipxe/52-54-00-12-34-56")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    script = r.text
    assert script.startswith("#!ipxe\n")
    base = daemon.url
    kernel_line = re.escape(
        f"kernel --name kernel {base}/files/os/vmlinuz initrd=initrd0 initrd=initrd1 console=ttyS0 role=worker host=w1 "
        f"ign={base}/ignition?mac=52-54-00-12-34-56&exp="
    ) + r"\d+&sig=[0-9a-f]{32} \|\| goto failed"
    assert re.search(kernel_line, script), script
    assert f"initrd --name initrd0 {base}/files/os/initrd.img || goto failed" in script
    assert "initrd --name initrd1 http://mirror.example/extra.img || goto failed" in script
    assert f"imgfetch --name beacon {base}/beacon?mac=52-54-00-12-34-56&stage=loaded" in script
    assert script.index("initrd --name initrd1") < script.index("boot ||")
    # the same machine by UUID (any case), by colon MAC in the query, and by iPXE's platform/buildarch
    assert daemon.get("/ipxe/4c4c4544-0042-4810-8056-b4c04f395931").status_code == 200
    assert "host=w1" in daemon.get("/ipxe?mac=52:54:00:12:34:56&arch=bios").text
    assert "host=w1" in daemon.get("/ipxe?mac=52:54:00:12:34:56&uuid=&buildarch=x86_64&platform=efi").text



def test_script_has_a_length_and_the_connection_stays_open(daemon):
    """Two requests on one HTTP/1.1 connection, each script framed by Content-Length (it was sent
    chunked: an HTTP/1.0 client could only read it to the connection's end)."""
    import socket

    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    request = f"GET /ipxe/52-54-00-12-34-56 HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        reader = s.makefile("rb")
        for _ in range(2):
            s.sendall(request)
            status = reader.readline()
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            assert status.startswith(b"HTTP/1.1 200"), status
            assert "transfer-encoding" not in headers, headers
            body = reader.read(int(headers["content-length"]))
            assert body.startswith(b"#!ipxe\n") and body.endswith(b"reboot\n"), body



def test_http10_keep_alive_when_the_answer_has_a_length(daemon):
    """An HTTP/1.0 client asking for keep-alive (ApacheBench -k, old tools) keeps its connection
    for answers with a Content-Length; one without a length ends with the connection, as
    HTTP/1.0 framing requires. Twisted alone closed every HTTP/1.0 connection."""
    import socket

    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)

    def ask(reader, s, path):
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: Keep-Alive\r\n\r\n".encode())
        status, headers = reader.readline(), {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        assert status.startswith(b"HTTP/1.0 200"), status
        return headers

    with socket.create_connection((host, int(port)), timeout=10) as s:
        reader = s.makefile("rb")
        for path in ("/ipxe/52-54-00-12-34-56", "/files/os/initrd.img", "/ipxe/52-54-00-12-34-56"):
            headers = ask(reader, s, path)
            assert headers.get("connection") == "keep-alive", (path, headers)
            reader.read(int(headers["content-length"]))
        headers = ask(reader, s, "/healthz")  # written without a length
        assert "content-length" not in headers and "connection" not in headers
        assert b'"status"' in reader.read()  # to the connection's end


def test_chain_stub(daemon):
    r = daemon.get("/ipxe")
    assert r.status_code == 200
    assert f"chain --replace --autofree {daemon.url}/ipxe?mac=${{mac:hexhyp}}&uuid=${{uuid}}&" in r.text


def test_script_404s_and_400s(daemon):
    r = daemon.get("/ipxe/52-54-00-12-34-58")  # ignore = true
    assert r.status_code == 404 and "boot.ignore" in r.text
    r = daemon.get("/ipxe/52-54-00-99-99-99")  # unknown, no default
    assert r.status_code == 404 and "no default.toml" in r.text
    assert daemon.get("/ipxe/not-a-mac").status_code == 400
    assert daemon.get("/ipxe?mac=zz").status_code == 400
    assert daemon.get("/ipxe?mac=52:54:00:12:34:56&arch=sparc").status_code == 400


def test_efi_machine_script_chains_its_binary(daemon):
    r = daemon.get("/ipxe?mac=52-54-00-12-34-57&arch=efi64")
    assert f"chain --autofree {daemon.url}/files/uki.efi" in r.text
    r = daemon.get("/ipxe?mac=52-54-00-12-34-57&arch=bios")
    assert r.status_code == 404 and "needs UEFI" in r.text


def test_local_boot_script_exits(daemon):
    r = daemon.get("/ipxe/52-54-00-12-34-59")
    assert r.status_code == 200 and r.text.rstrip().endswith("exit 1")


def _signed_ignition_url(daemon, mac="52-54-00-12-34-56") -> str:
    script = daemon.get(f"/ipxe/{mac}").text
    match = re.search(r" ign=(http://\S+)", script)
    assert match, script
    return match.group(1)


def test_ignition_signed_url(daemon):
    url = _signed_ignition_url(daemon)
    r = httpx.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["ignition"]["version"] == "3.4.0"
    # unsigned, tampered, truncated, or another machine's signature: 403 with the reason
    assert daemon.get("/ignition?mac=52:54:00:12:34:56").status_code == 403
    assert "must be signed" in daemon.get("/ignition/4c4c4544-0042-4810-8056-b4c04f395931").text
    sig = url.rsplit("sig=", 1)[1]
    flipped = url[: -len(sig)] + ("0" if sig[0] != "0" else "1") + sig[1:]
    r = httpx.get(flipped)
    assert r.status_code == 403 and "bad signature" in r.text
    exp = int(url.split("exp=")[1].split("&")[0])
    r = httpx.get(url.replace(f"exp={exp}", f"exp={exp + 3600}"))
    assert r.status_code == 403 and "bad signature" in r.text
    other = _signed_ignition_url(daemon, "52-54-00-12-34-5a")
    r = httpx.get(url.split("?")[0] + "?mac=52-54-00-12-34-5a&" + url.split("&", 1)[1])
    assert r.status_code == 200  # 5a opted out: any request works
    r = httpx.get(other.replace("52-54-00-12-34-5a", "52-54-00-12-34-56"))
    assert r.status_code == 403
    assert "ignition refused" in daemon.log() and "bad signature" in daemon.log()


def test_signed_urls_expire_and_survive_restarts(daemon_factory):
    d = daemon_factory()
    (d.machines / "52-54-00-12-34-56.toml").write_text(
        '[boot]\nkernel = "http://x/k"\ncmdline = "ign={{ ignition_url }}"\n[ignition]\ninline = \'IGN\'\n'.replace("IGN", IGN)
    )
    d.start()
    url = _signed_ignition_url(d)
    assert httpx.get(url).status_code == 200
    d.stop()
    d.start()  # same state directory: the key, and so the URL, survive
    assert httpx.get(url).status_code == 200
    assert (d.root / "state" / "url-signing.key").stat().st_mode & 0o777 == 0o600
    d.stop()
    d.config.write_text(d.config.read_text().replace("[http]\n", "[http]\nsigned_url_ttl = -10.0\n"))
    d.start()
    r = httpx.get(_signed_ignition_url(d))
    assert r.status_code == 403 and "expired" in r.text


def test_ignition(daemon):
    for path in (
        "/ignition/4c4c4544-0042-4810-8056-b4c04f39595a",
        "/ignition/4C4C4544-0042-4810-8056-B4C04F39595A",
        "/ignition?mac=52:54:00:12:34:5a",
        "/ignition/52-54-00-12-34-5a",
    ):
        r = daemon.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == "application/json"
        assert r.json()["ignition"]["version"] == "3.4.0"
    r = daemon.get("/ignition?mac=52:54:00:12:34:57")  # machine without Ignition
    assert r.status_code == 404 and "no Ignition" in r.text
    assert daemon.get("/ignition/00000000-0000-0000-0000-000000000000").status_code == 404
    assert daemon.get("/ignition?mac=").status_code == 400


def test_httpboot_json(daemon):
    r = daemon.get("/httpboot", headers={"X-Forwarded-For": "10.0.0.5, 52:54:00:12:34:57"})
    assert r.status_code == 200
    assert r.json() == {"ClientIPs": "10.0.0.5,52:54:00:12:34:57", "UKIURL": f"{daemon.url}/files/uki.efi"}
    r = daemon.get("/httpboot", headers={"X-Forwarded-For": "10.0.0.9"})
    assert r.status_code == 500 and "no machine matches 10.0.0.9" in r.json()["error"]


def test_booty(daemon):
    assert daemon.get("/booty/52-54-00-12-34-59.bty").status_code == 403  # signed by default
    script = daemon.get("/ipxe/52-54-00-12-34-59").text
    assert "exit" in script
    booty_url = re.search(r"BOOTYURL=(\S+)", daemon.get("/ipxe/52-54-00-12-34-5b").text).group(1)
    r = httpx.get(booty_url + "/52-54-00-12-34-5b.bty")
    assert r.status_code == 200 and r.json()["action"] == "readImage"
    assert httpx.get(booty_url + "/52-54-00-12-34-59.bty").status_code == 403  # another machine's token
    (daemon.machines / "52-54-00-12-34-59.toml").write_text(
        (daemon.machines / "52-54-00-12-34-59.toml").read_text().replace("[boot]", "signed_urls = false\n[boot]")
    )
    wait_for(lambda: daemon.get("/booty/52-54-00-12-34-59.bty").status_code == 200, timeout=1.0)
    r = daemon.get("/booty/52-54-00-12-34-59.bty")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {
        "action": "writeImage",
        "sourceImage": "http://img.example/ubuntu.img",
        "destinationDevice": "/dev/sda",
        "growPartition": 1,
    }
    assert daemon.get("/booty/52-54-00-12-34-56.bty").status_code == 404
    assert daemon.get("/booty/52-54-00-12-34-59.json").status_code == 404


def test_files_full_range_head_etag(daemon):
    data = (daemon.files / "os" / "vmlinuz").read_bytes()
    r = daemon.get("/files/os/vmlinuz")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == str(len(data))
    etag = r.headers["etag"]
    assert "last-modified" in r.headers
    r = daemon.get("/files/os/vmlinuz", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    r = daemon.get("/files/os/vmlinuz", headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]
    r = httpx.head(daemon.url + "/files/os/vmlinuz")
    assert r.status_code == 200 and r.headers["content-length"] == str(len(data)) and r.content == b""
    r = daemon.get("/files/os/vmlinuz", headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert daemon.get("/files/uki.efi").headers["content-type"] == "application/efi"


def test_files_with_curl(daemon, tmp_path):
    out = tmp_path / "k"
    subprocess.run(["curl", "-sfo", str(out), "-r", "0-999", daemon.url + "/files/os/vmlinuz"], check=True)
    assert out.read_bytes() == (daemon.files / "os" / "vmlinuz").read_bytes()[:1000]
    subprocess.run(["curl", "-sfo", str(out), daemon.url + "/files/os/initrd.img"], check=True)
    got = hashlib.sha256(out.read_bytes()).hexdigest()
    assert got == hashlib.sha256((daemon.files / "os" / "initrd.img").read_bytes()).hexdigest()


def test_files_big_whole_get_keepalive_and_conditionals(daemon):
    """Whole-file GETs go out with sendfile(2): bytes, headers and keep-alive must be as static.File's."""
    big = daemon.files / "os" / "big.img"
    data = os.urandom(24 * 1024 * 1024 + 123)
    big.write_bytes(data)
    with httpx.Client(base_url=daemon.url) as client:  # one keep-alive connection for all of these
        for _ in range(2):
            r = client.get("/files/os/big.img")
            assert r.status_code == 200 and r.headers["content-length"] == str(len(data))
            assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
            assert r.headers["accept-ranges"] == "bytes" and r.headers["content-type"] == "application/octet-stream"
        assert client.get("/files/uki.efi").headers["content-type"] == "application/efi"
        assert client.get("/files/os/big.img", headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        r = client.get("/files/os/big.img", headers={"If-Modified-Since": r.headers["last-modified"]})
        assert r.status_code == 304 and r.content == b""
        empty = daemon.files / "empty"
        empty.write_bytes(b"")
        r = client.get("/files/empty")
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "0"
        assert client.get("/files/os/vmlinuz").content == (daemon.files / "os" / "vmlinuz").read_bytes()
    text = daemon.get("/metrics").text
    sent = re.search(r'netbootd_http_bytes_sent_total\{route="files"\} ([0-9.e+]+)', text)
    assert sent and float(sent.group(1)) >= 2 * len(data)


def test_files_shrinking_under_a_download_cuts_it(daemon):
    """An operator rewriting a kernel in place mid-download: that client is cut short, nobody spins."""
    import socket

    victim = daemon.files / "os" / "rewritten.img"
    victim.write_bytes(os.urandom(32 * 1024 * 1024))
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(b"GET /files/os/rewritten.img HTTP/1.1\r\nHost: x\r\n\r\n")
    got = s.recv(65536)
    assert got.startswith(b"HTTP/1.1 200")
    with open(victim, "r+b") as f:
        f.truncate(1024 * 1024)
    s.settimeout(20)
    total = len(got)
    try:
        while chunk := s.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:  # aborted: the usual way a cut download ends
        pass
    s.close()
    assert total < 32 * 1024 * 1024  # cut short of its Content-Length: the client knows it failed
    r = daemon.get("/files/os/rewritten.img")
    assert r.status_code == 200 and len(r.content) == 1024 * 1024
    assert daemon.get("/healthz").status_code == 200


def test_files_never_leave_the_root(daemon, tmp_path):
    secret = daemon.root / "secret.txt"
    secret.write_text("top secret")
    (daemon.files / "link-out").symlink_to(secret)
    (daemon.files / "link-in").symlink_to(daemon.files / "os" / "vmlinuz")
    assert daemon.get("/files/link-in").status_code == 200
    for path in ("/files/link-out", "/files/../secret.txt", "/files/%2e%2e/secret.txt",
                 "/files/os/..%2f..%2fsecret.txt", "/files/os", "/files/nothing", "/files/%00"):
        r = daemon.get(path)
        assert r.status_code in (400, 403, 404), path
        assert "top secret" not in r.text
    # curl --path-as-is sends the dots unnormalised
    out = subprocess.run(["curl", "-s", "--path-as-is", daemon.url + "/files/../secret.txt"],
                         capture_output=True, text=True)
    assert "top secret" not in out.stdout


def test_beacon_health_metrics(daemon):
    assert daemon.get("/beacon?mac=52-54-00-12-34-56&stage=loaded").text == "ok\n"
    assert daemon.get("/beacon?mac=52-54-00-12-34-56&stage=Bad Stage").status_code == 400
    health = daemon.get("/healthz").json()
    assert health["status"] == "ok" and health["machines"] == 6 and health["config_errors"] == []
    text = daemon.get("/metrics").text
    assert 'netbootd_boot_beacons_total{stage="loaded"} 1.0' in text
    assert 'netbootd_http_requests_total{route="healthz",status="200"}' in text
    assert "netbootd_machines 6.0" in text
    assert "netbootd_config_errors 0.0" in text
    assert "boot progress" in daemon.log() and "stage=loaded" in daemon.log()


def _script(daemon, mac="52-54-00-12-34-57"):
    r = daemon.get(f"/ipxe/{mac}")
    return r.status_code, r.text


def test_hot_reload_edit_in_place(daemon):
    path = daemon.machines / "52-54-00-12-34-57.toml"
    path.write_text('[boot]\nchain = "http://other.example/next"\n')
    wait_for(lambda: "http://other.example/next" in _script(daemon)[1], timeout=1.0)


def test_hot_reload_rename_on_save(daemon):
    tmp = daemon.machines / ".52-54-00-12-34-57.toml.swp"
    tmp.write_text('[boot]\nchain = "http://renamed.example/"\n')
    os.rename(tmp, daemon.machines / "52-54-00-12-34-57.toml")
    wait_for(lambda: "renamed.example" in _script(daemon)[1], timeout=1.0)


def test_hot_reload_new_and_deleted_machine(daemon):
    mac = "52-54-00-aa-bb-cc"
    assert _script(daemon, mac)[0] == 404
    (daemon.machines / f"{mac.upper()}.toml").write_text('[boot]\nchain = "http://new.example/"\n')
    wait_for(lambda: _script(daemon, mac)[0] == 200, timeout=1.0)
    (daemon.machines / f"{mac.upper()}.toml").unlink()
    wait_for(lambda: _script(daemon, mac)[0] == 404, timeout=1.0)


def test_hot_reload_broken_edit_keeps_old_version(daemon):
    path = daemon.machines / "52-54-00-12-34-57.toml"
    path.write_text("[boot\nefi = \n")
    wait_for(lambda: daemon.get("/healthz").json()["status"] == "degraded", timeout=1.0)
    health = daemon.get("/healthz").json()
    assert any("52-54-00-12-34-57.toml:1: invalid TOML" in e for e in health["config_errors"])
    assert "netbootd_config_errors 1.0" in daemon.get("/metrics").text
    assert "files/uki.efi" in _script(daemon)[1]  # the last good version still serves
    assert "host=w1" in _script(daemon, "52-54-00-12-34-56")[1]  # others unaffected
    path.write_text('[boot]\nchain = "http://fixed.example/"\n')
    wait_for(lambda: "fixed.example" in _script(daemon)[1], timeout=1.0)
    assert daemon.get("/healthz").json()["status"] == "ok"


def test_hot_reload_configmap_symlink_swap(daemon_factory):
    """Kubernetes mounts a ConfigMap as `key -> ..data/key`, `..data -> ..<timestamp>/`, and
    updates it by writing a new timestamped dir and renaming a new `..data` over the old one."""
    d = daemon_factory()
    m = d.machines
    v1 = m / "..2026_11_22_10_00_00.1"
    v1.mkdir()
    (v1 / "52-54-00-12-34-57.toml").write_text('[boot]\nchain = "http://v1.example/"\n')
    (m / "..data").symlink_to(v1.name)
    (m / "52-54-00-12-34-57.toml").symlink_to("..data/52-54-00-12-34-57.toml")
    d.start()
    assert "v1.example" in _script(d)[1]
    v2 = m / "..2026_11_22_10_05_00.2"
    v2.mkdir()
    (v2 / "52-54-00-12-34-57.toml").write_text('[boot]\nchain = "http://v2.example/"\n')
    (m / "..data_tmp").symlink_to(v2.name)
    os.rename(m / "..data_tmp", m / "..data")
    shutil.rmtree(v1)
    wait_for(lambda: "v2.example" in _script(d)[1], timeout=1.0)


def test_sighup_reloads(daemon):
    before = daemon.log().count("configuration reloaded")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: daemon.log().count("configuration reloaded") > before)
    assert "trigger=SIGHUP" in daemon.log()


def test_json_logs(daemon_factory):
    d = daemon_factory()
    (d.machines / "52-54-00-12-34-57.toml").write_text('[boot]\nchain = "http://x.example/"\n')
    d.start("--log-format", "json")
    d.get("/ipxe/52-54-00-12-34-57")
    lines = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    sent = [rec for rec in lines if rec["msg"] == "script sent"]
    assert sent and sent[0]["mac"] == "52:54:00:12:34:57" and sent[0]["component"] == "http"


def test_the_boot_port_says_what_it_is_and_keeps_the_operators_data_off_it(daemon):
    """Port 80 is the boot network's: / says what this is and where the dashboard is, an unknown
    path is a plain 404 naming it (not Werkzeug's page), and the timeline is only on ui.listen."""
    listen = f"127.0.0.1:{daemon.ui_port}"
    r = daemon.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "netbootd: network-boot server" in r.text and f"ui.listen ({listen})" in r.text
    r = daemon.get("/nosuch/thing")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/plain")
    assert r.text == "404: netbootd serves nothing at /nosuch/thing (GET / says what this port is)\n"
    assert "spelling" not in r.text
    daemon.get("/ipxe?mac=52-54-00-12-34-56&arch=efi64")  # a machine the timeline now knows
    r = daemon.get("/machines")
    assert r.status_code == 404 and f"served on the management listener, ui.listen ({listen})" in r.text
    assert "52:54:00:12:34:56" not in r.text
    doc = daemon.ui_get("/machines").json()
    assert "52:54:00:12:34:56" in [m["mac"] for m in doc["machines"]]
    assert daemon.ui_get("/healthz").json()["status"] in ("ok", "degraded")
