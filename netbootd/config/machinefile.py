"""One machine file (or the profile it names) → a Machine: every key checked, the profile merged
under it, file locations found under the files root, Ignition and BOOTy configs read and checked,
and every template rendered once against a sample context, so a mistake is a load-time error with
its file, line and key, never a surprise at boot time."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import attrs

from netbootd.config import hostfiles
from netbootd.config.errors import ConfigError
from netbootd.config.machines import (
    KIND_KEYS,
    LOCAL_BOOTS,
    ON_FAILURE,
    OTHER_BOOT_KEYS,
    Boot,
    BootFiles,
    BootKind,
    Lifecycle,
    Machine,
)
from netbootd.config.settings import Settings
from netbootd.config.templates import BUILTINS, TemplateError, compile_template, render, sample_context
from netbootd.config.tomlfile import TomlFile, read_toml
from netbootd.imageref import ReferenceError, disallowed_message, parse_reference, registry_allowed
from netbootd.model import Arch, normalize_uuid

PROFILES_DIR = "profiles"


@attrs.frozen
class _Source:
    """A machine or profile file's raw parts, before merging."""

    file: TomlFile
    data: dict[str, Any]


_MACHINE_KEYS = {
    "profile", "uuid", "ipxe_binary", "vars", "boot", "ignition", "booty", "signed_urls", "loader", "secure_boot",
    "lifecycle",
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
_BEACON_DONE = re.compile(r"^beacon:[a-z][a-z0-9-]{0,31}$")  # the stages /beacon accepts


class MachineParser:
    """Parses the machine files of one machines directory, one call of machine() each; profiles are
    read once and shared. Errors accumulate in `errors` (a profile's are reported once)."""

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
        lifecycle = self._lifecycle(layers)
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
            lifecycle=lifecycle,
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

    def _lifecycle(self, layers: list[_Source]) -> Lifecycle:
        """[lifecycle], key by key: the machine's file over its profile's."""
        merged: dict[str, tuple[Any, _Source]] = {}
        for src in layers:
            table = src.data.get("lifecycle")
            if table is None:
                continue
            if not isinstance(table, dict):
                self.errors.append(src.file.error("lifecycle", "expected a table: [lifecycle] with once = true"))
                continue
            for key, value in table.items():
                merged[key] = (value, src)
        out: dict[str, Any] = {}
        for key, (value, src) in merged.items():
            where = f"lifecycle.{key}"
            if key == "once":
                if not isinstance(value, bool):
                    self.errors.append(src.file.error(where, "expected true or false"))
                    continue
            elif key == "on_failure" and value not in ON_FAILURE:
                self.errors.append(src.file.error(where, f'expected "hold" (no answer until reprovisioned) or "retry" '
                                                         f"(boot the installer again), got {value!r}"))
                continue
            elif key == "local_boot" and value not in LOCAL_BOOTS:
                self.errors.append(src.file.error(where, f'expected "exit" or "sanboot", got {value!r}'))
                continue
            elif key == "done_on":
                if not isinstance(value, str) or not (value in ("", "ignition") or _BEACON_DONE.match(value)):
                    self.errors.append(src.file.error(where, 'expected "ignition" or "beacon:<stage>" (a short '
                                                             f"lower-case word), got {value!r}"))
                    continue
            elif key not in ("on_failure", "local_boot"):
                self.errors.append(src.file.error(where, "unknown key; expected one of: done_on, local_boot, "
                                                         "on_failure, once"))
                continue
            out[key] = value
        return Lifecycle(**out)

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
            local = {r: self._local(r) for r in rendered if r and "://" not in r}
            missing = [r for r, found in local.items() if found is None]
            if missing:
                tried.append(f"{candidate.value}: {', '.join(missing)} missing")
                continue
            rendered = [local.get(r) or r for r in rendered]
            found[candidate.value] = BootFiles(rendered[0], tuple(rendered[1:-1]), rendered[-1])
        if len(self.errors) != errors_before:
            return None
        if not found:
            src, where = next(v for k, v in self.templated.items() if k in (boot.kernel, boot.efi, *boot.initrds))
            self.errors.append(src.file.error(where, "no architecture has all its files under "
                                                     f"{self.settings.files_root} ({'; '.join(tried)})"))
            return None
        return attrs.evolve(boot, by_arch=found)

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
        """A URL, a path that must exist under the files root, or an absolute path of a file on this
        host. A location with {{ arch }} or
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
        found = self._local(value)
        if ".." in value.split("/"):
            self.errors.append(src.file.error(where, f"{value!r}: '..' is not allowed in a file location"))
            return ""
        if found is None:
            why = (hostfiles.missing(value) if value.startswith("/")
                   else f"{value!r} is not a URL and not a file under {self.settings.files_root}")
            self.errors.append(src.file.error(where, why))
            return ""
        return found

    def _local(self, value: str) -> str | None:
        """A location that is not a URL, as the plan keeps it: a path under the files root
        (relative), else an absolute path of a regular file on this host (served at /host, only
        because a machine file names it); None if it is neither. A leading / that names a file
        under the files root keeps meaning that file, as it always did."""
        rel = value.lstrip("/")
        if ".." in rel.split("/"):
            return None
        if (self.settings.files_root / rel).is_file():
            return rel
        if value.startswith("/") and Path(value).is_file():
            return os.path.normpath(value)
        return None

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



def _no_file(rel: str) -> str:
    raise TemplateError("file() is not available in a file location")

