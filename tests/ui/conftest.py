"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright for Python.

Playwright's own browser download cannot run here (no network), so it launches the system
Chromium. A test that fails saves a screenshot of each page it opened (and the page's HTML) under
tests/ui/.artifacts/<test name>/ (NETBOOTD_UI_SCREENSHOTS=1: every test does, to look at them).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from netbootd.testing.netns import exec_argv

# the QEMU lab (tests/integration): the dashboard test that watches a real firmware boot uses it
from tests.integration.conftest import assets, lab, lab_separate_host  # noqa: F401

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / ".artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def browser_missing() -> str:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is missing (pip install -e '.[test]')"
    return ""


def need_browser() -> None:
    reason = browser_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"dashboard browser tests: {reason}")
        pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    # a failed lab's artefacts (netbootd.testing.plugin) go beside these tests, as tests/integration's do
    if not config.getoption("--netboot-artifacts"):
        config.option.netboot_artifacts = str(ARTIFACTS / "lab")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


class Browser:
    """One Chromium for a test, and every page it opened (for the failure artefacts)."""

    def __init__(self, executable: Path = CHROMIUM) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_FLAGS)
        self.pages: list = []

    def page(self, url: str | None = None, **context):
        """A new page (in a context of its own: `context` as Playwright's new_context takes it,
        e.g. http_credentials={"username": ..., "password": ...})."""
        page = self.browser.new_page(viewport={"width": 1400, "height": 1000}, **context)
        page.set_default_timeout(15_000)
        self.pages.append(page)
        if url:
            page.goto(url)
        return page

    def save(self, name: str) -> Path:
        out = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for i, page in enumerate(self.pages):
            try:
                page.screenshot(path=str(out / f"page{i}.png"), full_page=True)
                (out / f"page{i}.html").write_text(page.content())
            except Exception as exc:  # a page that crashed: say so, keep the others
                (out / f"page{i}.error.txt").write_text(str(exc))
        return out

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self._playwright.stop()


def _browser(request, executable: Path = CHROMIUM) -> Iterator[Browser]:
    """Browsers are made in fixtures, never inside a test body (see lab_browser)."""
    need_browser()
    b = Browser(executable)
    try:
        yield b
    finally:
        report = getattr(request.node, "report_call", None)
        if (report is not None and report.failed) or os.environ.get("NETBOOTD_UI_SCREENSHOTS"):
            where = b.save(request.node.name)
            print(f"\ndashboard screenshots and HTML: {where}")
        b.close()


@pytest.fixture
def browser(request) -> Iterator[Browser]:
    yield from _browser(request)


@pytest.fixture
def lab_browser(lab_separate_host, request, tmp_path) -> Iterator[Browser]:  # noqa: F811 (a fixture)
    """A browser whose Chromium runs inside the lab's boot host namespace, where its netbootd and
    dashboard listen: a wrapper `ip netns exec`s the real binary (Playwright talks to it over a
    pipe, which crosses namespaces). Made here, in fixture setup, not in the test: pytest-twisted
    runs test bodies inside its reactor's greenlet, and Playwright's greenlets made there would
    hand control back to that reactor when they end (the run would hang in reactor.run)."""
    need_browser()
    wrapper = tmp_path / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(exec_argv(lab_separate_host.boot_ns, str(CHROMIUM)))} "$@"\n')
    wrapper.chmod(0o755)
    yield from _browser(request, wrapper)
