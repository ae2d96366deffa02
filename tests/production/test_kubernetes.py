"""deploy/kubernetes rendered by `kubectl kustomize` (Debian 12's kubernetes-client renders it the
same as a current kubectl), validated offline against the Kubernetes API schemas that
kubernetes-validate bundles, and run: the rendered ConfigMaps and Secret laid out as the kubelet
lays out the pod's volumes, `netbootd check` and `netbootd serve` with the container's own arguments
and the rendered settings, at their real paths (a private mount namespace with overlays) and ports
(a private network namespace), then a ConfigMap update by the kubelet's atomic `..data` swap."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import wait_for
from tests.production import kubelet
from tests.production.kustomize import K8S, KUBECTL, by_kind_name, kustomization_copy, pod_spec, render

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl missing (apt-get install kubernetes-client)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, list[dict[str, Any]]]:
    copy = kustomization_copy(tmp_path_factory.mktemp("k8s"))
    return copy, render(copy)


def test_render_without_signing_key_names_the_file(tmp_path):
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("signing.key"))
    out = subprocess.run([str(KUBECTL), "kustomize", str(copy)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "signing.key" in out.stderr, out.stderr


def test_rendered_objects_validate_against_the_api_schemas(rendered, tmp_path):
    pytest.importorskip("kubernetes_validate")
    _, objects = rendered
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    out = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (out.stdout + out.stderr).count(" passed ") == len(objects), out.stdout + out.stderr


def test_rendered_order_namespace_labels_and_images(rendered):
    _, objects = rendered
    kinds = [o["kind"] for o in objects]
    # applied in this order: the namespace first, the Secret and ConfigMaps before the pods need them
    assert kinds[0] == "Namespace"
    assert kinds.index("DaemonSet") > max(i for i, k in enumerate(kinds) if k in ("Secret", "ConfigMap"))
    assert {o["metadata"].get("namespace") for o in objects[1:]} == {"netbootd"}
    labels = objects[0]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    spec = pod_spec(objects)
    assert spec["hostNetwork"] is True
    images = [c["image"] for c in spec["initContainers"] + spec["containers"]]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    named = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    assert images == [named["netbootd-files"], named["netbootd"]]


def test_every_generated_file_reaches_the_pod_and_the_settings_match_the_mounts(rendered):
    copy, objects = rendered
    objs = by_kind_name(objects)
    spec = pod_spec(objects)
    volumes = {v["name"]: v for v in spec["volumes"]}
    # each ConfigMap key of the machines volume, at the path netbootd expects (profiles/, ignition/)
    machine_paths = set(kubelet.payload(volumes["machines"], objs))
    on_disk = {str(p.relative_to(copy / "machines")) for p in (copy / "machines").rglob("*") if p.is_file()}
    assert machine_paths == on_disk, "kustomization.yaml and daemonset.yaml's items must list every file"
    container = spec["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    assert config_path.parent == Path(mounts["config"])
    settings = tomllib.loads(objs[("ConfigMap", "netbootd-config")]["data"][config_path.name])
    assert settings["machines_dir"] == mounts["machines"]
    assert settings["files_root"] == mounts["files"]
    assert Path(settings["http"]["signing_key_file"]).parent == Path(mounts["signing-key"])
    assert {settings["state_dir"], settings["cache_dir"]} == {mounts["state"], mounts["cache"]}
    init = spec["initContainers"][0]
    assert {m["mountPath"] for m in init["volumeMounts"]} == {settings["files_root"]}
    assert init["command"][-1].rstrip("/") == settings["files_root"]


# ---------------------------------------------------------------- the pod's volumes, run for real


def _pod_payloads(objects: list[dict[str, Any]]) -> dict[str, kubelet.Payload]:
    """mount path -> what the kubelet writes there, for the netbootd container's API-object volumes."""
    objs = by_kind_name(objects)
    spec = pod_spec(objects)
    volumes = {v["name"]: v for v in spec["volumes"]}
    out = {}
    for mount in spec["containers"][0]["volumeMounts"]:
        volume = volumes[mount["name"]]
        if {"configMap", "secret", "projected"} & volume.keys():
            out[mount["mountPath"]] = kubelet.payload(volume, objs)
    return out


