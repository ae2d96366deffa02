"""Signed URLs for per-machine secrets (Ignition, BOOTy configs).

A URL netbootd generates for machine M carries `exp` (unix time) and `sig` = HMAC-SHA256 over
(scope, M, exp) with a key kept in the state directory, so URLs survive restarts (pixiecore's
die with the process) and one machine's URL never opens another's config.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from netbootd.logs import get_logger

log = get_logger("netbootd.core")

KEY_FILE = "url-signing.key"


class UrlSigner:
    def __init__(self, key: bytes, ttl: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.ttl = ttl
        self._clock = clock

    @classmethod
    def from_state_dir(cls, state_dir: Path, ttl: float) -> UrlSigner:
        path = state_dir / KEY_FILE
        try:
            key = path.read_bytes()
            if len(key) >= 32:
                return cls(key, ttl)
        except OSError:
            pass
        key = secrets.token_bytes(32)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key)
            os.replace(tmp, path)
        except OSError as exc:
            log.warn(
                "cannot keep the URL signing key; signed URLs will not survive a restart (make state_dir writable)",
                path=str(path),
                error=str(exc),
            )
        return cls(key, ttl)

    def _mac(self, scope: str, ident: str, exp: int) -> str:
        msg = f"{scope}\n{ident}\n{exp}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]

    def sign(self, scope: str, ident: str) -> tuple[int, str]:
        exp = int(self._clock() + self.ttl)
        return exp, self._mac(scope, ident, exp)

    def check(self, scope: str, ident: str, exp_text: str, sig: str) -> str | None:
        """None if valid, else why not (for the 403 message)."""
        if not exp_text or not sig:
            return "this URL must be signed (use the URL from the machine's boot script)"
        try:
            exp = int(exp_text)
        except ValueError:
            return "malformed expiry"
        if not hmac.compare_digest(self._mac(scope, ident, exp), sig):
            return "bad signature (tampered, or signed for another machine)"
        if exp < self._clock():
            return "signed URL expired; reboot the machine to get a fresh one"
        return None
