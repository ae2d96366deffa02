"""Read netbootd.toml and the machines directory into frozen objects, collecting every error.

Steps, kept apart so each is testable: find files → read TOML → parse into the model
(errors carry file, line, key) → build a `Catalog`. A file that fails keeps its last good
version when a previous catalog is given (hot reload), so one bad edit never takes a machine
off the network.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import attrs

from netbootd.config.errors import ConfigError, ConfigInvalid, find_line
from netbootd.config.lastgood import LastGoodStore
from netbootd.config.machines import (
    KIND_KEYS,
    OTHER_BOOT_KEYS,
    Boot,
    BootFiles,
    BootKind,
    Catalog,
    Held,
    Machine,
)
from netbootd.config.settings import Settings, parse_listen
from netbootd.config.templates import BUILTINS, TemplateError, compile_template, render, sample_context
from netbootd.config.typed import build
from netbootd.imageref import ReferenceError, disallowed_message, parse_reference, registry_allowed
from netbootd.model import Arch, mac_hyphen, normalize_mac, normalize_uuid

DEFAULT_CONFIG = Path("/etc/netbootd/netbootd.toml")
DEFAULT_NAME = "default"
PROFILES_DIR = "profiles"

_TOML_POS = re.compile(r"\(at line (\d+), column \d+\)")


@attrs.frozen
class TomlFile:
    path: Path
    text: str
    data: dict[str, Any]

    def line(self, key: str) -> int:
        return find_line(self.text, key)

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.line(key) if key else 0, key, message)


def read_toml(path: Path) -> TomlFile | ConfigError:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return ConfigError(path, 0, "", f"cannot read file: {exc.strerror or exc}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ConfigError(path, 0, "", f"not UTF-8 text (byte {exc.start})")
    try:
        data = tomllib.loads(text)
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        return ConfigError(path, 0, "", "invalid TOML: arrays or tables nested too deeply")
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POS.search(str(exc))
        line = int(match.group(1)) if match else 0
        return ConfigError(path, line, "", f"invalid TOML: {_TOML_POS.sub('', str(exc)).strip()}")
    return TomlFile(path, text, data)


# ---------------------------------------------------------------- netbootd.toml


def load_settings(path: Path | None, *, signing_key: bool = True) -> Settings:
    """Settings from `path`; with None, /etc/netbootd/netbootd.toml if present, else defaults.

    Relative paths in the file are relative to the file's own directory.
    Raises ConfigInvalid listing every problem. signing_key=False skips reading
    http.signing_key_file and ui.auth_file: commands that sign nothing (status, explain) must work for an
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
    settings = attrs.evolve(settings, source=path)
    errors += _check_settings(settings, toml, signing_key)
    if errors:
        raise ConfigInvalid(errors)
    return settings


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
    if signing_key and s.http.signing_key_file is not None:
        from netbootd.core.signing import SigningKeyError, read_key_file  # the core owns what a fit key is

        try:
            read_key_file(s.http.signing_key_file)
        except SigningKeyError as exc:
            errors.append(toml.error("http.signing_key_file", str(exc)))
    if signing_key and s.ui.listen and s.ui.auth_file is not None:
        from netbootd.ui.auth import AuthFileError, read_auth_file  # the dashboard owns what a fit file is

        try:
            read_auth_file(s.ui.auth_file)
        except AuthFileError as exc:
            errors.append(toml.error("ui.auth_file", str(exc)))
    return errors


# ---------------------------------------------------------------- machines directory


def machine_file_name(stem: str) -> str | None:
    """The MAC (colon form) a machine file stands for; None if the stem is not a MAC."""
    try:
        return normalize_mac(stem)
    except ValueError:
        return None


def is_ignored_name(name: str) -> bool:
    """Names the loader and the watcher skip: hidden files, ConfigMap internals (`..data`,
    `..2026_11_22...`), editors' swap and backup files. Only *.toml counts."""
    return name.startswith(".") or not name.endswith(".toml")


@attrs.frozen
class _Source:
    """A machine or profile file's raw parts, before merging."""

    file: TomlFile
    data: dict[str, Any]


