"""The CLI as an operator meets it: explain, version, and the messages when a port is taken."""

from __future__ import annotations

import os
import shutil
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


def test_example_answers_unknown_machines_only_when_the_operator_opts_in(tmp_path):
    """The shipped example answers no unknown machine; explain says so, and how to opt in. With
    default.toml.example copied to default.toml the unknown machine gets the netboot.xyz chain."""
    out = netbootd("explain", "aa:bb:cc:dd:ee:ff", "--arch", "bios", "--config", str(EXAMPLE), "--server", "10.0.0.2").stdout
    assert "unknown machine and no default.toml → netbootd does not answer" in out, out
    assert "create machines/default.toml (the example ships default.toml.example)" in out and "OFFER" not in out
    check = netbootd("check", str(EXAMPLE.parent)).stderr
    assert "unknown machines get no answer" in check and "default.toml.example" in check
    conf = tmp_path / "netbootd"
    shutil.copytree(EXAMPLE.parent, conf)
    shutil.copy(conf / "machines" / "default.toml.example", conf / "machines" / "default.toml")
    out = netbootd("explain", "aa:bb:cc:dd:ee:ff", "--arch", "bios", "--config", str(conf), "--server", "10.0.0.2").stdout
    assert "default.toml" in out and "chain --replace --autofree https://boot.netboot.xyz" in out
    assert "unknown   " not in out
    assert "unknown machines get no answer" not in netbootd("check", str(conf)).stderr


def test_explain_local_and_bad_mac():
    out = netbootd("explain", "52:54:00:00:00:06", "--arch", "bios", "--config", str(EXAMPLE)).stdout
    # answered: iPXE sends the firmware on to its disk at once (no DHCP timeouts first)
    assert "DHCP      67 OFFER: tftp undionly.kpxe" in out
    assert "booting from local disk: boot.local = true" in out and out.rstrip().endswith("exit 1")
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
    as_json = netbootd("serve", "--config", str(cfg), "--log-format", "json", check=False)
    holder.close()
    assert out.returncode == 1
    assert f"cannot bind TCP port {port}: another program holds it" in out.stderr
    # said once: the log's critical line (the log goes to stderr), not printed again
    assert out.stderr.count(f"cannot bind TCP port {port}") == 1, out.stderr
    assert f' critical netbootd cannot start error="cannot bind TCP port {port}: ' in out.stderr, out.stderr
    # a JSON log (journald) gets it as its critical line
    assert as_json.returncode == 1 and as_json.stderr.count(f"cannot bind TCP port {port}") == 1, as_json.stderr
    import json

    (critical,) = [r for r in map(json.loads, as_json.stderr.splitlines()) if r["level"] == "critical"]
    assert critical["error"].startswith(f"cannot bind TCP port {port}: another program holds it"), critical


def test_serve_reports_settings_errors(tmp_path):
    cfg = tmp_path / "netbootd.toml"
    cfg.write_text("[http]\nport = 99999\n")
    out = netbootd("serve", "--config", str(cfg), check=False)
    assert out.returncode == 2
    assert f"{cfg}:2: http.port: expected a port number 0..65535, got 99999" in out.stderr


def test_every_command_finds_the_configuration_the_same_way(tmp_path):
    """--config takes netbootd.toml or its directory, for check, explain and serve alike."""
    directory = REPO / "etc" / "netbootd"
    for config in (str(EXAMPLE), str(directory)):
        assert netbootd("check", "--config", config).stdout == "OK: 8 machine files, no default\n"
        assert "52-54-00-00-00-02.toml" in netbootd("explain", "52:54:00:00:00:02", "--config", config).stdout
    assert netbootd("check", str(directory)).stdout == "OK: 8 machine files, no default\n"  # positional, as before
    # serve --config DIR: a directory with netbootd.toml is what serve reads too (ports taken: it reaches binding)
    out = netbootd("serve", "--config", str(tmp_path / "nosuch"), check=False)
    assert out.returncode == 2 and "no such file or directory" in out.stderr and "a configuration is" in out.stderr


