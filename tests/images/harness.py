"""A real OCI registry for tests and the bench: Debian's docker-registry (distribution 2.8) on a
free loopback port with filesystem storage, plus helpers that push images through the registry
API (blob upload POST/PUT, manifest PUT), an htpasswd basic-auth front and a bearer-token realm.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

REGISTRY_BIN = shutil.which("docker-registry")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

KERNEL = "application/vnd.ironcore.image.kernel"
INITRAMFS = "application/vnd.ironcore.image.initramfs"
SQUASHFS = "application/vnd.ironcore.image.squashfs"
UKI = "application/vnd.ironcore.image.uki"
GL_KERNEL = "application/io.gardenlinux.kernel"
GL_INITRD = "application/io.gardenlinux.initrd"
GL_SQUASHFS = "application/io.gardenlinux.squashfs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """One docker-registry process. Several may share a storage directory (one pushes, others
    serve the same content behind basic or token auth)."""

    def __init__(self, root: Path, storage: Path | None = None, auth: str = "", port: int | None = None,
                 token_realm: str = "", token_cert: Path | None = None, tls: tuple[Path, Path] | None = None) -> None:
        if REGISTRY_BIN is None:
            raise RuntimeError("docker-registry is not installed (Debian package docker-registry)")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage = storage or root / "storage"
        self.port = port or free_port()
        self.auth = auth
        self.username, self.password = "netboot", "s3cret-pw"
        self.config = root / "config.yml"
        self.log_path = root / "registry.log"
        auth_block = ""
        if auth == "basic":
            htpasswd = root / "htpasswd"
            subprocess.run(["htpasswd", "-Bbc", str(htpasswd), self.username, self.password],
                           check=True, capture_output=True)
            auth_block = f"auth:\n  htpasswd:\n    realm: netbootd-test\n    path: {htpasswd}\n"
        elif auth == "token":
            auth_block = textwrap.dedent(f"""\
                auth:
                  token:
                    realm: {token_realm}
                    service: netbootd-test-registry
                    issuer: netbootd-test-issuer
                    rootcertbundle: {token_cert}
                """)
        self.config.write_text(
            textwrap.dedent(f"""\
                version: 0.1
                log:
                  level: info
                  formatter: text
                storage:
                  filesystem:
                    rootdirectory: {self.storage}
                  delete:
                    enabled: true
                  maintenance:
                    uploadpurging:
                      enabled: false
                http:
                  addr: 127.0.0.1:{self.port}
                  secret: netbootd-test-secret
                """)
            + (f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else "")
            + auth_block
        )
        self.proc: subprocess.Popen | None = None
        self.scheme = "https" if tls else "http"
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(tls_ca_for(tls[0]))) if tls else True

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def start(self) -> Registry:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(self.config)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self.proc.returncode}:\n{self.log()}")
            try:
                httpx.get(self.url + "/v2/", timeout=0.5, verify=self.verify)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not come up:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.proc = None
            self._log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access(self, method: str, path_part: str) -> list[str]:
        """Lines of the registry's access log (combined format) for `method` and a path containing `path_part`."""
        pattern = re.compile(r'"(\w+) (\S+) HTTP/[\d.]+" (\d+)')
        out = []
        for line in self.log().splitlines():
            m = pattern.search(line)
            if m and m.group(1) == method and path_part in m.group(2):
                out.append(line)
        return out

    def blob_gets(self, digest: str, at_least: int = 0, timeout: float = 10.0) -> int:
        """GETs of a blob in the access log. The registry writes a line after the response's last
        byte left, so a client can hold the whole blob before its line exists: with `at_least`,
        wait (up to `timeout`) for that many lines before counting."""
        deadline = time.monotonic() + timeout
        while True:
            count = len(self.access("GET", f"/blobs/{digest}"))
            if count >= at_least or time.monotonic() > deadline:
                return count
            time.sleep(0.05)

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


