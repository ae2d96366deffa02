"""Deployment files: the systemd unit passes systemd-analyze, the Containerfile references what
exists, the Kubernetes manifests validate against the bundled API schemas."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "netbootd.service"
K8S = REPO / "deploy" / "kubernetes"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


def _unit_with_real_binary(tmp_path: Path) -> Path:
    """The unit as shipped, with ExecStart pointing at this environment's netbootd script
    (verify insists that the binary exists)."""
    binary = Path(sys.executable).parent / "netbootd"
    assert binary.exists(), "netbootd console script not installed (pip install -e .)"
    text = UNIT.read_text().replace("/opt/netbootd/bin/netbootd", str(binary))
    out = tmp_path / "netbootd.service"
    out.write_text(text)
    return out


@needs_systemd_analyze
def test_systemd_unit_verifies(tmp_path):
    unit = _unit_with_real_binary(tmp_path)
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "netbootd.service" in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


@needs_systemd_analyze
def test_systemd_exposure_score(tmp_path):
    unit = _unit_with_real_binary(tmp_path)
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True, text=True
    )
    match = re.search(r"Overall exposure level for netbootd.service: ([0-9.]+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= 2.0, out.stdout


def test_systemd_unit_essentials():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "ConfigurationDirectory=netbootd",
        "StateDirectory=netbootd",
        "CacheDirectory=netbootd",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "WatchdogSec=30s",
    ):
        assert f"\n{line}\n" in text, line


def test_containerfile_references_exist():
    with open(REPO / "Containerfile", "rb") as f:
        parser = DockerfileParser(fileobj=f)
        instructions = parser.structure
        stages = parser.parent_images
    assert stages[0].startswith("debian:12"), stages  # the later stages build on the first
    copies = [i["value"].split() for i in instructions if i["instruction"] == "COPY"]
    assert copies
    for parts in copies:
        if parts[0].startswith("--from="):
            continue  # from an earlier stage, not from the repo
        for source in parts[:-1]:
            assert (REPO / source).exists(), f"COPY source {source} missing from the repo"
    run = " ".join(i["value"] for i in instructions if i["instruction"] == "RUN")
    assert "ipxe" in run and "pip install" in run
    entry = next(i["value"] for i in instructions if i["instruction"] == "ENTRYPOINT")
    cmd = next(i["value"] for i in instructions if i["instruction"] == "CMD")
    assert "netbootd" in entry and '"serve"' in cmd and "/etc/netbootd/netbootd.toml" in cmd
    exposed = " ".join(i["value"] for i in instructions if i["instruction"] == "EXPOSE")
    for port in ("67/udp", "4011/udp", "69/udp", "80/tcp"):
        assert port in exposed
    # the documented command runs the image with the host's network (DHCP broadcasts) and one capability
    page = (REPO / "docs" / "production" / "container.md").read_text()
    run_command = page[page.index("podman run"):].split("\n\n")[0]
    for flag in ("--network host", "--cap-drop ALL", "--cap-add NET_BIND_SERVICE"):
        assert flag in run_command, flag


def _manifests() -> list[Path]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [K8S / r for r in kustomization["resources"]]


def test_kubernetes_manifests_validate():
    pytest.importorskip("kubernetes_validate")
    files = _manifests()
    out = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", *map(str, files)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed") + out.stderr.count("passed") == len(files)


def test_kustomization_files_exist_and_configs_check():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for gen in kustomization["configMapGenerator"]:
        for f in gen["files"]:
            assert (K8S / f).is_file(), f
            assert ":" not in Path(f).name, "ConfigMap keys cannot hold colons"
    out = subprocess.run(
        [sys.executable, "-m", "netbootd", "check", str(K8S / "machines")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_daemonset_shape():
    ds = yaml.safe_load((K8S / "daemonset.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    c = spec["containers"][0]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert "subPath" not in mounts["machines"], "subPath mounts never see ConfigMap updates"
    volumes = {v["name"]: v for v in spec["volumes"]}
    sources = [s["configMap"]["name"] for s in volumes["machines"]["projected"]["sources"]]
    assert sources == ["netbootd-machines", "netbootd-profiles", "netbootd-ignition"]
    assert volumes["signing-key"]["secret"]["defaultMode"] == 0o400
    assert "hostPath" in volumes["cache"] or "emptyDir" in volumes["cache"]
