"""deploy/kubernetes rendered with `kubectl kustomize`, for the tests that check or run it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
KUBECTL = shutil.which("kubectl")


def render(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def kustomization_copy(tmp: Path) -> Path:
    """deploy/kubernetes with the signing.key an operator makes before the first apply."""
    copy = tmp / "kubernetes"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("signing.key"))
    (copy / "signing.key").write_bytes(os.urandom(32))
    return copy


def by_kind_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind_name(objects)[("DaemonSet", "netbootd")]["spec"]["template"]["spec"]