class Pusher:
    """Pushes content through the registry API (no docker, no skopeo)."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None, verify: ssl.SSLContext | bool = True) -> None:
        self.base = base_url
        self.http = httpx.Client(timeout=60, auth=auth, verify=verify)

    def close(self) -> None:
        self.http.close()

    def blob(self, repo: str, data: bytes | Path) -> tuple[str, int]:
        """Monolithic upload (POST, then PUT with the digest); a Path is streamed from disk."""
        if isinstance(data, Path):
            h = hashlib.sha256()
            with open(data, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            digest, size = "sha256:" + h.hexdigest(), data.stat().st_size
        else:
            digest, size = sha256(data), len(data)
        if self.http.head(f"{self.base}/v2/{repo}/blobs/{digest}").status_code == 200:
            return digest, size
        r = self.http.post(f"{self.base}/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        if location.startswith("/"):
            location = self.base + location
        sep = "&" if "?" in location else "?"
        headers = {"content-type": "application/octet-stream", "content-length": str(size)}
        if isinstance(data, Path):
            def chunks():
                with open(data, "rb") as f:
                    while chunk := f.read(1 << 20):
                        yield chunk
            r = self.http.put(f"{location}{sep}digest={digest}", content=chunks(), headers=headers)
        else:
            r = self.http.put(f"{location}{sep}digest={digest}", content=data, headers=headers)
        assert r.status_code == 201, r.text
        return digest, size

    def manifest(self, repo: str, reference: str, doc: dict) -> str:
        raw = json.dumps(doc, indent=1).encode()
        r = self.http.put(f"{self.base}/v2/{repo}/manifests/{reference}", content=raw,
                          headers={"content-type": doc["mediaType"]})
        assert r.status_code == 201, r.text
        return sha256(raw)

    def image(self, repo: str, tag: str | None, layers: list[tuple[str, bytes | Path]], docker: bool = False,
              arch: str = "amd64") -> str:
        """An image manifest (OCI, or Docker schema 2) with these (media type, content) layers; its digest."""
        config = json.dumps({"architecture": arch, "os": "linux"}).encode()
        config_digest, config_size = self.blob(repo, config)
        descs = []
        for media_type, content in layers:
            digest, size = self.blob(repo, content)
            descs.append({"mediaType": media_type, "digest": digest, "size": size})
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": descs,
        }
        raw = json.dumps(doc, indent=1).encode()
        return self.manifest(repo, tag or sha256(raw), doc)

    def index(self, repo: str, tag: str, children: dict[str, str], docker: bool = False,
              extra: list[dict] | None = None) -> str:
        """An OCI index (or Docker manifest list) of {arch: manifest digest}."""
        entries = []
        for arch, digest in children.items():
            r = self.http.head(f"{self.base}/v2/{repo}/manifests/{digest}",
                               headers={"accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"})
            entries.append({
                "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
                "digest": digest,
                "size": int(r.headers["content-length"]),
                "platform": {"architecture": arch, "os": "linux"},
            })
        doc = {"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX, "manifests": entries + (extra or [])}
        return self.manifest(repo, tag, doc)


# ---------------------------------------------------------------------- bearer token realm


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A token realm (docker distribution "token" auth): issues RS256 JWTs signed by a
    self-signed certificate the registry trusts (rootcertbundle), with the certificate in `x5c`.

    Anonymous callers get pull access to `anonymous_repos`; callers with the right basic
    credentials get pull and push everywhere. Counts the tokens it issued."""

    def __init__(self, root: Path, expires_in: int = 300, anonymous_repos: tuple[str, ...] = ()) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netbootd-test-token-signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_path = root / "token-signer.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._sign = lambda data: self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        self.expires_in = expires_in
        self.anonymous_repos = anonymous_repos
        self.username, self.password = "robot", "t0ken-pw"
        self.issued: list[dict] = []
        self.refused = 0
        self.port = free_port()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                query = parse_qs(urlsplit(self.path).query)
                authed = False
                header = self.headers.get("authorization", "")
                if header.startswith("Basic "):
                    user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
                    authed = (user, pw) == (server.username, server.password)
                    if not authed:
                        server.refused += 1
                        self.send_response(401)
                        self.end_headers()
                        return
                access = []
                for scope in query.get("scope", []):
                    kind, _, rest = scope.partition(":")
                    repo, _, actions = rest.rpartition(":")
                    wanted = actions.split(",")
                    granted = wanted if authed else [a for a in wanted if a == "pull" and repo in server.anonymous_repos]
                    access.append({"type": kind, "name": repo, "actions": granted})
                token = server.token(query.get("service", [""])[0], access, "robot" if authed else "")
                server.issued.append({"access": access, "authed": authed})
                body = json.dumps({"token": token, "expires_in": server.expires_in,
                                   "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def token(self, service: str, access: list[dict], subject: str) -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        claims = {"iss": "netbootd-test-issuer", "sub": subject, "aud": service, "exp": now + self.expires_in,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        return signing_input + "." + _b64url(self._sign(signing_input.encode()))

    def start(self) -> TokenServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------- blob storage on another host


class RedirectingFront:
    """A registry front with basic auth whose blob GETs redirect (307) to a "CDN" on another
    loopback address, like registries that keep blobs in object storage. Manifests and /v2/ are
    proxied to `backend`. Records the Authorization header each side saw."""

    def __init__(self, backend: str, cdn_host: str = "127.0.0.2") -> None:
        self.backend = backend
        self.username, self.password = "front", "fr0nt-pw"
        self.front_seen: list[tuple[str, str | None]] = []  # (path, authorization)
        self.cdn_seen: list[tuple[str, str | None]] = []
        front = self
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

        class Front(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                auth = self.headers.get("authorization")
                front.front_seen.append((self.path, auth))
                if auth != expected:
                    self.send_response(401)
                    self.send_header("www-authenticate", 'Basic realm="front"')
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if "/blobs/" in self.path:
                    self.send_response(307)
                    self.send_header("location", f"http://{cdn_host}:{front.cdn_port}/cdn{self.path}?signature=abc")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                r = httpx.get(front.backend + self.path, headers={"accept": self.headers.get("accept", "*/*")})
                self.send_response(r.status_code)
                for name in ("content-type", "docker-content-digest"):
                    if name in r.headers:
                        self.send_header(name, r.headers[name])
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

        class Cdn(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                front.cdn_seen.append((self.path, self.headers.get("authorization")))
                path = urlsplit(self.path).path.removeprefix("/cdn")
                with httpx.stream("GET", front.backend + path) as r:
                    self.send_response(r.status_code)
                    self.send_header("content-length", r.headers.get("content-length", "0"))
                    self.end_headers()
                    for chunk in r.iter_bytes():
                        self.wfile.write(chunk)

        self.front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)
        self.cdn = http.server.ThreadingHTTPServer((cdn_host, 0), Cdn)
        self.cdn_port = self.cdn.server_address[1]
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self.front, self.cdn)]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.front.server_address[1]}"

    def start(self) -> RedirectingFront:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        for s in (self.front, self.cdn):
            s.shutdown()
            s.server_close()


# ---------------------------------------------------------------------- TLS


def tls_ca_for(cert: Path) -> Path:
    return cert.parent / "ca.pem"


def make_tls(root: Path, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A test CA (root/ca.pem) and a server certificate for `ip` signed by it: (cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netbootd test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    root.mkdir(parents=True, exist_ok=True)
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (root / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return root / "cert.pem", root / "key.pem"
