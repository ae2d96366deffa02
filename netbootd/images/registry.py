"""The OCI distribution client on httpx: probe, auth, manifest/index resolution, blob locations
(the model it resolves to is netbootd.images.oci's, the credentials netbootd.images.credentials').

Synchronous and thread-safe: the CLI calls it directly, the daemon through
`twisted.internet.threads.deferToThread` (it never runs on the reactor thread). Blob *bytes*
are not read here in the daemon: `blob_location()` hands the pump a URL and the headers to
fetch it with Twisted's own client (netbootd.images.pump).

Auth (reference.md §3): `GET /v2/` → 200 (anonymous) or 401 with a `WWW-Authenticate`
challenge. `Bearer realm=..,service=..` → a token from `<realm>?service=&scope=repository:<repo>:pull`
(anonymous, or with the credentials the Docker config holds for that registry), cached until
it expires. `Basic` → the configured username and password.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx

from netbootd import __version__
from netbootd.config.settings import RegistrySettings
from netbootd.imageref import (
    ImageRef,
    ReferenceError,
    canonical_registry,
    disallowed_message,
    parse_reference,
    registry_allowed,
)
from netbootd.images import metrics
from netbootd.images.credentials import Credential, CredentialStore, Token, docker_config_paths, parse_challenge
from netbootd.images.oci import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    AuthFailed,
    BadRequest,
    BlobLocation,
    Disallowed,
    Layer,
    NotFound,
    RegistryError,
    ResolvedImage,
    UpstreamError,
    UpstreamTimeout,
    VerificationFailed,
    is_digest,
)
from netbootd.logs import get_logger

log = get_logger("netbootd.images")

USER_AGENT = f"netbootd/{__version__}"
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


class _Singleflight:
    """One computation per key at a time; concurrent callers wait for it and share its result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[Any, threading.Lock] = {}

    def lock(self, key: Any) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())


# ---------------------------------------------------------------------- client


