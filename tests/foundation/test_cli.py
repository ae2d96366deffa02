"""The CLI as an operator meets it: explain, version, and the messages when a port is taken."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from netbootd import __version__

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "netbootd" / "netbootd.toml"


def netbootd(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "netbootd", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_version():
    assert netbootd("--version").stdout.strip() == f"netbootd {__version__}"


def test_explain_bios_client_of_a_profile_machine():
    out = netbootd("explain", "52:54:00:00:00:02", "--arch", "bios", "--config", str(EXAMPLE), "--server", "10.0.0.2").stdout
    assert "config    " in out and "52-54-00-00-00-02.toml (profile fcos-worker)" in out
    assert "DHCP      67 OFFER: tftp undionly.kpxe" in out
    assert "iPXE      DHCP answer: script http://10.0.0.2/ipxe?mac=52-54-00-00-00-02&arch=bios" in out
    assert "systemd.hostname=worker-02" in out
    assert "ignition.config.url=http://10.0.0.2/ignition?mac=52-54-00-00-00-02" in out
    assert "(178 bytes; --show-secrets prints it)" in out
    assert '"sshAuthorizedKeys"' not in out


def test_explain_efi_client():
    out = netbootd("explain", "52-54-00-00-00-01", "--arch", "efi64", "--config", str(EXAMPLE), "--server", "10.0.0.2").stdout
    assert "DHCP      4011 ACK: tftp snponly.efi" in out
    assert "flatcar.first_boot=1 ignition.config.url=http://10.0.0.2/ignition?mac=52-54-00-00-00-01" in out


def test_explain_http_boot_client_and_unknown_machine():
    out = netbootd("explain", "52:54:00:00:00:04", "--arch", "http", "--config", str(EXAMPLE), "--server", "10.0.0.2").stdout
    assert "DHCP      67 OFFER: http-efi http://10.0.0.2/boot/snponly.efi" in out
    assert "config_url=http://10.0.0.2/files/kairos/cloud-config.yaml" in out
    out = netbootd("explain", "aa:bb:cc:dd:ee:ff", "--arch", "bios", "--config", str(EXAMPLE), "--server", "10.0.0.2").stdout
    assert "default.toml" in out and "chain --replace --autofree https://boot.netboot.xyz" in out


def test_explain_local_and_bad_mac():
    out = netbootd("explain", "52:54:00:00:00:06", "--arch", "bios", "--config", str(EXAMPLE)).stdout
    assert "DHCP      no answer: 52-54-00-00-00-06: boot.local = true" in out
    assert "exit" in out
    bad = netbootd("explain", "nope", "--config", str(EXAMPLE), check=False)
    assert bad.returncode == 2 and "not a MAC address" in bad.stderr


@pytest.mark.parametrize("kind", ["http"])
def test_serve_says_what_to_do_when_the_port_is_taken(tmp_path, kind):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    (tmp_path / "machines").mkdir()
    cfg = tmp_path / "netbootd.toml"
    cfg.write_text(f'machines_dir = "machines"\n[http]\nport = {port}\nlisten = "127.0.0.1"\n'
                   "[dhcp]\nenabled = false\n[tftp]\nenabled = false\n")
    out = netbootd("serve", "--config", str(cfg), check=False)
    holder.close()
    assert out.returncode == 1
    assert f"cannot bind TCP port {port}: another program holds it" in out.stderr


def test_serve_reports_settings_errors(tmp_path):
    cfg = tmp_path / "netbootd.toml"
    cfg.write_text("[http]\nport = 99999\n")
    out = netbootd("serve", "--config", str(cfg), check=False)
    assert out.returncode == 2
    assert f"{cfg}:2: http.port: expected a port number 0..65535, got 99999" in out.stderr
