#!/usr/bin/env bash
# Build the netbootd container image (Containerfile) with podman, also where no container registry
# is reachable and pip must go through the host's mirror or TLS-intercepting proxy.
#
#   deploy/container/build.sh [IMAGE]      IMAGE: $NETBOOTD_IMAGE, else localhost/netbootd:ci
#
# 1. The base image debian:12-slim comes from local storage; when it is missing it is made from
#    Debian's archive with mmdebstrap (minbase, merged /usr, no docs, man pages or locales: what the
#    official slim image leaves out) and imported. DEBIAN_MIRROR (optional) is the mirror
#    mmdebstrap uses, e.g. a local one; apt inside the build then uses it too (the base image keeps
#    the sources mmdebstrap used).
# 2. podman build --isolation chroot (needs no container runtime; BUILDAH_ISOLATION overrides)
#    --network host --pull=never --format docker (OCI images drop HEALTHCHECK), with the host's pip
#    configuration (files and PIP_* variables, merged as pip would) and the files it names (CA
#    bundle, wheel directories, constraints) mounted read-only into the throwaway "build" stage
#    only (see the two podman build calls): nothing of them lands in the image or its history. When the host's pip names no CA bundle, the
#    system one is used, so pip trusts whatever CA the host trusts (e.g. a TLS proxy's).
#    http_proxy/https_proxy/no_proxy reach apt and pip through podman's --http-proxy (default on).
# 3. Prints the build time and the image size.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${1:-${NETBOOTD_IMAGE:-localhost/netbootd:ci}}
BASE=docker.io/library/debian:12-slim
BUILD_DIR=/run/netbootd-build   # where the Containerfile's pip step finds pip.conf

fail() { echo "container build FAILED: $*" >&2; exit 1; }
command -v podman >/dev/null || fail "podman is not installed (apt-get install podman)"
command -v python3 >/dev/null || fail "python3 is needed to read the host's pip configuration"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$SECONDS

if podman image exists "$BASE"; then
    echo "== base image $BASE: present"
else
    command -v mmdebstrap >/dev/null || fail "$BASE is not in local storage and mmdebstrap is not installed (apt-get install mmdebstrap), or pull it: podman pull $BASE"
    echo "== base image $BASE: missing, making it with mmdebstrap${DEBIAN_MIRROR:+ from $DEBIAN_MIRROR}"
    t0=$SECONDS
    slim=()
    for p in /usr/share/man/ /usr/share/info/ /usr/share/groff/ /usr/share/lintian/ /usr/share/locale/ /usr/share/doc/; do
        slim+=(--dpkgopt="path-exclude=$p*")
    done
    slim+=(--dpkgopt='path-include=/usr/share/locale/locale.alias' --dpkgopt='path-include=/usr/share/doc/*/copyright')
    # ${DEBIAN_MIRROR:+...}: without it mmdebstrap uses its default mirror
    mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "${slim[@]}" \
        bookworm "$work/rootfs.tar" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"} \
        || fail "mmdebstrap could not make the Debian 12 base (is the Debian archive reachable? DEBIAN_MIRROR selects a mirror)"
    podman import --quiet --change 'CMD ["bash"]' --message "mmdebstrap --variant=minbase bookworm (deploy/container/build.sh)" \
        "$work/rootfs.tar" "$BASE" >/dev/null || fail "podman import of the mmdebstrap tarball failed"
    rm -f "$work/rootfs.tar"
    echo "   made in $((SECONDS - t0)) s"
fi

# The host's effective pip configuration as one file, plus "host path<TAB>build path" lines for
# the files it refers to (mounted read-only at the build path, which the file then names).
python3 - "$work/pip.conf" "$BUILD_DIR/host" >"$work/mounts" <<'PY'
import configparser
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

out, mount_dir = sys.argv[1], sys.argv[2]
# Options that say where the host installs or logs, not how it reaches packages: not passed.
LOCAL_ONLY = {"target", "prefix", "root", "user", "src", "log", "cache-dir", "require-virtualenv", "config-file",
              "version", "help", "break-system-packages"}
