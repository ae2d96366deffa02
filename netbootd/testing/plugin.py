"""pytest plugin (registered as `netbootd` through the pytest11 entry point): netboot tests in QEMU.

    def test_worker_boots(netboot_lab):
        result = netboot_lab.boot("52:54:00:12:34:56", firmware="uefi-http", expect="login:", timeout=300)
        assert result.booted, result.reason

`netboot_lab` is a fresh `netbootd.testing.Lab` per test: a private network namespace with a site
DHCP server, a netbootd on the configuration named by the `netboot_config` ini option (or
`--netboot-config`; netbootd.toml or its directory, relative to the rootdir), and QEMU machines.
Without one, the lab's configuration starts empty: write machines with `netboot_lab.machine(mac,
toml)` and files under `netboot_lab.files`. netbootd starts at the first boot (or
`netboot_lab.start_netbootd()`), and reloads machine files written after that by itself.

Needs root, iproute2, dnsmasq and QEMU; a test skips, naming what is missing, where they are not
(and fails instead when `CI` is set, so a CI job cannot pass by skipping). When a test fails, the
lab's logs, capture and configuration are kept under `netboot_artifacts` (default
`.netboot-artifacts/`), and the report shows their tails.

Importing this module costs nothing until the fixture is used (pytest loads it in every session of
an environment where netbootd is installed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("netbootd", "netboot tests in QEMU (netbootd.testing)")
    group.addoption("--netboot-config", help="netbootd.toml (or its directory) the netboot_lab fixture boots against")
    group.addoption("--netboot-artifacts", help="where a failed test's lab files are kept (default .netboot-artifacts)")
    parser.addini("netboot_config", "netbootd.toml (or its directory) the netboot_lab fixture boots against")
    parser.addini("netboot_artifacts", "where a failed test's lab files are kept", default=".netboot-artifacts")


def _path_option(config: pytest.Config, name: str) -> Path | None:
    value = config.getoption(f"--{name.replace('_', '-')}") or config.getini(name)
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else Path(config.rootpath) / path


def require(firmware: str | None = None) -> None:
    """Skip (fail under CI) when a lab, or a machine with `firmware`, cannot run here."""
    from netbootd.testing.lab import missing_requirements

    reason = missing_requirements(firmware)
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"netboot lab: {reason} (CI is set: a netboot test must not skip there)")
        pytest.skip(f"netboot lab: {reason}")


@pytest.fixture
def netboot_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """A netboot lab for this test (see the module doc); torn down after it."""
    from netbootd.testing.lab import Lab

    require()
    lab = Lab(tmp_path / "lab", config=_path_option(request.config, "netboot_config"))
    request.node.netboot_lab = lab
    with lab:
        yield lab


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    lab = getattr(item, "netboot_lab", None)
    if lab is None or report.when not in ("setup", "call"):
        return
    for boot in lab.boots:
        report.user_properties.append((f"boot {boot.name}", f"{boot.seconds:.1f} s"))
    if report.failed:
        artifacts = _path_option(item.config, "netboot_artifacts") or Path(".netboot-artifacts")
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid.split("::", 1)[-1])
        try:
            kept: object = lab.keep(artifacts / safe)
        except Exception as exc:
            kept = f"(could not keep the lab's files: {exc})"
        report.sections.append(("netboot lab", f"artifacts kept in {kept}\n{lab.report()}"))
