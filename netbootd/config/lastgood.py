"""The last good version of every machine, kept on disk so it outlives a restart.

A machine file (or the profile under it) that fails to load must never make its machine boot
something else — least of all `default.toml`, which at a real site may be an installer that wipes
disks. In a running daemon the last good version stays in memory; this store keeps it in
`state_dir/last-good/<machine>.json` too, so a restart with a broken file serves what served before.

What is saved is the machine as it was served: the effective configuration with its profile merged
in, templates as source text, Ignition as bytes. Files are written atomically (temp file + rename),
mode 0600 (they hold Ignition configs), and only when their content changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from netbootd.config.machines import Boot, BootFiles, BootKind, Lifecycle, Machine
from netbootd.config.templates import Template, TemplateError, compile_template
from netbootd.imageref import ReferenceError, parse_reference
from netbootd.logs import get_logger

log = get_logger("netbootd.config")

FORMAT = 1
DIRECTORY = "last-good"


def to_json(machine: Machine) -> dict[str, Any]:
    boot = machine.boot

    def source(t: Template | None) -> str | None:
        return None if t is None else t.source

    return {
        "format": FORMAT,
        "name": machine.name,
        "source": str(machine.source),
        "mac": machine.mac,
        "uuid": machine.uuid,
        "profile": machine.profile,
        "vars": dict(machine.vars),
        "ignition": None if machine.ignition is None else base64.b64encode(machine.ignition).decode(),
        "booty": None if machine.booty is None else dict(machine.booty),
        "ipxe_binary": machine.ipxe_binary,
        "signed_urls": machine.signed_urls,
        "loader": machine.loader,
        "secure_boot": machine.secure_boot,
        "arch": machine.arch,
        "lifecycle": attrs.asdict(machine.lifecycle),
        "boot": {
            "kind": boot.kind.value,
            "kernel": boot.kernel,
            "initrds": list(boot.initrds),
            "cmdline": source(boot.cmdline),
            "image": None if boot.image is None else str(boot.image),
            "efi": boot.efi,
            "script": source(boot.script),
            "chain": source(boot.chain),
            "by_arch": {a: {"kernel": f.kernel, "initrds": list(f.initrds), "efi": f.efi} for a, f in boot.by_arch.items()},
        },
    }


def from_json(doc: dict[str, Any]) -> Machine:
    """The machine a snapshot describes; ValueError (or KeyError/TypeError) if it is not one."""
    if doc.get("format") != FORMAT:
        raise ValueError(f"unknown snapshot format {doc.get('format')!r}")
    b = doc["boot"]

    def template(text: str | None) -> Template | None:
        return None if text is None else compile_template(text)

    boot = Boot(
        kind=BootKind(b["kind"]),
        kernel=b["kernel"],
        initrds=tuple(b["initrds"]),
        cmdline=template(b["cmdline"]),
        image=None if b["image"] is None else parse_reference(b["image"]),
        efi=b["efi"],
        script=template(b["script"]),
        chain=template(b["chain"]),
        by_arch={a: BootFiles(f["kernel"], tuple(f["initrds"]), f["efi"]) for a, f in b.get("by_arch", {}).items()},
    )
    ignition = doc["ignition"]
    return Machine(
        name=doc["name"],
        source=Path(doc["source"]),
        boot=boot,
        mac=doc["mac"],
        uuid=doc["uuid"],
        profile=doc["profile"],
        vars={str(k): str(v) for k, v in doc["vars"].items()},
        ignition=None if ignition is None else base64.b64decode(ignition),
        booty=doc["booty"],
        ipxe_binary=doc["ipxe_binary"],
        signed_urls=bool(doc["signed_urls"]),
        loader=doc.get("loader", "ipxe"),
        secure_boot=bool(doc.get("secure_boot", False)),
        arch=doc.get("arch"),
        lifecycle=Lifecycle(**doc.get("lifecycle", {})),
    )


class LastGoodStore:
    """`state_dir/last-good/`: one JSON file per machine file name ("52-54-00-12-34-56", "default")."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / DIRECTORY
        self._written: dict[str, str] = {}  # name → sha256 of what is on disk (skips rewriting)
        self._warned = False

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def load(self, name: str) -> Machine | None:
        """The last good version of machine file `name`, or None (never saved, or unreadable)."""
        path = self._path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warn("cannot read a last good machine version", path=str(path), error=exc.strerror or str(exc))
            return None
        try:
            machine = from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError, TemplateError, ReferenceError) as exc:
            log.warn("ignoring a damaged last good machine version (delete it)", path=str(path), error=str(exc))
            return None
        self._written[name] = hashlib.sha256(raw).hexdigest()
        return machine

    def names(self) -> list[str]:
        try:
            return sorted(p.name[: -len(".json")] for p in self.dir.iterdir() if p.name.endswith(".json"))
        except OSError:
            return []

    def save(self, machines: Iterable[Machine]) -> None:
        """Keep each machine's current version (only the files whose content changed are written)."""
        for machine in machines:
            raw = (json.dumps(to_json(machine), indent=1, sort_keys=True) + "\n").encode()
            digest = hashlib.sha256(raw).hexdigest()
            if self._written.get(machine.name) == digest:
                continue
            if self._written.get(machine.name) is None and self._same_on_disk(machine.name, digest):
                self._written[machine.name] = digest
                continue
            if self._write(machine.name, raw):
                self._written[machine.name] = digest

    def forget(self, keep: Iterable[str]) -> None:
        """Remove the versions of machine files that are gone from the machines directory: a
        deleted machine file means the operator wants the machine unknown again."""
        wanted = set(keep)
        for name in self.names():
            if name not in wanted:
                try:
                    self._path(name).unlink()
                except OSError:
                    continue
                self._written.pop(name, None)

    def _same_on_disk(self, name: str, digest: str) -> bool:
        try:
            return hashlib.sha256(self._path(name).read_bytes()).hexdigest() == digest
        except OSError:
            return False

    def _write(self, name: str, raw: bytes) -> bool:
        path = self._path(name)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)  # no fsync: a file lost in a crash reads as "no last good version" (held)
            os.replace(tmp, path)
            return True
        except OSError as exc:
            if not self._warned:  # once: a read-only state directory would say so for every machine
                log.warn(
                    "cannot keep the last good machine versions; after a restart a broken machine file will "
                    "hold its machine instead of serving its last good version (make state_dir writable)",
                    path=str(self.dir),
                    error=exc.strerror or str(exc),
                )
                self._warned = True
            return False
