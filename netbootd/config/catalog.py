"""The catalog to serve from a load of the machines directory: the files that loaded, and for each
that failed its last good version (from the running catalog, else from disk); with none, its
machine is held. One bad edit never takes a machine off the network, nor sends it to the default."""

from __future__ import annotations

from pathlib import Path

import attrs

from netbootd.config.errors import ConfigError
from netbootd.config.lastgood import LastGoodStore
from netbootd.config.machines import Catalog, Held, Machine
from netbootd.config.machinesdir import DEFAULT_NAME, LoadResult, machine_file_name


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