@pytest.fixture
def pod_namespace() -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("needs root (a mount and a network namespace)")
    from tests.production.namespace import Namespace

    base = Path(tempfile.mkdtemp(prefix="netbootd-k8s-"))
    ns = Namespace(base, ("etc", "srv", "var/lib", "var/cache"))
    try:
        # the pod's own directories: nothing of the host's /etc/netbootd or /var/lib/netbootd
        ns.run("rm", "-rf", "/etc/netbootd", "/srv/netbootd", "/var/lib/netbootd", "/var/cache/netbootd")
        yield ns
    finally:
        ns.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.netns
@pytest.mark.root
def test_pod_volumes_check_serve_and_configmap_swap(pod_namespace, tmp_path):
    ns = pod_namespace
    copy = kustomization_copy(tmp_path)
    objects = render(copy)
    payloads = _pod_payloads(objects)
    for mount_path, files in payloads.items():
        kubelet.write(ns.path(mount_path), files)
    spec = pod_spec(objects)
    container = spec["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    key_file = ns.path(mounts["signing-key"]) / "signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o400 and key_file.resolve() != key_file
    assert (ns.path(mounts["machines"]) / "profiles" / "worker.toml").is_file()
    for name in ("files", "state", "cache"):  # emptyDir and hostPath volumes: empty directories
        ns.path(mounts[name]).mkdir(parents=True, exist_ok=True)

    # the container's arguments after the image's entrypoint (netbootd), run from this checkout
    netbootd = [sys.executable, "-m", "netbootd"]
    config = container["args"][container["args"].index("--config") + 1]
    out = ns.run(*netbootd, "check", "--config", config, cwd=REPO, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK: 2 machine files + default" in out.stdout

    # the pod's securityContext: root with every capability dropped but NET_BIND_SERVICE
    caps = "-all,+net_bind_service"
    log = tmp_path / "netbootd.log"
    with open(log, "wb") as sink:
        daemon = subprocess.Popen(
            [*ns.prefix(), "setpriv", f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set={caps}",
             "--no-new-privs", *netbootd, *container["args"]],
            stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        def healthy() -> bool:
            assert daemon.poll() is None, f"netbootd exited {daemon.returncode}:\n{log.read_text()}"
            return ns.curl("http://127.0.0.1/healthz")[0] == "200"

        wait_for(healthy, timeout=60, interval=0.2)

        def script(mac: str) -> str:
            code, body = ns.curl(f"http://127.0.0.1/ipxe?mac={mac}&arch=efi64")
            return body if code == "200" else f"HTTP {code}: {body}"

        worker = script("52-54-00-00-00-07")
        assert "systemd.hostname=worker-07" in worker, worker
        url = re.search(r"ignition\.config\.url=(\S+)", worker)
        assert url, worker
        code, body = ns.curl(url.group(1))
        assert code == "200" and json.loads(body) == json.loads((copy / "machines/ignition/worker.ign").read_text())

        # an edit and a new machine, applied: the kubelet swaps ..data in the mounted volume
        (copy / "machines/52-54-00-00-00-07.toml").write_text(
            'profile = "worker"\n[vars]\nhostname = "worker-07b"\n')
        (copy / "machines/52-54-00-00-00-08.toml").write_text('profile = "worker"\n[vars]\nhostname = "worker-08"\n')
        kustomization = (copy / "kustomization.yaml").read_text()
        (copy / "kustomization.yaml").write_text(kustomization.replace(
            "      - machines/52-54-00-00-00-07.toml\n",
            "      - machines/52-54-00-00-00-07.toml\n      - machines/52-54-00-00-00-08.toml\n"))
        machines = mounts["machines"]
        kubelet.write(ns.path(machines), _pod_payloads(render(copy))[machines])
        assert (ns.path(machines) / "52-54-00-00-00-08.toml").is_file()
        wait_for(lambda: "systemd.hostname=worker-07b" in script("52-54-00-00-00-07"), timeout=30, interval=0.2)
        wait_for(lambda: "systemd.hostname=worker-08" in script("52-54-00-00-00-08"), timeout=30, interval=0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            raise
    assert rc == 0, log.read_text()
