"""The machines directory → a LoadResult: every *.toml named by a MAC (or default.toml) parsed,
every profile checked even if no machine uses it, MACs and UUIDs that two files claim refused;
each failed file with the error at the root of it. What to serve for a failed file is
netbootd.config.catalog's."""

from __future__ import annotations

from pathlib import Path

import attrs

from netbootd.config.errors import ConfigError, find_line
from netbootd.config.machinefile import PROFILES_DIR, MachineParser
from netbootd.config.machines import Machine
from netbootd.config.settings import Settings
from netbootd.model import mac_hyphen, normalize_mac

DEFAULT_NAME = "default"


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
    loader = MachineParser(settings, directory)
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


def _dedupe(errors: list[ConfigError]) -> list[ConfigError]:
    seen = set()
    out = []
    for e in errors:
        if e not in seen:
            seen.add(e)
            out.append(e)
    return out