_MACHINE_KEYS = {
    "profile", "uuid", "ipxe_binary", "vars", "boot", "ignition", "booty", "signed_urls", "loader", "secure_boot",
    "arch",
}
_PROFILE_KEYS = _MACHINE_KEYS - {"profile", "uuid"}
_BOOTY_KEYS: dict[str, type] = {
    "action": str,
    "compressed": bool,
    "sourceImage": str,
    "destinationDevice": str,
    "growPartition": int,
    "lvmRootName": str,
    "dryRun": bool,
    "dropToShell": bool,
    "wipeDevice": bool,
    "sourceDevice": str,
    "destinationAddress": str,
    "address": str,
    "gateway": str,
    "nameserver": str,
}
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Loader:
    def __init__(self, settings: Settings, machines_dir: Path) -> None:
        self.settings = settings
        self.dir = machines_dir
        self.errors: list[ConfigError] = []
        self.profiles: dict[str, _Source | None] = {}  # None: the profile file is broken
        self.profile_errors: dict[str, list[ConfigError]] = {}  # each profile's own errors
        self.cause: ConfigError | None = None  # why the last machine() returned None, if not its own error
        self.templated: dict[str, tuple[_Source, str]] = {}  # per-arch locations → where they were written

    # -- helpers

    def _check_keys(self, toml: TomlFile, data: dict[str, Any], allowed: set[str], what: str) -> None:
        for key in data:
            if key not in allowed:
                self.errors.append(
                    toml.error(key, f"unknown key in a {what}; expected one of: {', '.join(sorted(allowed))}")
                )

    def profile(self, name: str) -> _Source | None:
        if name not in self.profiles:
            path = self.dir / PROFILES_DIR / f"{name}.toml"
            before = len(self.errors)
            toml = read_toml(path) if path.is_file() else None
            if isinstance(toml, ConfigError):
                self.errors.append(toml)
                self.profiles[name] = None
            elif toml is None:
                self.profiles[name] = None
            else:
                self._check_keys(toml, toml.data, _PROFILE_KEYS, "profile")
                boot = toml.data.get("boot", {})
                for key in boot if isinstance(boot, dict) else ():
                    if key not in KIND_KEYS and key not in OTHER_BOOT_KEYS:
                        known = ", ".join(sorted({*KIND_KEYS, *OTHER_BOOT_KEYS}))
                        self.errors.append(toml.error(f"boot.{key}", f"unknown key; expected one of: {known}"))
                self.profiles[name] = _Source(toml, toml.data) if len(self.errors) == before else None
            self.profile_errors[name] = self.errors[before:]
        return self.profiles[name]

    # -- one machine

    def machine(self, path: Path, name: str, mac: str | None) -> Machine | None:
        self.cause = None
        toml = read_toml(path)
        if isinstance(toml, ConfigError):
            self.errors.append(toml)
            return None
        before = len(self.errors)
        data = toml.data
        self._check_keys(toml, data, _MACHINE_KEYS, "machine file")

        profile_src = None
        profile_name = data.get("profile")
        if profile_name is not None:
            if not isinstance(profile_name, str) or not _VAR_NAME.match(profile_name.replace("-", "_")):
                self.errors.append(toml.error("profile", "expected a profile name (profiles/<name>.toml)"))
            else:
                profile_src = self.profile(profile_name)
                if profile_src is None:
                    path_hint = self.dir / PROFILES_DIR / f"{profile_name}.toml"
                    if not path_hint.is_file():
                        self.errors.append(
                            toml.error("profile", f"profile {profile_name!r} does not exist (no {path_hint})")
                        )
                    else:
                        self.errors.append(
                            toml.error("profile", f"profile {profile_name!r} has errors (see {path_hint})")
                        )

        uuid = None
        if "uuid" in data:
            try:
                uuid = normalize_uuid(str(data["uuid"]))
            except ValueError:
                self.errors.append(toml.error("uuid", "expected an SMBIOS UUID like 4c4c4544-0042-..."))

        if profile_name is not None and profile_src is None:
            # The profile's own first error is the root of it (a missing profile: this file's error).
            if isinstance(profile_name, str) and self.profile_errors.get(profile_name):
                self.cause = self.profile_errors[profile_name][0]
            return None  # the profile's error says it all; "no boot defined" would only add noise
        layers = [s for s in (profile_src, _Source(toml, data)) if s is not None]
        boot = self._boot(layers)
        vars_ = self._vars(layers)
        ignition = self._ignition(layers)
        booty = self._booty(layers)
        ipxe_binary = self._string(layers, "ipxe_binary")
        signed = self._bool(layers, "signed_urls", True)
        secure_boot = self._bool(layers, "secure_boot", False)
        loader = self._loader(layers, secure_boot, boot)
        arch = self._arch(layers)
        if boot is not None and boot.per_arch:
            boot = self._by_arch(boot, arch)

        if len(self.errors) != before or boot is None:
            return None
        machine = Machine(
            name=name,
            source=path,
            boot=boot,
            mac=mac,
            uuid=uuid,
            profile=profile_name,
            vars=vars_,
            ignition=ignition,
            booty=booty,
            ipxe_binary=ipxe_binary,
            signed_urls=signed,
            loader=loader,
            secure_boot=secure_boot,
            arch=arch,
        )
        self._check_templates(machine, layers)
        return machine if len(self.errors) == before else None

    @staticmethod
    def _owner(layers: list[_Source], key: str) -> _Source:
        for src in reversed(layers):
            if key in src.data:
                return src
        return layers[-1]

    def _string(self, layers: list[_Source], key: str) -> str:
        src = self._owner(layers, key)
        value = src.data.get(key, "")
        if not isinstance(value, str):
            self.errors.append(src.file.error(key, "expected a string"))
            return ""
        return value

    def _bool(self, layers: list[_Source], key: str, default: bool) -> bool:
        src = self._owner(layers, key)
        value = src.data.get(key, default)
        if not isinstance(value, bool):
            self.errors.append(src.file.error(key, "expected true or false"))
            return default
        return value

    def _arch(self, layers: list[_Source]) -> str | None:
        src = self._owner(layers, "arch")
        value = src.data.get("arch")
        if value is None:
            return None
        names = [a.value for a in Arch]
        if value not in names:
            self.errors.append(src.file.error("arch", f"expected one of {', '.join(names)}, got {value!r}"))
            return None
        return str(value)

    def _by_arch(self, boot: Boot, arch: str | None) -> Boot | None:
        """Render `{{ arch }}` / `{{ buildarch }}` locations for each architecture (the machine's own,
        if its file names one): the architectures whose files all exist are the ones it boots on."""
        arches = [Arch(arch)] if arch else list(Arch)
        found: dict[str, BootFiles] = {}
        tried: list[str] = []
        errors_before = len(self.errors)
        for candidate in arches:
            ctx = {"arch": candidate.value, "buildarch": candidate.ipxe_buildarch}
            rendered = []
            for loc in (boot.kernel, *boot.initrds, boot.efi):
                if "{{" not in loc:
                    rendered.append(loc)
                    continue
                src, where = self.templated[loc]
                try:
                    text = render(compile_template(loc), ctx, _no_file)
                except TemplateError as exc:
                    self.errors.append(src.file.error(where, f"{exc} (a file location may use only arch and buildarch)"))
                    return None
                rendered.append(text.strip())
            missing = [r for r in rendered if r and "://" not in r and not self._file_exists(r)]
            if missing:
                tried.append(f"{candidate.value}: {', '.join(missing)} missing")
                continue
            found[candidate.value] = BootFiles(rendered[0], tuple(rendered[1:-1]), rendered[-1])
        if len(self.errors) != errors_before:
            return None
        if not found:
            src, where = next(v for k, v in self.templated.items() if k in (boot.kernel, boot.efi, *boot.initrds))
            self.errors.append(src.file.error(where, "no architecture has all its files under "
                                                     f"{self.settings.files_root} ({'; '.join(tried)})"))
            return None
        return attrs.evolve(boot, by_arch=found)

    def _file_exists(self, rel: str) -> bool:
        parts = rel.lstrip("/").split("/")
        return ".." not in parts and (self.settings.files_root / rel.lstrip("/")).is_file()

    def _loader(self, layers: list[_Source], secure_boot: bool, boot: Boot | None) -> str:
        """The machine's loader (netbootd.core.loaders); secure_boot implies a signed one."""
        from netbootd.core.loaders import LOADERS  # each loader module says what it carries

        signed = [name for name, cls in LOADERS.items() if cls.signed]
        src = self._owner(layers, "loader")
        value = src.data.get("loader")
        if value is None:
            loader = signed[0] if secure_boot else next(iter(LOADERS))
        elif value not in LOADERS:
            names = " or ".join(f'"{n}"' for n in LOADERS)
            self.errors.append(src.file.error("loader", f"expected {names}, got {value!r}"))
            return next(iter(LOADERS))
        else:
            loader = value
        cls = LOADERS[loader]
        if secure_boot and not cls.signed:
            self.errors.append(src.file.error(
                "loader", f"secure_boot = true boots through a signed loader ({', '.join(signed)}): {cls.title} is "
                f'not signed for Secure Boot (drop loader = "{loader}", or set secure_boot = false)'))
        if boot is not None and boot.kind not in cls.kinds:
            key = f"boot.{boot.kind.value}"
            owners = " or ".join(c.title for c in LOADERS.values() if boot.kind in c.kinds)
            why = "secure_boot = true" if secure_boot else f'loader = "{loader}"'
            owner = self._owner([s for s in layers if "boot" in s.data] or layers, "boot")
            self.errors.append(owner.file.error(key, f"{key} is {owners}'s; with {why} a machine boots {cls.carries}"))
        return loader

    def _vars(self, layers: list[_Source]) -> dict[str, str]:
        out: dict[str, str] = {}
        for src in layers:
            table = src.data.get("vars", {})
            if not isinstance(table, dict):
                self.errors.append(src.file.error("vars", "expected a table of name = value"))
                continue
            for key, value in table.items():
                where = f"vars.{key}"
                if not _VAR_NAME.match(key):
                    self.errors.append(src.file.error(where, "variable names are letters, digits and _"))
                elif key in BUILTINS or key == "file":
                    self.errors.append(src.file.error(where, f"{key!r} is a built-in variable; pick another name"))
                elif isinstance(value, (str, int, float, bool)) and not isinstance(value, bool):
                    out[key] = str(value)
                elif isinstance(value, bool):
                    out[key] = "true" if value else "false"
                else:
                    self.errors.append(src.file.error(where, "expected a string, number or boolean"))
        return out

    def _boot(self, layers: list[_Source]) -> Boot | None:
        # Merge [boot] tables: the machine's keys override the profile's. A machine that picks
        # another boot kind drops the profile's [boot] whole, so `local = true` overrides a
        # profile's kernel, initrds and cmdline alike.
        merged: dict[str, tuple[Any, _Source]] = {}
        for src in layers:
            table = src.data.get("boot")
            if table is None:
                continue
            if not isinstance(table, dict):
                self.errors.append(src.file.error("boot", "expected a [boot] table"))
                return None
            new_kinds = {k for k in table if k in KIND_KEYS}
            old_kinds = {k for k in merged if k in KIND_KEYS}
            if new_kinds and new_kinds != old_kinds:
                merged = {}
            for key, value in table.items():
                if key not in KIND_KEYS and key not in OTHER_BOOT_KEYS:
                    known = ", ".join(sorted({*KIND_KEYS, *OTHER_BOOT_KEYS}))
                    self.errors.append(src.file.error(f"boot.{key}", f"unknown key; expected one of: {known}"))
                    continue
                merged[key] = (value, src)
        last = layers[-1]
        kinds = [k for k in merged if k in KIND_KEYS]
        if not kinds:
            self.errors.append(
                last.file.error(
                    "boot",
                    "no boot defined: set one of boot.kernel, boot.image, boot.efi, boot.script, "
                    "boot.chain, boot.local = true or boot.ignore = true (here or in the profile)",
                )
            )
            return None
        if len(kinds) > 1:
            src = merged[kinds[1]][1]
            self.errors.append(
                src.file.error(f"boot.{kinds[1]}", f"choose one boot kind; found {' and '.join(kinds)}")
            )
            return None
        kind_key = kinds[0]
        kind = KIND_KEYS[kind_key]
        value, src = merged[kind_key]
        where = f"boot.{kind_key}"
        fields: dict[str, Any] = {"kind": kind}

        def extra_keys_forbidden(*keys: str) -> bool:
            bad = [k for k in keys if k in merged]
            for k in bad:
                self.errors.append(merged[k][1].file.error(f"boot.{k}", f"not used with boot.{kind_key}"))
            return bool(bad)

        if kind in (BootKind.LOCAL, BootKind.IGNORE):
            if value is not True:
                self.errors.append(src.file.error(where, "expected true"))
                return None
            if extra_keys_forbidden("initrds", "cmdline"):
                return None
        elif kind is BootKind.KERNEL:
            fields["kernel"] = self._location(value, src, where)
            initrds, isrc = merged.get("initrds", ([], src))
            if not isinstance(initrds, list) or not all(isinstance(i, str) for i in initrds):
                self.errors.append(isrc.file.error("boot.initrds", "expected a list of URLs or file paths"))
                return None
            fields["initrds"] = tuple(self._location(i, isrc, "boot.initrds") for i in initrds)
            fields["cmdline"] = self._template(merged, "cmdline")
        elif kind is BootKind.IMAGE:
            if extra_keys_forbidden("initrds"):
                return None
            fields["image"] = self._image(value, src, where)
            fields["cmdline"] = self._template(merged, "cmdline")
        elif kind is BootKind.EFI:
            if extra_keys_forbidden("initrds", "cmdline"):
                return None
            fields["efi"] = self._location(value, src, where)
        elif kind is BootKind.SCRIPT:
            if extra_keys_forbidden("initrds", "cmdline"):
                return None
            fields["script"] = self._template(merged, "script")
        elif kind is BootKind.CHAIN:
            if extra_keys_forbidden("initrds", "cmdline"):
                return None
            fields["chain"] = self._template(merged, "chain")
        try:
            return Boot(**fields)
        except TypeError:
            return None

    def _template(self, merged: dict[str, tuple[Any, _Source]], key: str):
        if key not in merged:
            return None
        value, src = merged[key]
        if not isinstance(value, str):
            self.errors.append(src.file.error(f"boot.{key}", "expected a string"))
            return None
        try:
            return compile_template(value)
        except TemplateError as exc:
            self.errors.append(src.file.error(f"boot.{key}", str(exc)))
            return None

    def _location(self, value: Any, src: _Source, where: str, check: bool = True) -> str:
        """A URL, or a path that must exist under the files root. A location with {{ arch }} or
        {{ buildarch }} is checked per architecture by _by_arch, once the machine's arch is known."""
        if not isinstance(value, str) or not value.strip():
            self.errors.append(src.file.error(where, "expected a URL or a path under the files root"))
            return ""
        if "{{" in value and check:
            try:
                compile_template(value)
            except TemplateError as exc:
                self.errors.append(src.file.error(where, str(exc)))
                return ""
            self.templated[value] = (src, where)
            return value
        if re.match(r"^(https?|tftp)://", value):
            return value
        if "://" in value:
            self.errors.append(src.file.error(where, f"unsupported URL scheme in {value!r}; use http(s)://"))
            return ""
        rel = value.lstrip("/")
        parts = rel.split("/")
        target = self.settings.files_root / rel
        if ".." in parts or not target.is_file():
            self.errors.append(
                src.file.error(where, f"{value!r} is not a URL and not a file under {self.settings.files_root}")
            )
            return ""
        return rel

    def _image(self, value: Any, src: _Source, where: str):
        if not isinstance(value, str):
            self.errors.append(src.file.error(where, "expected an OCI image reference like ghcr.io/org/image:tag"))
            return None
        try:
            ref = parse_reference(value)
        except ReferenceError as exc:
            self.errors.append(src.file.error(where, str(exc)))
            return None
        if not registry_allowed(ref.registry, self.settings.registry.allowed):
            self.errors.append(src.file.error(where, disallowed_message(ref.registry, self.settings.registry.allowed)))
            return None
        return ref

    def _ignition(self, layers: list[_Source]) -> bytes | None:
        src = self._owner(layers, "ignition")
        table = src.data.get("ignition")
        if table is None:
            return None
        if not isinstance(table, dict) or set(table) - {"file", "inline"} or len(table) != 1:
            self.errors.append(src.file.error("ignition", 'expected [ignition] with file = "path" or inline = "..."'))
            return None
        if "file" in table:
            path = self.dir / str(table["file"])
            try:
                raw = path.read_bytes()
            except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
                why = getattr(exc, "strerror", None) or exc
                self.errors.append(src.file.error("ignition.file", f"cannot read {path}: {why}"))
                return None
            key = "ignition.file"
        else:
            raw = str(table["inline"]).encode()
            key = "ignition.inline"
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            self.errors.append(src.file.error(key, f"Ignition config is not valid JSON: {exc}"))
            return None
        meta = doc.get("ignition") if isinstance(doc, dict) else None
        version = meta.get("version") if isinstance(meta, dict) else None
        if not isinstance(version, str) or not re.match(r"^\d+\.\d+\.\d+", version):
            self.errors.append(src.file.error(key, 'Ignition config needs "ignition": {"version": "3.x.y"}'))
            return None
        return raw

    def _booty(self, layers: list[_Source]) -> dict[str, object] | None:
        src = self._owner(layers, "booty")
        table = src.data.get("booty")
        if table is None:
            return None
        if not isinstance(table, dict):
            self.errors.append(src.file.error("booty", "expected a [booty] table"))
            return None
        ok = True
        for key, value in table.items():
            want = _BOOTY_KEYS.get(key)
            if want is None:
                ok = False
                self.errors.append(
                    src.file.error(f"booty.{key}", f"unknown BOOTy key; expected one of: {', '.join(_BOOTY_KEYS)}")
                )
            elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
                ok = False
                self.errors.append(src.file.error(f"booty.{key}", f"expected {want.__name__}"))
        action = table.get("action")
        required = {"writeImage": ("sourceImage", "destinationDevice"), "readImage": ("sourceDevice", "destinationAddress")}
        if not isinstance(action, str) or action not in required:
            self.errors.append(src.file.error("booty.action", 'expected "writeImage" or "readImage"'))
            return None
        for key in required[str(action)]:
            if key not in table:
                ok = False
                self.errors.append(src.file.error("booty", f"action {action} needs booty.{key}"))
        return dict(table) if ok else None

    def _check_templates(self, machine: Machine, layers: list[_Source]) -> None:
        """Render every template once against a sample context: unknown variables and
        missing files are load-time errors, never surprises at boot time."""
        ctx = sample_context(machine.name, machine.mac, machine.uuid, machine.vars)
        root = self.settings.files_root

        def file_url(rel: str) -> str:
            rel = str(rel).lstrip("/")
            if ".." in rel.split("/") or not (root / rel).is_file():
                raise FileNotFoundError(f"file({rel!r}): no such file under {root}")
            return f"{ctx['server']}/files/{rel}"

        for key in ("cmdline", "script", "chain"):
            template = getattr(machine.boot, key)
            if template is None:
                continue
            try:
                render(template, ctx, file_url)
            except TemplateError as exc:
                src = self._owner([s for s in layers if "boot" in s.data and key in s.data["boot"]] or layers, "boot")
                self.errors.append(src.file.error(f"boot.{key}", str(exc)))


