"""Who may read the dashboard: ui.auth_file, HTTP basic users or bearer tokens.

The file holds `user:password` lines (HTTP basic), or lines of one word (a bearer token, at least
MIN_TOKEN characters), `#` comments and blank lines. A password may be stored hashed instead of
in clear: `user:pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX`, as printed by
`python -m netbootd.ui.auth USER` (reads the password from the terminal).

Like http.signing_key_file, the file must be a regular file that other users cannot read and
that neither they nor its group can write (netbootd.secretfile.FORBIDDEN_MODE_BITS): whoever
reads it can read the dashboard, whoever writes it can let themselves in.

Only digests are kept in memory, and every comparison is constant-time (hmac.compare_digest over
fixed-length digests). A hashed password costs a PBKDF2 per check, so a header that verified once
is remembered (by its keyed digest, never in clear) for REMEMBER seconds: a dashboard's requests
do not each cost a PBKDF2 on the reactor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from netbootd.secretfile import read_private_file

MIN_TOKEN = 16
MAX_FILE_BYTES = 64 * 1024
PBKDF2_PREFIX = "pbkdf2-sha256$"
PBKDF2_ITERATIONS = 200_000
REMEMBER = 300.0  # seconds a verified Authorization header is remembered
REMEMBER_MAX = 64  # headers remembered at once
REALM = "netbootd dashboard"


class AuthFileError(Exception):
    """ui.auth_file cannot be used; the message names the file and the fix."""


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@attrs.frozen
class _User:
    name: bytes  # sha256 of the user name
    plain: bytes | None = None  # sha256 of a password stored in clear
    salt: bytes = b""
    iterations: int = 0
    hashed: bytes = b""  # PBKDF2 of a password stored hashed

    def accepts(self, password: str) -> bool:
        if self.plain is not None:
            return hmac.compare_digest(self.plain, _digest(password))
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), self.salt, self.iterations)
        return hmac.compare_digest(self.hashed, got)


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{PBKDF2_PREFIX}{iterations}${salt.hex()}${digest.hex()}"


@attrs.define
class Credentials:
    path: Path
    users: list[_User] = attrs.field(factory=list)
    tokens: list[bytes] = attrs.field(factory=list)  # sha256 of each token

    def describe(self) -> str:
        kinds = [f"{len(self.users)} user(s)" if self.users else "", f"{len(self.tokens)} token(s)" if self.tokens else ""]
        return " and ".join(k for k in kinds if k)


def _parse(path: Path, text: str) -> Credentials:
    creds = Credentials(path)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if ":" not in line:
            if len(line) < MIN_TOKEN or any(c.isspace() for c in line):
                raise AuthFileError(f"{path}:{number}: a bearer token is one word of at least {MIN_TOKEN} characters "
                                    f"(make one with `head -c 24 /dev/urandom | base64`); a user is `user:password`")
            creds.tokens.append(_digest(line))
            continue
        name, _, password = line.partition(":")
        if not name or not password:
            raise AuthFileError(f"{path}:{number}: expected `user:password` with neither empty")
        if password.startswith(PBKDF2_PREFIX):
            try:
                iterations, salt, hashed = password[len(PBKDF2_PREFIX):].split("$")
                user = _User(_digest(name), salt=bytes.fromhex(salt), iterations=int(iterations),
                             hashed=bytes.fromhex(hashed))
            except ValueError:
                raise AuthFileError(f"{path}:{number}: a hashed password is {PBKDF2_PREFIX}ITERATIONS$SALT$HASH, "
                                    "as `python -m netbootd.ui.auth USER` prints it") from None
            if not 1 <= user.iterations <= 10_000_000 or len(user.hashed) != 32:
                raise AuthFileError(f"{path}:{number}: the hashed password's iterations or length are wrong")
            creds.users.append(user)
        else:
            creds.users.append(_User(_digest(name), plain=_digest(password)))
    if not creds.users and not creds.tokens:
        raise AuthFileError(f"{path} lists no user and no token: add `user:password` lines or one token line")
    return creds


def read_auth_file(path: Path) -> Credentials:
    """The credentials in `path`, or AuthFileError (netbootd.secretfile: opened once, checked
    through the descriptor)."""
    data = read_private_file(
        path, MAX_FILE_BYTES, "ui.auth_file", AuthFileError,
        missing=f"write `user:password` lines or one token into it and `chmod 600 {path}`, or unset ui.auth_file",
        not_regular="",
        exposed=(f"whoever can read it can read the dashboard, whoever can write it can let themselves in; "
                 f"run `chmod 600 {path}`"))
    if len(data) > MAX_FILE_BYTES:
        raise AuthFileError(f"ui.auth_file {path} is larger than {MAX_FILE_BYTES} bytes: is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthFileError(f"ui.auth_file {path} is not UTF-8 text") from None
    return _parse(path, text)


class Authenticator:
    """Checks a request's Authorization header against the credentials (None: everyone may read)."""

    def __init__(self, credentials: Credentials | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.credentials = credentials
        self.clock = clock
        self._key = secrets.token_bytes(32)  # keys the remembered headers' digests
        self._remembered: dict[bytes, float] = {}

    @property
    def enabled(self) -> bool:
        return self.credentials is not None

    def replace(self, credentials: Credentials | None) -> None:
        self.credentials = credentials
        self._remembered.clear()

    def allows(self, header: bytes | None) -> bool:
        creds = self.credentials
        if creds is None:
            return True
        if not header:
            return False
        mark = hmac.new(self._key, header, hashlib.sha256).digest()
        now = self.clock()
        seen = self._remembered.get(mark)
        if seen is not None and now - seen < REMEMBER:
            return True
        ok = self._check(creds, header)
        if ok:
            if len(self._remembered) >= REMEMBER_MAX:
                self._remembered.pop(next(iter(self._remembered)))
            self._remembered[mark] = now
        return ok

    @staticmethod
    def _check(creds: Credentials, header: bytes) -> bool:
        scheme, _, value = header.strip().partition(b" ")
        scheme = scheme.lower()
        if scheme == b"bearer" and creds.tokens:
            got = _digest(value.strip().decode("latin-1"))
            # every token is compared (no early exit): the time does not say which one nearly matched
            return sum(hmac.compare_digest(got, t) for t in creds.tokens) > 0
        if scheme == b"basic" and creds.users:
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            name, sep, password = decoded.partition(":")
            if not sep:
                return False
            want = _digest(name)
            for user in creds.users:
                if hmac.compare_digest(user.name, want):
                    return user.accepts(password)
            return False
        return False

    @staticmethod
    def who(header: bytes | None) -> str:
        """Who an (already allowed) Authorization header says it is, for the log of an action: a
        Basic user's name, or which Bearer token (the first hex digits of its digest)."""
        scheme, _, value = (header or b"").strip().partition(b" ")
        if scheme.lower() == b"basic":
            try:
                return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                return ""
        if scheme.lower() == b"bearer":
            return "token " + _digest(value.strip().decode("latin-1")).hex()[:8]
        return ""

    def challenge(self) -> bytes:
        """The WWW-Authenticate header of a 401: the schemes the file allows."""
        creds = self.credentials
        schemes = []
        if creds is not None and creds.users:
            schemes.append(f'Basic realm="{REALM}", charset="UTF-8"')
        if creds is not None and creds.tokens:
            schemes.append(f'Bearer realm="{REALM}"')
        return ", ".join(schemes).encode()


def main(argv: list[str] | None = None) -> int:
    """`python -m netbootd.ui.auth USER`: a ui.auth_file line with the password hashed."""
    import getpass

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or ":" in args[0] or not args[0]:
        print("usage: python -m netbootd.ui.auth USER  (prints USER:<hashed password> for ui.auth_file)",
              file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args[0]}: ")
        if password != getpass.getpass("again: "):
            print("the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("an empty password is not a password", file=sys.stderr)
        return 1
    print(f"{args[0]}:{hash_password(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