def test_serve_accepts_a_directory(tmp_path):
    (tmp_path / "machines").mkdir()
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    (tmp_path / "netbootd.toml").write_text(
        f'machines_dir = "machines"\nstate_dir = "state"\ncache_dir = "cache"\n[http]\nport = {number}\n'
        'listen = "127.0.0.1"\n[dhcp]\nenabled = false\n[tftp]\nenabled = false\n')
    proc = subprocess.Popen([sys.executable, "-m", "netbootd", "serve", "--config", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import httpx

        from tests.conftest import wait_for

        def up():
            try:
                return httpx.get(f"http://127.0.0.1:{number}/healthz", timeout=1).json()
            except httpx.HTTPError:
                return None

        assert wait_for(up, timeout=20)["summary"] == "0 machine files, no default"
    finally:
        proc.terminate()
        proc.wait(10)


def netbootd_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """netbootd run from `cwd` (this checkout's package, whatever the directory), NETBOOTD_CONFIG unset."""
    environ = {k: v for k, v in os.environ.items() if k != "NETBOOTD_CONFIG"}
    environ.update({"PYTHONPATH": str(REPO), **(env or {})})
    return subprocess.run([sys.executable, "-m", "netbootd", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=environ)


@pytest.mark.skipif(Path("/etc/netbootd/netbootd.toml").exists(), reason="this host has a real configuration")
def test_every_subcommand_says_the_same_when_no_configuration_is_found(tmp_path):
    """serve, check, explain, status, state and reprovision look in the same places (none here) and
    say the same thing, exit 2: none goes on with built-in defaults."""
    said = set()
    for args in (("serve",), ("check",), ("explain", "52:54:00:00:00:02"), ("status",), ("state",),
                 ("reprovision", "52:54:00:00:00:02")):
        out = netbootd_in(tmp_path, *args)
        assert out.returncode == 2, (args, out)
        line = out.stderr.strip().split(": ", 1)[1]
        assert line.startswith("no configuration found (looked at $NETBOOTD_CONFIG (unset), ./netbootd.toml, "
                               "./etc/netbootd/netbootd.toml, /etc/netbootd/netbootd.toml): pass --config"), out.stderr
        said.add(line)
    assert len(said) == 1, said


def test_the_configuration_is_found_in_the_same_order_by_every_subcommand(tmp_path):
    """./etc/netbootd (a checkout), then ./netbootd.toml before it, then NETBOOTD_CONFIG before both."""
    checkout = tmp_path / "checkout"
    shutil.copytree(EXAMPLE.parent, checkout / "etc" / "netbootd")
    assert netbootd_in(checkout, "check").stdout == "OK: 8 machine files, no default\n"
    assert "52-54-00-00-00-02.toml" in netbootd_in(checkout, "explain", "52:54:00:00:00:02").stdout
    (checkout / "netbootd.toml").write_text('machines_dir = "mine"\n')
    (checkout / "mine").mkdir()
    assert netbootd_in(checkout, "check").stdout == "OK: 0 machine files, no default\n"
    env = {"NETBOOTD_CONFIG": str(checkout / "etc" / "netbootd")}
    assert netbootd_in(checkout, "check", env=env).stdout == "OK: 8 machine files, no default\n"
    out = netbootd_in(checkout, "explain", "52:54:00:00:00:02", env={"NETBOOTD_CONFIG": str(tmp_path / "nosuch")})
    assert out.returncode == 2 and f"$NETBOOTD_CONFIG={tmp_path / 'nosuch'}: no such file or directory" in out.stderr
    # serve takes its configuration as an argument too, as check does; given twice is refused
    out = netbootd_in(checkout, "serve", "etc/netbootd", "--config", "etc/netbootd")
    assert out.returncode == 2 and "give the configuration once" in out.stderr


def test_explain_says_what_http_boot_firmware_gets_for_a_kernel_machine():
    out = netbootd("explain", "52:54:00:00:00:01", "--arch", "http", "--config", str(EXAMPLE), "--server", "10.0.0.2").stdout
    assert "DHCP      67 OFFER: http-efi http://10.0.0.2/boot/snponly.efi" in out
    assert "UEFI HTTP boot loads iPXE from that URL" in out and "kernel --name kernel" in out
    assert "HTTP 500" not in out and "/httpboot" not in out


def test_every_option_has_help():
    from netbootd.cli import parser

    def walk(p):
        for action in p._actions:
            if action.dest == "help":
                continue
            yield p.prog, action
            for sub in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):
                    yield from walk(action.choices[sub])

    missing = [f"{prog} {a.option_strings or a.dest}" for prog, a in walk(parser()) if not a.help]
    assert not missing, missing


def test_check_hints_at_a_literal_string_for_a_template_with_quotes(tmp_path):
    """`cmdline = "root=live:{{ file("rootfs.squashfs") }}"` is invalid TOML (the template's quotes end the
    string): check names the file and line, and suggests the literal string that works."""
    (tmp_path / "machines").mkdir()
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "vmlinuz").write_bytes(b"k")
    (tmp_path / "files" / "rootfs.squashfs").write_bytes(b"s")
    (tmp_path / "netbootd.toml").write_text('machines_dir = "machines"\nfiles_root = "files"\n')
    machine = tmp_path / "machines" / "52-54-00-00-00-01.toml"
    machine.write_text('[boot]\nkernel = "vmlinuz"\ncmdline = "root=live:{{ file("rootfs.squashfs") }}"  # live\n')
    out = netbootd("check", "--config", str(tmp_path), check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert f"{machine}:3: invalid TOML:" in text
    assert "use a literal (single-quoted) string, cmdline = 'root=live:{{ file(\"rootfs.squashfs\") }}'" in text
    # what it suggests is right: the same line as a literal string checks clean
    machine.write_text("[boot]\nkernel = \"vmlinuz\"\ncmdline = 'root=live:{{ file(\"rootfs.squashfs\") }}'\n")
    assert netbootd("check", "--config", str(tmp_path)).stdout == "OK: 1 machine file, no default\n"


def test_no_quote_hint_for_other_toml_errors(tmp_path):
    from netbootd.config.tomlfile import template_quote_hint

    assert template_quote_hint('cmdline = "a {{ x }}" "\n', 1) == ""  # the stray quote is outside the template
    assert template_quote_hint("[boot\n", 1) == ""
    assert template_quote_hint('kernel = "vmlinuz" x\n', 1) == ""
    assert "script = '#!ipxe {{ file(\"a b\") }}'" in template_quote_hint(
        'x = 1\nscript = "#!ipxe {{ file("a b") }}"\n', 2)


def test_explain_takes_the_firmware_names_try_boots():
    """`explain --firmware` takes try's names; each answers as the old `--arch` name it replaces."""
    common = ("--config", str(EXAMPLE), "--server", "10.0.0.2")
    for new, old in (("uefi-http", "http"), ("uefi", "efi64"), ("bios", "bios"), ("arm64-uefi", "arm64"),
                     ("arm64-http", "http-arm64")):
        by_name = netbootd("explain", "52:54:00:00:00:04", "--firmware", new, *common).stdout
        assert by_name == netbootd("explain", "52:54:00:00:00:04", "--arch", old, *common).stdout, new
        assert by_name == netbootd("explain", "52:54:00:00:00:04", "--firmware", old, *common).stdout, new
    assert "DHCP      67 OFFER: http-efi http://10.0.0.2/boot/snponly.efi" in netbootd(
        "explain", "52:54:00:00:00:04", "--firmware", "uefi-http", *common).stdout
    # the default is uefi for both commands
    assert netbootd("explain", "52:54:00:00:00:04", *common).stdout == netbootd(
        "explain", "52:54:00:00:00:04", "--firmware", "uefi", *common).stdout
    bad = netbootd("explain", "52:54:00:00:00:04", "--firmware", "nope", *common, check=False)
    assert bad.returncode == 2 and "invalid choice: 'nope' (choose from 'bios', 'uefi'," in bad.stderr


def test_explain_and_try_show_the_same_firmware_names_and_default():
    import re

    def firmware_option(command: str) -> tuple[str, str]:
        text = " ".join(netbootd(command, "--help").stdout.split())
        names = re.search(r"--firmware (\{[^}]*\})", text)
        default = re.search(r"default (\S+?)[,;. )]", text[text.index("--firmware {", names.end()):])
        assert names and default, text
        return names.group(1), default.group(1)

    assert firmware_option("explain") == firmware_option("try")
    from netbootd.core.explain import DEFAULT_FIRMWARE, FIRMWARE_NAMES
    from netbootd.testing.firmware import FIRMWARES

    assert firmware_option("try") == ("{" + ",".join(FIRMWARE_NAMES) + "}", DEFAULT_FIRMWARE)
    assert set(FIRMWARE_NAMES) == set(FIRMWARES), "a lab firmware kind explain does not know"


def _closed_pipe(*args: str) -> tuple[int, str]:
    """Run netbootd with its stdout a pipe whose reader is gone before it writes (`... | true`)."""
    proc = subprocess.Popen([sys.executable, "-m", "netbootd", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(60), err


def test_a_closed_pipe_ends_quietly():
    """`netbootd explain ... | head -1`, `check ... | true`, `status | head -1`: no traceback."""
    import http.server
    import threading

    class NotSeen(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotSeen)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for args in (("explain", "52:54:00:00:00:02", "--config", str(EXAMPLE)),
                     ("check", "--config", str(EXAMPLE)),
                     ("status", "52:54:00:00:00:02", "--url", f"http://127.0.0.1:{server.server_port}")):
            code, err = _closed_pipe(*args)
            assert "Traceback" not in err and "BrokenPipeError" not in err and err == "", (args, err)
            assert code == 141, (args, code)  # 128 + SIGPIPE, as a shell reports a program a closed pipe ended
    finally:
        server.shutdown()


def test_serve_names_http_listen_when_its_address_is_not_on_this_host(tmp_path):
    (tmp_path / "machines").mkdir()
    cfg = tmp_path / "netbootd.toml"
    cfg.write_text('machines_dir = "machines"\nstate_dir = "state"\ncache_dir = "cache"\n[http]\nport = 8080\n'
                   'listen = "192.0.2.77"\n[ui]\nlisten = ""\n[dhcp]\nenabled = false\n[tftp]\nenabled = false\n')
    out = netbootd("serve", "--config", str(cfg), check=False)
    assert out.returncode == 1
    assert "cannot bind TCP port 8080: the listen address is not on this host (check http.listen)" in out.stderr
