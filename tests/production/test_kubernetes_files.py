"""files_root in Kubernetes: deploy/kubernetes/files.Containerfile built with podman from a directory
of files (as docs/production/kubernetes.md says), then the rendered DaemonSet's init container run
on it, with its command and its user, over an empty directory standing for the pod's emptyDir
(mode 0777, as the kubelet makes it); the files arrive, readable by the netbootd container.
No kubelet or container runtime runs the pod here: the image's filesystem is run under chroot, as
tests/production/container.py does where `podman run` is refused."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.production.container import Chroot, ImageConfig, mounted
from tests.production.kustomize import KUBECTL, kustomization_copy, pod_spec, render

REPO = Path(__file__).resolve().parents[2]
BASE = "docker.io/library/debian:12-slim"

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(KUBECTL is None, reason="kubectl missing (apt-get install kubernetes-client)"),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman missing (apt-get install podman)"),
]


def test_init_container_copies_the_files_image_into_files_root(tmp_path):
    if subprocess.run(["podman", "image", "exists", BASE], capture_output=True, timeout=60).returncode != 0:
        pytest.skip(f"{BASE} is not in local storage: deploy/container/build.sh makes it")
    spec = pod_spec(render(kustomization_copy(tmp_path)))
    init = spec["initContainers"][0]
    user = init["securityContext"]["runAsUser"]
    target = init["volumeMounts"][0]["mountPath"]

    context = tmp_path / "files"
    (context / "fcos").mkdir(parents=True)
    (context / "fcos" / "vmlinuz").write_bytes(b"kernel" * 1000)
    (context / "grub.cfg").write_text("set timeout=1\n")
    image = f"localhost/netbootd-files-test:{uuid.uuid4().hex[:8]}"
    build = subprocess.run(
        ["podman", "build", "--isolation", "chroot", "--pull=never", "--format", "docker",
         "-t", image, "-f", str(REPO / "deploy/kubernetes/files.Containerfile"), str(context)],
        capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    try:
        volume = tmp_path / "emptydir"
        volume.mkdir()
        volume.chmod(0o777)
        with mounted(image) as root:
            # the init container's command as its securityContext's user, the volume over its mount path
            run = Chroot(root, ImageConfig.of(image))
            argv = run.argv(["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *init["command"]],
                            binds={target: volume})
            out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert (volume / "fcos" / "vmlinuz").read_bytes() == b"kernel" * 1000
        assert (volume / "grub.cfg").read_text() == "set timeout=1\n"
        assert (volume / "fcos" / "vmlinuz").stat().st_uid == user
        assert (volume / "fcos" / "vmlinuz").stat().st_mode & 0o004, "the netbootd container must read them"
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True, timeout=120)
