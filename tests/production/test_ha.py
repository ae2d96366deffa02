"""Active-active HA: two netbootd answering the same machines, from the same machine files and the
same http.signing_key_file. A URL one of them signs must verify on the other; a daemon with
another key refuses it (403).

On loopback here (two real daemons); tests/production/test_ha_netns.py does the same on one
bridge with DHCP, and tests/integration/test_ha_boot.py boots a QEMU machine across the pair."""

from __future__ import annotations

import httpx
import pytest

from netbootd.config.settingsfile import load_settings
from netbootd.service import StartupError, url_signer
from tests.production.test_signing_key import machine_with_ignition, signed_ignition_url, use_key, write_key


def shared_machines(a, b) -> None:
    """B serves A's machines directory: one set of files for both, as from one ConfigMap."""
    b.config.write_text(b.config.read_text().replace('machines_dir = "machines"', f'machines_dir = "{a.machines}"'))


def on(daemon, url: str, source) -> str:
    """The same URL, sent to another daemon (what a machine does when its Ignition host differs)."""
    assert url.startswith(source.url + "/"), url
    return daemon.url + url[len(source.url):]


def test_url_signed_by_one_verifies_on_the_other(daemon_factory, tmp_path):
    key = write_key(tmp_path / "signing.key")
    a, b = daemon_factory(), daemon_factory()
    for d in (a, b):
        use_key(d, key)
    shared_machines(a, b)
    machine_with_ignition(a)
    a.start()
    b.start()
    from_a, from_b = signed_ignition_url(a), signed_ignition_url(b)
    for url, source in ((from_a, a), (from_b, b)):
        for target in (a, b):
            r = httpx.get(on(target, url, source))
            assert r.status_code == 200, (url, target.url, r.text)
            assert r.json()["marker"] == "ha-secret"
    # both loaded the same key: the same key_id in each log, for an operator to compare
    ids = {d: [line.split("key_id=")[1].split()[0] for line in d.log().splitlines() if "key_id=" in line] for d in (a, b)}
    assert ids[a] and ids[a] == ids[b]
    # a restart of B reads the same file: A's URL still verifies there
    b.stop()
    b.start()
    assert httpx.get(on(b, from_a, a)).status_code == 200


def test_another_key_refuses_with_403(daemon_factory, tmp_path):
    a, c = daemon_factory(), daemon_factory()
    use_key(a, write_key(tmp_path / "a.key"))
    use_key(c, write_key(tmp_path / "c.key"))
    shared_machines(a, c)
    machine_with_ignition(a)
    a.start()
    c.start()
    url = signed_ignition_url(a)
    assert httpx.get(url).status_code == 200
    r = httpx.get(on(c, url, a))
    assert r.status_code == 403 and "bad signature" in r.text
    assert "ignition refused" in c.log()


def test_without_a_shared_key_each_host_refuses_the_others_urls(daemon_factory):
    """The reason for the setting: without it each host keeps a key of its own in state_dir."""
    a, b = daemon_factory(), daemon_factory()
    shared_machines(a, b)
    machine_with_ignition(a)
    a.start()
    b.start()
    url = signed_ignition_url(a)
    assert httpx.get(url).status_code == 200
    assert httpx.get(on(b, url, a)).status_code == 403
    assert (a.root / "state" / "url-signing.key").is_file() and (b.root / "state" / "url-signing.key").is_file()


def test_key_file_spoiled_after_the_settings_check_still_stops_the_start(tmp_path):
    """load_settings checked the file; the service reads it again and says why it cannot start."""
    key = write_key(tmp_path / "signing.key")
    config = tmp_path / "netbootd.toml"
    config.write_text(f'state_dir = "state"\n[http]\nsigning_key_file = "{key}"\n')
    settings = load_settings(config)
    key.chmod(0o644)
    with pytest.raises(StartupError, match=r"^http.signing_key_file: signing key file .* is readable by other users"):
        url_signer(settings)
    key.chmod(0o600)
    assert url_signer(settings).key_id == url_signer(settings).key_id
