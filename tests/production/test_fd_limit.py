"""The open-file soft limit is raised to what the transfer caps need (a storm's sockets), within the hard limit."""

from __future__ import annotations

import resource
import subprocess
import sys

from netbootd.config.settings import Settings
from netbootd.service import raise_fd_limit


def _need(s: Settings) -> int:
    return s.tftp.max_transfers + s.http.max_transfers + s.http.max_queued + 512


def test_soft_limit_raised_to_what_the_caps_need():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        raise_fd_limit(Settings())
        want = _need(Settings()) if hard == resource.RLIM_INFINITY else min(_need(Settings()), hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (want, hard)
        raise_fd_limit(Settings())  # idempotent; never lowers
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == want
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_hard_limit_below_the_need_is_used_whole():
    code = (
        "import resource; from netbootd.config.settings import Settings; from netbootd.service import raise_fd_limit; "
        "raise_fd_limit(Settings()); print(resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    out = subprocess.run(["prlimit", "--nofile=512:3000", "--", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(3000, 3000)"
