"""The resource markers (tests/conftest.py): every test that uses a resource fixture, or lives in a
resource directory, carries the markers it needs (and what they imply); the markers are registered;
and the check that fails a test starting a resource without its marker recognises the resources."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import (
    DIRECTORY_MARKERS,
    IMPLIES,
    ORDER,
    RESOURCE_FIXTURES,
    TESTS,
    XDIST_GROUPS,
    markers_needed,
    markers_of,
    slow_wanted,
)


def test_every_collected_test_carries_the_markers_of_its_fixtures_and_directory(request):
    """Over the whole session (every worker collects every test): nothing that needs a resource
    lacks its marker, whichever way it was to be applied."""
    lacking = []
    for item in request.session.items:
        have = {m.name for m in item.iter_markers()}
        need = set(markers_of(item))
        need |= {implied for name in need | have for implied in IMPLIES.get(name, ())}
        if need - have:
            lacking.append(f"{item.nodeid}: {sorted(need - have)}")
    assert not lacking, "tests without the markers their fixtures or directory need:\n" + "\n".join(lacking)


def test_the_markers_are_registered(pytestconfig):
    registered = {line.split(":")[0].split("(")[0].strip() for line in pytestconfig.getini("markers")}
    used = {m for ms in [*RESOURCE_FIXTURES.values(), *DIRECTORY_MARKERS.values()] for m in ms}
    used |= set(IMPLIES) | {m for ms in IMPLIES.values() for m in ms} | set(ORDER) | set(XDIST_GROUPS)
    assert used <= registered, used - registered


@pytest.mark.parametrize(
    ("argv", "needed"),
    [
        (["ip", "netns", "add", "nblab1x0"], {"netns"}),
        (["ip", "-n", "nblab1x0", "link", "set", "lo", "up"], {"netns"}),
        (["ip", "link", "show"], set()),
        (["ip", "netns", "exec", "nblab1x0", "/usr/bin/qemu-system-x86_64", "-accel", "tcg"], {"netns", "integration"}),
        (["qemu-system-aarch64", "-machine", "virt"], {"integration"}),
        (["ip", "netns", "exec", "nblab1x0b", "/usr/bin/docker-registry", "serve", "c.yml"], {"netns", "registry"}),
        (["/usr/bin/docker-registry", "serve", "config.yml"], {"registry"}),
        (["podman", "image", "mount", "localhost/netbootd:ci"], {"container"}),
        (["/venv/lib/python3.11/site-packages/playwright/driver/node", "cli.js", "run-driver"], {"browser"}),
        (["/usr/bin/chromium", "--headless"], {"browser"}),
        (["setpriv", "--reuid=nobody", "python3", "-m", "netbootd"], {"root"}),
        (["mount", "-t", "tmpfs", "x", "/tmp/x"], {"root"}),
        (["curl", "-sS", "tftp://127.0.0.1:6969/x"], set()),
        (["/usr/bin/python3", "-m", "netbootd", "serve", "--config", "netbootd.toml"], set()),
    ],
)
def test_the_resource_check_recognises_resources(argv, needed):
    assert markers_needed(argv) == needed


def test_slow_tests_run_only_when_asked(pytestconfig):
    assert "slow" in {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    assert not slow_wanted(False, {})
    assert not slow_wanted(False, {"NETBOOTD_SLOW": "0"})
    assert slow_wanted(False, {"NETBOOTD_SLOW": "1"})
    assert slow_wanted(True, {})


def test_a_slow_test_is_skipped_by_default_and_says_how_to_run_it():
    """A real pytest run of a `slow` test file without --run-slow or NETBOOTD_SLOW=1: skipped at
    setup (nothing of it runs: no lab, no QEMU), with the reason saying how to run it."""
    env = {k: v for k, v in os.environ.items() if k != "NETBOOTD_SLOW"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-rs", "-q", str(TESTS / "integration" / "test_arm64_installer.py")],
        capture_output=True, text=True, timeout=120, cwd=TESTS.parent, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "1 skipped" in run.stdout and "slow: a long boot, run with --run-slow or NETBOOTD_SLOW=1" in run.stdout, run.stdout