@attrs.frozen
class LoadResult:
    machines: dict[str, Machine]  # by file stem (canonical dash form, or "default")
    errors: list[ConfigError]
    # file stems that exist but did not load → the error at the root of it (for a machine whose
    # profile is broken: the profile's own error)
    causes: dict[str, ConfigError] = attrs.field(factory=dict)
    directory_ok: bool = True  # False: the directory itself is gone or unreadable

    @property
    def failed(self) -> set[str]:
        return set(self.causes)


def load_machines(settings: Settings, machines_dir: Path | None = None) -> LoadResult:
    """Load every machine file. Pure with respect to state: no previous catalog involved."""
    directory = machines_dir or settings.machines_dir
    loader = _Loader(settings, directory)
    machines: dict[str, Machine] = {}
    causes: dict[str, ConfigError] = {}
    seen_macs: dict[str, Path] = {}
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        loader.errors.append(ConfigError(directory, 0, "", "machines directory does not exist (create it)"))
        return LoadResult(machines, loader.errors, causes, directory_ok=False)
    except OSError as exc:
        loader.errors.append(ConfigError(directory, 0, "", f"machines directory unreadable: {exc.strerror or exc}"))
        return LoadResult(machines, loader.errors, causes, directory_ok=False)
    for path in entries:
        if is_ignored_name(path.name) or not path.is_file():
            continue
        stem = path.name[: -len(".toml")]
        if stem == DEFAULT_NAME:
            mac, name = None, DEFAULT_NAME
        else:
            mac = machine_file_name(stem)
            if mac is None:
                loader.errors.append(
                    ConfigError(
                        path,
                        0,
                        "",
                        "file name is not a MAC address: name machine files like 52-54-00-12-34-56.toml "
                        "(or 52:54:00:12:34:56.toml), or default.toml",
                    )
                )
                continue
            name = mac_hyphen(mac)
            if mac in seen_macs:
                # Which of the two is meant cannot be known: neither is served as it stands.
                error = ConfigError(path, 0, "", f"same MAC as {seen_macs[mac].name}; keep one file")
                loader.errors.append(error)
                machines.pop(name, None)
                causes[name] = error
                continue
            seen_macs[mac] = path
        before = len(loader.errors)
        machine = loader.machine(path, name, mac)
        if machine is None:
            own = loader.errors[before:]
            causes[name] = loader.cause or (own[0] if own else ConfigError(path, 0, "", "failed to load"))
        else:
            machines[name] = machine
    # Profiles that no machine uses are still checked (a CI pipeline wants to know).
    profiles_dir = directory / PROFILES_DIR
    if profiles_dir.is_dir():
        for path in sorted(profiles_dir.iterdir()):
            if not is_ignored_name(path.name) and path.is_file():
                loader.profile(path.name[: -len(".toml")])
    # Duplicate UUIDs would make /ipxe/<uuid> ambiguous.
    by_uuid: dict[str, Machine] = {}
    for name, machine in list(machines.items()):
        if machine.uuid:
            other = by_uuid.get(machine.uuid)
            if other is not None:
                error = ConfigError(machine.source, find_line(machine.source.read_text(), "uuid"), "uuid",
                                    f"UUID {machine.uuid} is also used by {other.source.name}")
                loader.errors.append(error)
                causes[name] = error
                del machines[name]
            else:
                by_uuid[machine.uuid] = machine
    return LoadResult(machines, _dedupe(loader.errors), causes)


