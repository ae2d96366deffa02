"""The shipped example, started as README's first command does, on a host with no network at all
(a fresh network namespace with only loopback): it starts cleanly, reports the one image it cannot
resolve as a health problem naming its machine and what to check, logs that failure a few times and
then stays quiet, and a reload does not log it again."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from pathlib import Path

import httpx
import pytest

from netbootd.testing.netns import Topology
from tests.conftest import wait_for
from tests.helpers import NETNS

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "netbootd"

pytestmark = NETNS  # a network namespace with no network


@pytest.fixture
def offline_ns():
    with Topology("nboff") as net:
        yield net.namespace()


def test_shipped_example_starts_cleanly_offline(offline_ns, tmp_path):
    if not Path("/usr/lib/ipxe/undionly.kpxe").exists():
        pytest.skip("Debian's ipxe package is not installed")
    conf = tmp_path / "netbootd"
    shutil.copytree(EXAMPLE, conf)
    settings = conf / "netbootd.toml"  # the example as shipped: its state and cache stay beside it
    log = tmp_path / "netbootd.log"
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "CACHE_DIRECTORY")}
    proc = offline_ns.start("netbootd", [sys.executable, "-m", "netbootd", "serve", "--config", str(settings)], log,
                            env={**env, "PYTHONUNBUFFERED": "1"})
    try:
        def get(path: str) -> str | None:
            """netbootd's answer on port 80, from inside the namespace (it has only loopback)."""
            r = offline_ns.run(sys.executable, "-c",
                               f"import httpx; print(httpx.get('http://127.0.0.1{path}', timeout=2).text)", check=False)
            return r.stdout if r.returncode == 0 else None

        def health():
            text = get("/healthz")
            if text is None:
                return None
            doc = httpx.Response(200, content=text).json()
            return doc if doc["problems"] else None

        def resolution_errors() -> float:
            text = get("/metrics") or ""
            m = re.search(r'^netbootd_image_resolutions_total\{result="error"\} (\S+)$', text, re.M)
            return float(m.group(1)) if m else 0.0

        def failures() -> list[str]:
            return [line for line in log.read_text().splitlines() if "image not resolvable" in line]

        doc = wait_for(health, timeout=30, interval=0.5)
        assert doc["status"] == "degraded" and doc["summary"] == "8 machine files, no default"
        # safe by default: it says where it answers PXE, and that unknown machines get nothing
        assert re.search(r'answering PXE interfaces="every interface \(dhcp.interfaces = \[\]\)" '
                         r'unknown_machines="not answered \(no default.toml\)"', log.read_text()), log.read_text()
        assert (conf / "state" / "state.sqlite3").is_file()  # the demo's state is in its own directory
        assert doc["problems"] == [{
            "kind": "image_unresolved",
            "what": "ghcr.io/gardenlinux/gardenlinux:1592.4",
            "machines": ["52-54-00-00-00-05"],
            "message": doc["problems"][0]["message"],
        }], doc
        assert doc["problems"][0]["message"].startswith("unreachable:")
        # the first three failures are logged (resolution attempts at 0 s, 5 s, 15 s: backoff) ...
        wait_for(lambda: len(failures()) >= 3, timeout=60, interval=0.5)
        # ... and no more: a reload resolves at once, and that fourth failure must not be logged again
        attempts = resolution_errors()
        proc.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in log.read_text(), timeout=30, interval=0.1)
        wait_for(lambda: resolution_errors() > attempts, timeout=30, interval=0.2)
        assert health() is not None  # the reactor answered after the failed resolution, whose result it logs
        text = log.read_text()
        assert "Traceback" not in text and " critical " not in text and " error " not in text, text
        assert len(failures()) == 3, text
        assert all("machines=52-54-00-00-00-05" in line and "registry.allowed" in line for line in failures())
        assert "answers every unknown machine" not in text
        # the operator opts in to answering unknown machines, on every interface: said at once
        shutil.copy(conf / "machines" / "default.toml.example", conf / "machines" / "default.toml")
        wait_for(lambda: re.search(r" warn service answering PXE on every interface, and default.toml answers every "
                                   r"unknown machine: set dhcp.interfaces", log.read_text()), timeout=30, interval=0.2)
    finally:
        proc.stop(grace=10)
    print(log.read_text())  # the closing note quotes what a new user sees