class RegistryClient:
    """Talks to the registries in `settings.allowed` (and only those)."""

    def __init__(
        self,
        settings: RegistrySettings,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        resolve_ttl: float = 60.0,
        stale_ttl: float = 24 * 3600.0,
        credentials: CredentialStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.resolve_ttl = resolve_ttl
        self.stale_ttl = stale_ttl
        self.clock = clock
        self.credentials = credentials or CredentialStore(docker_config_paths(settings.auth_file))
        if settings.auth_file is not None and not Path(settings.auth_file).is_file():
            log.warn("registry.auth_file does not exist; registries needing credentials will fail",
                     path=str(settings.auth_file))
        self._insecure = {canonical_registry(r) for r in settings.insecure}
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=True,  # httpx drops Authorization when a redirect changes origin
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )
        self._lock = threading.Lock()
        self._challenges: dict[str, tuple[str, dict[str, str]]] = {}  # registry → (scheme, params)
        self._tokens: dict[tuple[str, str], Token] = {}  # (registry, scope) → token
        self._resolved: OrderedDict[str, tuple[float, ResolvedImage]] = OrderedDict()
        self._flights = _Singleflight()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ policy

    def check(self, ref: ImageRef) -> None:
        if not registry_allowed(ref.registry, self.settings.allowed):
            raise Disallowed(disallowed_message(ref.registry, self.settings.allowed))

    def parse(self, image_name: str, version: str | None = None) -> ImageRef:
        try:
            ref = parse_reference(image_name, version or None)
        except ReferenceError as exc:
            raise BadRequest(str(exc)) from None
        self.check(ref)
        return ref

    def base_url(self, registry: str) -> str:
        registry = canonical_registry(registry)
        host = "registry-1.docker.io" if registry == "docker.io" else registry
        scheme = "http" if registry in self._insecure else "https"
        return f"{scheme}://{host}"

    # ------------------------------------------------------------------ transport + auth

    def _send(self, method: str, url: str, what: str, headers: Mapping[str, str] | None = None,
              stream: bool = False, **kw) -> httpx.Response:
        try:
            request = self._http.build_request(method, url, headers=dict(headers or {}), **kw)
            return self._http.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"{what}: {urlsplit(url).netloc} timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{what}: {urlsplit(url).netloc} unreachable: {exc or type(exc).__name__}") from None

    def probe(self, registry: str) -> tuple[str, dict[str, str]]:
        """GET /v2/: ('', {}) for anonymous access, else the auth challenge. Cached per registry."""
        registry = canonical_registry(registry)
        with self._lock:
            known = self._challenges.get(registry)
        if known is not None:
            return known
        response = self._send("GET", self.base_url(registry) + "/v2/", f"probing registry {registry}")
        response.close()
        if response.status_code == 200:
            challenge: tuple[str, dict[str, str]] = ("", {})
        elif response.status_code == 401:
            challenge = parse_challenge(response.headers.get("www-authenticate", ""))
        elif response.status_code == 404:
            raise UpstreamError(f"{registry} does not speak the registry API (GET /v2/ → 404)")
        else:
            raise UpstreamError(f"probing registry {registry}: GET /v2/ → HTTP {response.status_code}")
        with self._lock:
            self._challenges[registry] = challenge
        return challenge

    def _auth_headers(self, registry: str, repository: str, fresh: bool = False) -> dict[str, str]:
        scheme, params = self.probe(registry)
        if not scheme:
            return {}
        cred = self.credentials.get(registry)
        if scheme == "basic":
            if cred is None or not (cred.username or cred.password):
                raise AuthFailed(f"{registry} wants a username and password and none is configured "
                                 f"(docker login, DOCKER_CONFIG, or registry.auth_file)")
            raw = base64.b64encode(f"{cred.username}:{cred.password}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}
        if scheme == "bearer":
            if cred is not None and cred.registry_token:
                return {"Authorization": f"Bearer {cred.registry_token}"}
            return {"Authorization": f"Bearer {self._token(registry, repository, params, cred, fresh)}"}
        raise AuthFailed(f"{registry} asks for unsupported auth scheme {scheme!r}")

    def _token(self, registry: str, repository: str, params: dict[str, str], cred: Credential | None,
               fresh: bool) -> str:
        scope = f"repository:{repository}:pull"
        key = (registry, scope)
        now = self.clock()
        with self._lock:
            token = self._tokens.get(key)
        if token is not None and token.expires > now and not fresh:
            return token.value
        with self._flights.lock(("token", key)):
            with self._lock:
                token = self._tokens.get(key)
            if token is not None and token.expires > self.clock() and not fresh:
                return token.value  # another thread just fetched it
            realm = params.get("realm", "")
            if not realm.startswith(("https://", "http://")):
                raise AuthFailed(f"{registry}: bearer challenge without a usable realm ({realm!r})")
            query = {"scope": scope}
            if params.get("service"):
                query["service"] = params["service"]
            what = f"getting a pull token for {registry}/{repository}"
            if cred is not None and cred.identity_token:
                response = self._send("POST", realm, what, data={
                    "grant_type": "refresh_token", "refresh_token": cred.identity_token,
                    "service": params.get("service", ""), "scope": scope, "client_id": "netbootd"})
            else:
                headers = {}
                if cred is not None and (cred.username or cred.password):
                    raw = base64.b64encode(f"{cred.username}:{cred.password}".encode()).decode()
                    headers["Authorization"] = f"Basic {raw}"
                response = self._send("GET", realm, what, headers=headers, params=query)
            if response.status_code in (401, 403):
                raise AuthFailed(f"{what}: token server refused (HTTP {response.status_code})"
                                 + ("" if cred else "; no credentials configured for this registry"))
            if response.status_code != 200:
                raise AuthFailed(f"{what}: token server answered HTTP {response.status_code}")
            try:
                doc = response.json()
                value = str(doc.get("token") or doc.get("access_token") or "")
                expires_in = float(doc.get("expires_in") or 60)
            except (ValueError, AttributeError):
                raise AuthFailed(f"{what}: token server sent no JSON") from None
            if not value:
                raise AuthFailed(f"{what}: token server sent no token")
            # Refresh a little early so a token never expires between us and the registry.
            expires = self.clock() + max(expires_in - min(10.0, expires_in / 5), 1.0)
            with self._lock:
                self._tokens[key] = Token(value, expires)
            metrics.tokens.inc()
            return value

    def forget_auth(self, registry: str) -> None:
        """After a 401 on a credentialed request: probe again and fetch fresh tokens next time."""
        registry = canonical_registry(registry)
        self.credentials.refresh()
        with self._lock:
            self._challenges.pop(registry, None)
            for key in [k for k in self._tokens if k[0] == registry]:
                del self._tokens[key]

    def _get(self, ref: ImageRef, path: str, what: str, method: str = "GET",
             headers: Mapping[str, str] | None = None, stream: bool = False) -> httpx.Response:
        """A request to <registry>/v2/<repo>/<path> with auth; retried once after a 401."""
        url = f"{self.base_url(ref.registry)}/v2/{ref.repository}/{path}"
        for attempt in (1, 2):
            auth = self._auth_headers(ref.registry, ref.repository, fresh=attempt == 2)
            response = self._send(method, url, what, headers={**(headers or {}), **auth}, stream=stream)
            if response.status_code != 401:
                break
            response.close()
            self.forget_auth(ref.registry)
        else:
            raise AuthFailed(f"{what}: {ref.registry} refused our credentials (HTTP 401)")
        status = response.status_code
        if status < 300:
            return response
        if stream:
            response.read()
        response.close()
        if status == 404:
            raise NotFound(f"{what}: not found ({self._error_code(response) or 'HTTP 404'})")
        if status == 403:
            raise AuthFailed(f"{what}: {ref.registry} denied access (HTTP 403)")
        if status in (400, 405) and "MANIFEST_UNKNOWN" in (self._error_code(response) or ""):
            raise NotFound(f"{what}: not found (MANIFEST_UNKNOWN)")
        if status == 429:
            raise UpstreamError(f"{what}: {ref.registry} rate-limits us (HTTP 429)")
        raise UpstreamError(f"{what}: {ref.registry} answered HTTP {status}")

    @staticmethod
    def _error_code(response: httpx.Response) -> str:
        try:
            errors = response.json().get("errors") or []
            return ", ".join(str(e.get("code")) for e in errors if isinstance(e, dict))
        except (ValueError, AttributeError, httpx.ResponseNotRead):
            return ""

    # ------------------------------------------------------------------ manifests

    def manifest(self, ref: ImageRef, reference: str | None = None) -> tuple[str, bytes, str]:
        """(media type, raw bytes, sha256 digest) of a manifest or index. Digest references are verified."""
        reference = reference or ref.reference
        what = f"manifest {ref.registry}/{ref.repository}{'@' if is_digest(reference) else ':'}{reference}"
        response = self._get(ref, f"manifests/{reference}", what, headers={"Accept": ACCEPT}, stream=True)
        try:
            declared = int(response.headers.get("content-length") or 0)
            if declared > MAX_MANIFEST_BYTES:
                raise UpstreamError(f"{what}: {declared} bytes is too large for a manifest")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise UpstreamError(f"{what}: too large for a manifest")
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"{what}: timed out while reading") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{what}: transfer failed: {exc}") from None
        finally:
            response.close()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if is_digest(reference) and digest != reference:
            metrics.verification_failures.labels("manifest").inc()
            raise VerificationFailed(f"{what}: content has digest {digest}, not the one asked for")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        try:
            doc = json.loads(body)
        except ValueError:
            raise UpstreamError(f"{what}: not JSON") from None
        if not isinstance(doc, dict):
            raise UpstreamError(f"{what}: not a JSON object")
        media_type = str(doc.get("mediaType") or "") or media_type
        if media_type not in (*MANIFEST_TYPES, *INDEX_TYPES):
            media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "layers" in doc else media_type
        return media_type, body, digest

    def resolve(self, ref: ImageRef, *, cached: bool = True, architecture: str = "") -> ResolvedImage:
        """The platform manifest and layers of `ref`; an index is resolved by `architecture` (the
        OCI name of the asking machine's: amd64, arm64), default `registry.architecture`.

        Tags are cached for `resolve_ttl` seconds, digests until evicted; concurrent callers for
        the same reference share one lookup; when the registry fails, an entry up to `stale_ttl`
        old is used (a boot storm keeps booting while the registry is down)."""
        self.check(ref)
        arch = architecture or self.settings.architecture
        key = f"{ref}#{arch}"
        ttl = float("inf") if ref.digest else self.resolve_ttl
        hit = self._cached(key, ttl) if cached else None
        if hit is not None:
            metrics.resolutions.labels("cached").inc()
            return hit
        with self._flights.lock(("resolve", key)):
            hit = self._cached(key, ttl) if cached else None
            if hit is not None:
                metrics.resolutions.labels("cached").inc()
                return hit
            try:
                image = self._resolve(ref, arch)
            except (UpstreamError, UpstreamTimeout, AuthFailed) as exc:
                stale = self._cached(key, self.stale_ttl)
                if stale is None:
                    metrics.resolutions.labels("error").inc()
                    raise
                metrics.resolutions.labels("stale").inc()
                log.warn("registry failed; using an older resolution", image=key, error=exc.message)
                return stale
            except RegistryError:
                metrics.resolutions.labels("error").inc()
                raise
            metrics.resolutions.labels("fetched").inc()
            with self._lock:
                self._resolved[key] = (self.clock(), image)
                self._resolved.move_to_end(key)
                while len(self._resolved) > 512:
                    self._resolved.popitem(last=False)
            return image

    def peek(self, ref: ImageRef, architecture: str = "") -> ResolvedImage | None:
        """The cached resolution of `ref` if it is fresh, without any I/O (safe on the reactor)."""
        key = f"{ref}#{architecture or self.settings.architecture}"
        return self._cached(key, float("inf") if ref.digest else self.resolve_ttl)

    def _cached(self, key: str, ttl: float) -> ResolvedImage | None:
        with self._lock:
            entry = self._resolved.get(key)
        if entry is None or self.clock() - entry[0] > ttl:
            return None
        return entry[1]

    def _resolve(self, ref: ImageRef, arch: str) -> ResolvedImage:
        media_type, body, digest = self.manifest(ref)
        doc = json.loads(body)
        index_digest, platform = "", ""
        if media_type in INDEX_TYPES:
            index_digest = digest
            entry = self.pick_platform(ref, doc.get("manifests") or [], arch)
            platform = "{}/{}".format((entry.get("platform") or {}).get("os", "?"),
                                      (entry.get("platform") or {}).get("architecture", "?"))
            child = str(entry.get("digest") or "")
            if not is_digest(child):
                raise UpstreamError(f"index of {ref}: entry without a sha256 digest")
            media_type, body, digest = self.manifest(ref, child)
            doc = json.loads(body)
            if media_type in INDEX_TYPES:
                raise UpstreamError(f"{ref}: nested indexes are not supported")
        if media_type not in MANIFEST_TYPES and "layers" not in doc:
            raise UpstreamError(f"{ref}: unsupported manifest type {media_type or '(none)'}")
        layers = []
        for item in doc.get("layers") or []:
            if not isinstance(item, dict):
                continue
            layer_digest, size = str(item.get("digest") or ""), item.get("size")
            if not is_digest(layer_digest) or not isinstance(size, int) or size < 0:
                continue  # other algorithms or broken entries are skipped, not guessed at
            layers.append(Layer(str(item.get("mediaType") or ""), layer_digest, size, item.get("annotations") or {}))
        return ResolvedImage(ref, digest, media_type, platform, tuple(layers), index_digest)

    def pick_platform(self, ref: ImageRef, manifests: list[Any], arch: str = "") -> dict[str, Any]:
        arch = arch or self.settings.architecture
        candidates = [m for m in manifests if isinstance(m, dict) and isinstance(m.get("platform"), dict)]
        matching = [m for m in candidates if m["platform"].get("architecture") == arch]
        linux = [m for m in matching if m["platform"].get("os", "linux") == "linux"]
        found = linux or matching
        if not found:
            if len(manifests) == 1 and isinstance(manifests[0], dict) and "platform" not in manifests[0]:
                return manifests[0]  # a single-entry index without platforms: that is the image
            have = sorted({f"{m['platform'].get('os', '?')}/{m['platform'].get('architecture', '?')}" for m in candidates})
            raise NotFound(f"{ref} has no manifest for architecture {arch!r} (it has: {', '.join(have) or 'none'}; "
                           f"the machine's architecture decides: its firmware's, or `arch` in its file; "
                           f"registry.architecture when neither says)")
        return found[0]

    # ------------------------------------------------------------------ blobs

    def blob_location(self, ref: ImageRef, digest: str) -> BlobLocation:
        """Where the pump fetches a blob, with the Authorization header (if any) for the registry host."""
        self.check(ref)
        url = f"{self.base_url(ref.registry)}/v2/{ref.repository}/blobs/{digest}"
        return BlobLocation(url, MappingProxyType(self._auth_headers(ref.registry, ref.repository)), ref.registry)

    def blob_size(self, ref: ImageRef, digest: str) -> int:
        """HEAD on the blob (for /httpboot, where no manifest names the size)."""
        self.check(ref)
        response = self._get(ref, f"blobs/{digest}", f"blob {ref.registry}/{ref.repository}@{digest}", method="HEAD")
        try:
            return int(response.headers["content-length"])
        except (KeyError, ValueError):
            raise UpstreamError(f"{ref.registry} sent no Content-Length for blob {digest}") from None

    def fetch_blob(self, ref: ImageRef, digest: str, out: BinaryIO, size: int | None = None) -> int:
        """Download and verify a blob into `out` (CLI and tools; the daemon streams with the pump)."""
        what = f"blob {ref.registry}/{ref.repository}@{digest}"
        response = self._get(ref, f"blobs/{digest}", what, stream=True)
        hasher, total = hashlib.sha256(), 0
        try:
            for chunk in response.iter_bytes(1 << 20):
                hasher.update(chunk)
                out.write(chunk)
                total += len(chunk)
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"{what}: timed out after {total} bytes") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{what}: transfer failed after {total} bytes: {exc}") from None
        finally:
            response.close()
        if "sha256:" + hasher.hexdigest() != digest or (size is not None and total != size):
            metrics.verification_failures.labels("blob").inc()
            raise VerificationFailed(f"{what}: content does not match its digest ({total} bytes)")
        return total