def _no_file(rel: str) -> str:
    raise TemplateError("file() is not available in a file location")


def _dedupe(errors: list[ConfigError]) -> list[ConfigError]:
    seen = set()
    out = []
    for e in errors:
        if e not in seen:
            seen.add(e)
            out.append(e)
    return out


def build_catalog(result: LoadResult, previous: Catalog | None = None, last_good: LastGoodStore | None = None) -> Catalog:
    """The catalog to serve: the fresh good files; for a file that failed, its last good version
    (from the running catalog, else from `last_good` on disk); with none, its machine is held.

    A failed machine file never lets its MAC fall through to default.toml: at a real site the
    default may be an installer that wipes disks.
    """
    if not result.directory_ok:
        if previous is not None:
            return attrs.evolve(previous, errors=tuple(result.errors))
        if last_good is not None:  # a restart with the directory gone: serve what served before
            saved = {n: m for n in last_good.names() if (m := last_good.load(n)) is not None}
            gone = result.errors[0] if result.errors else ConfigError(Path(""), 0, "", "machines directory unavailable")
            return _catalog(saved, result.errors, {}, dict.fromkeys(saved, gone))
    files = dict(result.machines)
    held: dict[str, Held] = {}
    stale: dict[str, ConfigError] = {}
    for name, cause in result.causes.items():
        kept = previous.files.get(name) if previous is not None else None
        if kept is None and last_good is not None:
            kept = last_good.load(name)
        if kept is not None:
            files[name] = kept
            stale[name] = cause
        else:
            files.pop(name, None)
            mac = None if name == DEFAULT_NAME else machine_file_name(name)
            held[mac or name] = Held(name, mac, cause)
    return _catalog(files, result.errors, held, stale)


def _catalog(files: dict[str, Machine], errors, held: dict[str, Held], stale: dict[str, ConfigError]) -> Catalog:
    return Catalog(
        machines={m.mac: m for m in files.values() if m.mac},
        by_uuid={m.uuid: m for m in files.values() if m.uuid},
        default=files.get(DEFAULT_NAME),
        errors=tuple(errors),
        files=files,
        held=held,
        stale=stale,
    )


def check(settings_path: Path | None, machines_dir: Path | None) -> list[ConfigError]:
    """Every error in a configuration (for `netbootd check`)."""
    try:
        settings = load_settings(settings_path)
    except ConfigInvalid as exc:
        return exc.errors
    return load_machines(settings, machines_dir).errors