# Options whose values may name files or directories of the host.
PATHS = {"cert", "client-cert", "constraint", "requirement", "find-links", "index-url", "extra-index-url"}
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")

def norm(key: str) -> str:
    return key.lower().replace("_", "-").lstrip("-")

# pip's order: global files, then user files (skipped when PIP_CONFIG_FILE names an existing file),
# then PIP_CONFIG_FILE; PIP_CONFIG_FILE=/dev/null turns every file off; PIP_* variables override all.
env_file = os.environ.get("PIP_CONFIG_FILE")
files: list[Path] = []
if env_file != os.devnull:
    xdg_dirs = os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files += [Path(d) / "pip" / "pip.conf" for d in xdg_dirs.split(":") if d] + [Path("/etc/pip.conf")]
    if not (env_file and Path(env_file).exists()):
        home = Path.home()
        files += [home / ".pip" / "pip.conf",
                  Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf"]
    if env_file:
        files.append(Path(env_file))
merged: dict[str, dict[str, str]] = {"global": {}}
for path in files:
    if path.is_file():
        parser = configparser.RawConfigParser()
        parser.read(path)
        for section in parser.sections():
            merged.setdefault(section, {}).update((norm(k), v) for k, v in parser.items(section))
for name, value in os.environ.items():
    if name.startswith("PIP_"):
        key = norm(name[4:])
        for options in merged.values():
            options.pop(key, None)
        merged["global"][key] = value
if not any("cert" in options for options in merged.values()) and SYSTEM_CA.is_file():
    merged["global"]["cert"] = str(SYSTEM_CA)

mounts: dict[str, str] = {}
def inside(key: str, token: str) -> str:
    is_url = token.startswith("file://")
    host = Path(unquote(urlsplit(token).path) if is_url else token)
    if not host.is_absolute() or not host.exists():
        return token  # not a local path: passed as it is
    # A local index (root/simple/<project>/) links its files relative to its pages, often outside
    # it (../../files/...): its parent directory goes in with it.
    top = host.parent if key.endswith("index-url") and host.parent != host else host
    if str(top) not in mounts:
        mounts[str(top)] = f"{mount_dir}/{len(mounts)}-{top.name or 'root'}"
    path = mounts[str(top)] + str(host)[len(str(top)):]
    return "file://" + path if is_url else path

config = configparser.RawConfigParser()
for section, options in merged.items():
    config.add_section(section)
    for key, value in options.items():
        if key in LOCAL_ONLY:
            continue
        if key in PATHS:
            value = " ".join(inside(key, t) for t in value.split())
        config.set(section, key, value)
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold an index's credentials
with os.fdopen(fd, "w") as f:
    config.write(f)
for host, build in mounts.items():
    print(f"{host}\t{build}")
PY

volumes=(-v "$work/pip.conf:$BUILD_DIR/pip.conf:ro")
while IFS=$'\t' read -r host build; do
    volumes+=(-v "$host:$build:ro")
done <"$work/mounts"
build=(podman build --isolation "${BUILDAH_ISOLATION:-chroot}" --network host --pull=never --format docker -f Containerfile)
t0=$SECONDS
# podman build -v mounts into every RUN and leaves the mount points behind in that layer, and the
# "runtime" stage's layer is the image's. So that stage is built first without them; the full
# build below finds it in the layer cache (the cache does not look at -v) and only the throwaway
# "build" stage sees the mounts. The image test checks that /run/netbootd-build is not in the image.
echo "== podman build: stage runtime (Debian packages, no host mounts)"
"${build[@]}" --target runtime . || fail "podman build of the runtime stage failed (its output is above)"
echo "== podman build $IMAGE (pip: the host's configuration, $(wc -l <"$work/mounts") host path(s) mounted)"
"${build[@]}" "${volumes[@]}" -t "$IMAGE" . || fail "podman build of $IMAGE failed (its output is above)"
built=$((SECONDS - t0))

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_size=$(podman image inspect --format '{{.Size}}' "$BASE")
echo "== built $IMAGE"
echo "   podman build: ${built} s; total with the base image: $((SECONDS - started)) s"
echo "   image size: $((size / 1000000)) MB (${size} bytes; the base image $((base_size / 1000000)) MB of it)"
