"""The files a kubelet puts into a pod's ConfigMap, Secret and projected volumes, laid out as its
AtomicWriter does (pkg/volume/util/atomic_writer.go): the payload in a timestamped directory
`..YYYY_MM_DD_HH_MM_SS.N`, a `..data` symlink to it, and one symlink per top-level name into
`..data`. An update writes a new timestamped directory and renames a new `..data_tmp` symlink over
`..data` (the one atomic step), then adds and removes top-level symlinks and deletes the old
directory. No kubelet runs here, so this is the test's own copy of that behaviour."""

from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path
from typing import Any

Payload = dict[str, tuple[bytes, int]]  # path in the volume -> (content, mode)
CONFIGMAP_MODE = 0o644  # the API's defaultMode when the volume gives none


def _source(kind: str, ref: dict[str, Any], objects: dict[tuple[str, str], dict], mode: int) -> Payload:
    obj = objects[(kind, ref.get("name") or ref["secretName"])]
    if kind == "Secret":
        data = {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
    else:
        data = {k: v.encode() for k, v in obj.get("data", {}).items()}
    mode = ref.get("defaultMode", mode)
    if "items" in ref:  # only the keys listed, each at its path
        return {item["path"]: (data[item["key"]], item.get("mode", mode)) for item in ref["items"]}
    return {key: (value, mode) for key, value in data.items()}


def payload(volume: dict[str, Any], objects: dict[tuple[str, str], dict]) -> Payload:
    """What the kubelet writes into `volume` (a pod spec's volume: configMap, secret or projected)."""
    if "configMap" in volume:
        return _source("ConfigMap", volume["configMap"], objects, CONFIGMAP_MODE)
    if "secret" in volume:
        return _source("Secret", volume["secret"], objects, CONFIGMAP_MODE)
    projected = volume["projected"]
    out: Payload = {}
    for source in projected["sources"]:
        for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
            if key in source:
                out.update(_source(kind, source[key], objects, projected.get("defaultMode", CONFIGMAP_MODE)))
    return out


def write(target: Path, files: Payload) -> None:
    """Write (or update to) `files` in `target`, as the kubelet does."""
    target.mkdir(parents=True, exist_ok=True)
    now = time.time()
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime(now)) + f".{time.time_ns() % 1_000_000_000}"
    for rel, (data, mode) in files.items():
        path = target / stamp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    data_link = target / "..data"
    old = os.readlink(data_link) if data_link.is_symlink() else None
    tmp = target / "..data_tmp"
    tmp.symlink_to(stamp)
    os.rename(tmp, data_link)
    wanted = {rel.split("/", 1)[0] for rel in files}
    for name in wanted:
        if not (target / name).is_symlink():
            (target / name).symlink_to(f"..data/{name}")
    for entry in target.iterdir():
        if not entry.name.startswith("..") and entry.name not in wanted:
            entry.unlink()
    if old is not None:
        shutil.rmtree(target / old)
