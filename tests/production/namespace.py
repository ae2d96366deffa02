"""A private mount and network namespace for tests that install or run netbootd at its real paths
(/etc/netbootd, /opt/netbootd, ...) without changing the host: the directories named are overlays
on a temporary directory, seen only by processes in the namespace; its network has only loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path


class Namespace:
    """A process holding the private mount + network namespace; commands run in it with nsenter, and
    the test reads its files through /proc/PID/root."""

    def __init__(self, base: Path, overlaid: tuple[str, ...]) -> None:
        mounts = "; ".join(
            f"mkdir -p {base}/{d}/upper {base}/{d}/work && "
            f"mount -t overlay overlay -o lowerdir=/{d},upperdir={base}/{d}/upper,workdir={base}/{d}/work /{d}"
            for d in overlaid)
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--net", "--propagation", "private", "bash", "-c",
             f"set -e; ip link set lo up; {mounts}; echo ready; exec sleep infinity"],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "ready\n", f"the namespace was not set up (overlayfs?): {line!r}"
        self.root = Path(f"/proc/{self.proc.pid}/root")

    def prefix(self, net: bool = True) -> list[str]:
        """nsenter into the namespace's files, and its network unless `net` is False (pip, which
        needs the host's)."""
        return ["nsenter", f"--target={self.proc.pid}", "--mount", *(["--net"] if net else []), "--"]

    def run(self, *argv: str, check: bool = True, net: bool = True, **kw) -> subprocess.CompletedProcess:
        out = subprocess.run([*self.prefix(net), *argv], capture_output=True, text=True, timeout=600, **kw)
        if check:
            assert out.returncode == 0, f"{argv} exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
        return out

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def curl(self, url: str, *args: str) -> tuple[str, str]:
        """(HTTP status, body) of a GET from inside the namespace's network."""
        out = self.run("curl", "-s", "-m", "10", "-w", "\n%{http_code}", *args, url, check=False)
        body, _, code = out.stdout.rpartition("\n")
        return code, body
