"""Who netbootd is to a registry: the credentials Docker config files hold (registry.auth_file,
$DOCKER_CONFIG, ~/.docker; auths, credHelpers, credsStore), the auth challenge a registry answers
`GET /v2/` with, and the pull tokens they buy (netbootd.images.registry asks for them)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from netbootd.imageref import canonical_registry
from netbootd.logs import get_logger

log = get_logger("netbootd.images")


@attrs.frozen
class Credential:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # OAuth2 refresh token (`docker login` against some registries)
    registry_token: str = ""  # a bearer token used as is

    def __repr__(self) -> str:  # never in logs
        return f"Credential(username={self.username!r}, ...)"


def _registry_key(key: str) -> str:
    """'https://index.docker.io/v1/' → 'docker.io'; 'http://localhost:5000' → 'localhost:5000'."""
    key = key.strip()
    if "://" in key:
        key = urlsplit(key).netloc or key
    return canonical_registry(key.split("/", 1)[0])


def docker_config_paths(auth_file: Path | None = None, environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where credentials are looked up, first hit wins: registry.auth_file, $DOCKER_CONFIG/config.json,
    ~/.docker/config.json."""
    env = os.environ if environ is None else environ
    paths = []
    if auth_file is not None:
        paths.append(Path(auth_file))
    if env.get("DOCKER_CONFIG"):
        paths.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    home = env.get("HOME") or os.path.expanduser("~")
    paths.append(Path(home) / ".docker" / "config.json")
    return paths


class CredentialStore:
    """Credentials per canonical registry from Docker config files (auths, credHelpers, credsStore)."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = list(paths)
        self._load_all()

    def _stamp(self) -> tuple:
        out: list[tuple[int, int] | None] = []
        for path in self.paths:
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def _load_all(self) -> None:
        self._auths: dict[str, Credential] = {}
        self._helpers: dict[str, str] = {}
        self._store = ""
        self.sources: list[str] = []
        self.stamp = self._stamp()
        for path in reversed(self.paths):  # earlier paths override later ones
            self._load(path)

    def refresh(self) -> bool:
        """Read the files again if any changed (after a 401: credentials may have been rotated)."""
        if self._stamp() == self.stamp:
            return False
        self._load_all()
        log.info("registry credentials reloaded", sources=",".join(self.sources))
        return True

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warn("unreadable Docker config", path=str(path), error=str(exc))
            return
        if not isinstance(doc, dict):
            return
        self.sources.append(str(path))
        for key, entry in (doc.get("auths") or {}).items():
            if not isinstance(entry, dict):
                continue
            cred = self._entry(entry)
            if cred is not None:
                self._auths[_registry_key(key)] = cred
        for key, helper in (doc.get("credHelpers") or {}).items():
            if isinstance(helper, str):
                self._helpers[_registry_key(key)] = helper
        if isinstance(doc.get("credsStore"), str):
            self._store = doc["credsStore"]

    @staticmethod
    def _entry(entry: Mapping[str, Any]) -> Credential | None:
        username, password = str(entry.get("username") or ""), str(entry.get("password") or "")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"])).decode()
                username, _, password = decoded.partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
        cred = Credential(
            username, password, str(entry.get("identitytoken") or ""), str(entry.get("registrytoken") or "")
        )
        return cred if any(attrs.astuple(cred)) else None

    def get(self, registry: str) -> Credential | None:
        registry = canonical_registry(registry)
        helper = self._helpers.get(registry) or (self._store if registry not in self._auths else "")
        if helper:
            cred = self._from_helper(helper, registry)
            if cred is not None:
                return cred
        return self._auths.get(registry)

    @staticmethod
    def _from_helper(helper: str, registry: str) -> Credential | None:
        program = shutil.which(f"docker-credential-{helper}")
        if program is None:
            log.warn("credential helper not installed", helper=helper, registry=registry)
            return None
        server = "https://index.docker.io/v1/" if registry == "docker.io" else registry
        try:
            out = subprocess.run([program, "get"], input=server.encode(), capture_output=True, timeout=10, check=True)
            doc = json.loads(out.stdout)
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        user, secret = str(doc.get("Username") or ""), str(doc.get("Secret") or "")
        if user == "<token>":
            return Credential(identity_token=secret)
        return Credential(user, secret)


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="https://x/token",service="x"' → ('bearer', {'realm': ..., 'service': ...})."""
    header = header.strip()
    scheme, _, rest = header.partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), params


@attrs.frozen
class Token:
    """A pull token, and when to stop using it."""

    value: str
    expires: float  # monotonic

