"""Signed URLs for per-machine secrets (Ignition, BOOTy configs).

A URL netbootd generates for machine M carries `exp` (unix time) and `sig` = HMAC-SHA256 over
(scope, M, exp) with a key kept in the state directory, so URLs survive restarts (pixiecore's
die with the process) and one machine's URL never opens another's config.

Several netbootd answering the same machines (active-active HA) share one key instead: the file
named by http.signing_key_file, distributed by the operator, so a URL signed by one verifies on
the others. `read_key_file` is the one place that decides whether such a file is fit to use.
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
from netbootd.secretfile import read_private_file

log = get_logger("netbootd.core")

KEY_FILE = "url-signing.key"
MIN_KEY_BYTES = 32
MAX_KEY_BYTES = 64 * 1024  # a key file is small; anything bigger is the wrong file

# Group read is allowed: the file's group is picked by whoever deploys it (Kubernetes adds group
# read for the pod's fsGroup to Secret files, and a dedicated group is how a daemon that does not
# own a root-owned key gets to read it). "Others" is every account and container on the host:
# refused. Write by group or others is refused as well: whoever can replace the key can pick one
# they know and forge URLs after the next restart.


class SigningKeyError(Exception):
    """The signing key file cannot be used; the message names the file and the fix."""


def make_key_hint(path: Path) -> str:
    return (
        f"make one with `head -c {MIN_KEY_BYTES} /dev/urandom > {path} && chmod 600 {path}` and give every "
        "netbootd that answers the same machines the same file (a Kubernetes Secret: defaultMode: 0400)"
    )


def read_key_file(path: Path) -> bytes:
    """The key in `path` (symlinks followed, as in a Kubernetes Secret volume), or SigningKeyError.

    The file is opened once and checked through its descriptor, so what is checked is what is read.
    """
    key = read_private_file(
        path, MAX_KEY_BYTES, "signing key file", SigningKeyError, missing=make_key_hint(path),
        not_regular=make_key_hint(path),
        exposed=(f"whoever can read or replace it can forge signed Ignition/BOOTy URLs; run `chmod 600 {path}` "
                 "(a Kubernetes Secret: defaultMode: 0400)"))
    if len(key) < MIN_KEY_BYTES:
        raise SigningKeyError(
            f"signing key file {path} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES} random bytes: "
            f"{make_key_hint(path)}"
        )
    if len(key) > MAX_KEY_BYTES:
        raise SigningKeyError(f"signing key file {path} is larger than {MAX_KEY_BYTES} bytes: is it the right file?")
    return key


def key_id(key: bytes) -> str:
    """A short fingerprint to compare keys across hosts in their logs; reveals nothing of the key
    (SHA-256 of at least 32 random bytes)."""
    return hashlib.sha256(b"netbootd url-signing key id\n" + key).hexdigest()[:12]


class UrlSigner:
    def __init__(self, key: bytes, ttl: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.ttl = ttl
        self._clock = clock

    def __repr__(self) -> str:  # never the key itself, wherever a signer gets printed
        return f"UrlSigner(key_id={key_id(self._key)}, ttl={self.ttl})"

    @property
    def key_id(self) -> str:
        return key_id(self._key)

    @classmethod
    def from_key_file(cls, path: Path, ttl: float) -> UrlSigner:
        """The key an operator shares between hosts; SigningKeyError when unfit (see read_key_file)."""
        signer = cls(read_key_file(path), ttl)
        log.info("URL signing key loaded", path=str(path), key_id=signer.key_id)
        return signer

    @classmethod
    def from_state_dir(cls, state_dir: Path, ttl: float) -> UrlSigner:
        path = state_dir / KEY_FILE
        try:
            key = path.read_bytes()
            if len(key) >= MIN_KEY_BYTES:
                return cls(key, ttl)
        except OSError:
            pass
        key = secrets.token_bytes(MIN_KEY_BYTES)
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
        return hmac.digest(self._key, msg, "sha256").hex()[:32]  # one-shot: a third of hmac.new's time

    def sign(self, scope: str, ident: str, ttl: float | None = None) -> tuple[int, str]:
        """`ttl`: this URL's lifetime when not the signer's (an installer's callbacks live longer)."""
        exp = int(self._clock() + (self.ttl if ttl is None else ttl))
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
