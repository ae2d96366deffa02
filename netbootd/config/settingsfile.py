"""The settings file, netbootd.toml → Settings: where it is by default, every value checked,
each error with the file, the line and the key (and every secret file it names, netbootd.config.preflight)."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from pathlib import Path

import attrs

from netbootd.config.errors import ConfigError, ConfigInvalid
from netbootd.config.preflight import preflight
from netbootd.config.settings import SSLMODES, Settings, StateSettings, parse_listen
from netbootd.config.tomlfile import TomlFile, read_toml
from netbootd.config.typed import build

DEFAULT_CONFIG = Path("/etc/netbootd/netbootd.toml")


def load_settings(path: Path | None, *, signing_key: bool = True) -> Settings:
    """Settings from `path`; with None, /etc/netbootd/netbootd.toml if present, else defaults.

    Relative paths in the file are relative to the file's own directory.
    Raises ConfigInvalid listing every problem. signing_key=False skips reading the secret files
    (http.signing_key_file, ui.auth_file): commands that sign nothing (status, explain) must work for an
    operator who cannot read the daemon's secrets.
    """
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return Settings()
        path = DEFAULT_CONFIG
    toml = read_toml(path)
    if isinstance(toml, ConfigError):
        raise ConfigInvalid([toml])
    errors: list[ConfigError] = []
    settings = build(Settings, toml.data, "", path, toml.line, errors)
    settings = attrs.evolve(settings, source=path, **_service_directories(toml.data))
    errors += _check_settings(settings, toml, signing_key)
    if errors:
        raise ConfigInvalid(errors)
    return settings


# A relative state_dir / cache_dir goes where the service manager keeps this service's state and
# cache when it says so (systemd's StateDirectory= / CacheDirectory= set these; so does the
# container image), else beside the settings file: the example's "state" and "cache" keep a demo
# from a checkout inside the checkout, and the same file copied to /etc/netbootd writes nothing there.
SERVICE_DIRECTORIES = {"state_dir": "STATE_DIRECTORY", "cache_dir": "CACHE_DIRECTORY"}


def _service_directories(data: dict) -> dict[str, Path]:
    out = {}
    for key, variable in SERVICE_DIRECTORIES.items():
        value, base = data.get(key), os.environ.get(variable, "").split(":")[0]
        if isinstance(value, str) and value and not Path(value).is_absolute() and base:
            out[key] = Path(base) / value
    return out


def _check_settings(s: Settings, toml: TomlFile, signing_key: bool = True) -> list[ConfigError]:
    errors = []
    for key, port in (
        ("dhcp.port", s.dhcp.port),
        ("dhcp.proxy_port", s.dhcp.proxy_port),
        ("dhcp.port6", s.dhcp.port6),
        ("tftp.port", s.tftp.port),
        ("http.port", s.http.port),
    ):
        if not 0 <= port <= 65535:
            errors.append(toml.error(key, f"expected a port number 0..65535, got {port}"))
    if s.advertise:
        try:
            ipaddress.IPv4Address(s.advertise)
        except ValueError:
            errors.append(toml.error("advertise", f"expected an IPv4 address, got {s.advertise!r}"))
    if s.http.sendfile_threads != "auto" and not (s.http.sendfile_threads.isdigit() and
                                                  int(s.http.sendfile_threads) <= 256):
        errors.append(toml.error("http.sendfile_threads", f'expected "auto" or a number of threads 0..256 (as a '
                                                          f"string), got {s.http.sendfile_threads!r}"))
    if s.ui.listen:
        try:
            parse_listen(s.ui.listen)
        except ValueError as exc:
            errors.append(toml.error("ui.listen", str(exc)))
    if s.advertise6:
        try:
            ipaddress.IPv6Address(s.advertise6)
        except ValueError:
            errors.append(toml.error("advertise6", f"expected an IPv6 address, got {s.advertise6!r}"))
    if s.http.public_url and not re.match(r"^https?://[^/\s]+/?$", s.http.public_url):
        errors.append(toml.error("http.public_url", "expected a base URL such as http://boot.example:8080"))
    if s.log.format not in ("text", "json"):
        errors.append(toml.error("log.format", f"expected \"text\" or \"json\", got {s.log.format!r}"))
    if s.log.level not in ("debug", "info", "warn", "error", "critical"):
        errors.append(toml.error("log.level", "expected one of debug, info, warn, error, critical"))
    if not 8 <= s.tftp.max_blksize <= 65464:
        errors.append(toml.error("tftp.max_blksize", "expected 8..65464 (RFC 2348)"))
    if s.tftp.max_transfers < 1:
        errors.append(toml.error("tftp.max_transfers", "expected at least 1"))
    for key, rate in (("http.rate_limit", s.http.rate_limit), ("tftp.rate_limit", s.tftp.rate_limit)):
        if not (math.isfinite(rate) and rate >= 0):
            errors.append(toml.error(key, f"expected requests a second >= 0 (0: no limit), got {rate}"))
    for key, value, low in (
        ("http.rate_burst", s.http.rate_burst, 1),
        ("tftp.rate_burst", s.tftp.rate_burst, 1),
        ("http.max_transfers", s.http.max_transfers, 1),
        ("http.max_queued", s.http.max_queued, 0),
        ("http.max_url_length", s.http.max_url_length, 256),
        ("http.max_header_bytes", s.http.max_header_bytes, 1024),
        ("http.max_headers", s.http.max_headers, 8),
    ):
        if value < low:
            errors.append(toml.error(key, f"expected at least {low}, got {value}"))
    for key, seconds, zero_ok in (
        ("tftp.timeout", s.tftp.timeout, False),
        ("shutdown_grace", s.shutdown_grace, True),
        ("http.stall_timeout", s.http.stall_timeout, True),
        ("http.queue_timeout", s.http.queue_timeout, False),
    ):
        if not (math.isfinite(seconds) and (seconds > 0 or (zero_ok and seconds == 0))):
            errors.append(toml.error(key, f"expected a number of seconds {'>=' if zero_ok else '>'} 0, got {seconds}"))
    for name in attrs.astuple(s.ipxe):
        if name and ("\\" in name or ".." in name.split("/")):
            errors.append(toml.error("ipxe", f"binary name {name!r} must be a plain relative name"))
    errors += _check_state(s.state, toml)
    if signing_key:
        errors += preflight(s, toml.line)
    return errors


def _check_state(state: StateSettings, toml: TomlFile) -> list[ConfigError]:
    errors = []
    if state.sslmode not in SSLMODES:
        errors.append(toml.error("state.sslmode", f"expected one of {', '.join(m for m in SSLMODES if m)} (or \"\"), "
                                                  f"got {state.sslmode!r}"))
    if not 2 <= state.connect_timeout <= 600:
        errors.append(toml.error("state.connect_timeout", f"expected seconds 2..600 (libpq waits at least 2), "
                                                          f"got {state.connect_timeout}"))
    if not state.url:
        return errors
    problem = postgres_url_problem(state.url)
    if problem:
        errors.append(toml.error("state.url", problem))
    for key, path in (("state.sslrootcert", state.sslrootcert), ("state.sslcert", state.sslcert),
                      ("state.sslkey", state.sslkey)):
        if path is not None and not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            errors.append(toml.error(key, f"{path} {what}"))
    return errors


def postgres_url_problem(url: str) -> str:
    """What is wrong with a state.url, or ""."""
    if not re.match(r"^postgres(ql)?://", url):
        return f'expected a URL such as "postgresql://netbootd@db.example:5432/netbootd", got {url!r}'
    import psycopg  # only for a configuration that names a PostgreSQL database
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        return f"not a valid PostgreSQL URL: {str(exc).strip()}"
    if params.get("password"):
        return "holds a password: put it in a file named by state.password_file (netbootd.toml is not a secret)"
    return ""
