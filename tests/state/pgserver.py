"""A private PostgreSQL server for the tests: Debian's binaries, a cluster initialised in a
temporary directory, listening on a free port on 127.0.0.1 (and a unix socket in that directory),
password (SCRAM) authentication over TCP. Run as the `postgres` user when the tests run as root
(the server refuses root). Stopped by the PID of the process this module started."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ADMIN = "admin"


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding a server, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # Not pytest's tmp_path: its parents are private to root, and the server runs as `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="netbootd-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root / "server.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", ADMIN, "--auth-local=trust",
                   "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"])

    def _run(self, argv: list[str]) -> None:
        out = subprocess.run([*self._as_user, *argv], capture_output=True, text=True, cwd=self.root)
        if out.returncode:
            raise RuntimeError(f"{argv[0]} failed: {out.stdout}{out.stderr}")

    def start(self) -> None:
        assert self.proc is None
        log = open(self.log, "ab")  # the child writes to it; closed here once handed over
        self.proc = subprocess.Popen(
            [*self._as_user, str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=log, stderr=log, cwd=self.root)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", str(self.root), "-p", str(self.port)]
                              ).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not become ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, as when a database host goes away."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
             "-p", str(self.port), "-U", ADMIN, "-d", database, "-c", sql],
            capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"psql {sql!r}: {out.stderr}")
        return out.stdout.strip()

    def url(self, role: str, database: str) -> str:
        return f"postgresql://{role}@127.0.0.1:{self.port}/{database}"

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
