#!/usr/bin/env bash
# Install netbootd as a systemd service on Debian 12 (as root):
#
#   deploy/systemd/install.sh [SOURCE]     SOURCE: a netbootd wheel or source tree (default: this checkout)
#
# 1. a venv at /opt/netbootd with netbootd installed into it (pip; the host's pip configuration applies),
#    so the unit's ExecStart=/opt/netbootd/bin/netbootd exists outside /root and /home;
# 2. /etc/netbootd/netbootd.toml (deploy/systemd/netbootd.toml; an existing one is kept, the new one is
#    put beside it as netbootd.toml.dist), an empty /etc/netbootd/machines and /srv/netbootd/files;
# 3. /etc/netbootd/credentials/ (root only): signing.key (32 random bytes) and ui-auth (a random bearer
#    token for the dashboard), each made only when missing; the unit hands them to the service as
#    systemd credentials;
# 4. the unit at /etc/systemd/system/netbootd.service, and `systemctl daemon-reload` when systemd runs.
# It neither enables nor starts the service: add machine files first, then systemctl enable --now netbootd.
#
# DESTDIR=/some/dir installs the same tree under that directory instead (nothing outside it is
# changed, no root needed), e.g. to inspect it or to check it with systemd-analyze --root=DESTDIR.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
checkout=$(cd "$here/../.." && pwd)
source=${1:-$checkout}
root=${DESTDIR:-}
venv=/opt/netbootd
# Debian's interpreter, not whichever python3 comes first on PATH: a venv links to its interpreter,
# and one under /root or /home is out of the service's reach (ProtectHome=, DynamicUser=).
python=/usr/bin/python3
# What is installed must be readable by the service's user, whatever root's umask is.
umask 022

fail() { echo "install.sh: $*" >&2; exit 1; }
[ -n "$root" ] || [ "$(id -u)" = 0 ] || fail "run it as root (or set DESTDIR to install under a directory)"
[ -e "$source" ] || fail "no wheel or source tree at $source"
[ -x "$python" ] || fail "$python is missing: apt-get install python3 python3-venv"
"$python" -c 'import ensurepip' 2>/dev/null || fail "$python cannot make a venv: apt-get install python3-venv"
# The iPXE binaries netbootd chainloads over TFTP (tftp.ipxe_dir) come from Debian's ipxe package.
[ -f /usr/lib/ipxe/undionly.kpxe ] && [ -f /usr/lib/ipxe/snponly.efi ] \
    || fail "the iPXE binaries are missing from /usr/lib/ipxe: apt-get install ipxe"

echo "== venv $root$venv: pip install $source"
# An existing venv is kept and netbootd upgraded in it, unless another interpreter made it (another
# python3, or Debian's of an older release): a venv works only with the one that made it.
made_by=
if [ -f "$root$venv/pyvenv.cfg" ]; then
    made_by=$(sed -n 's/^home = //p; s/^version[_a-z]* = \([0-9]*\.[0-9]*\).*/\1/p' "$root$venv/pyvenv.cfg" | paste -sd' ')
fi
if [ "$made_by" != "$(dirname "$python") $("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ]; then
    "$python" -m venv --clear "$root$venv"
fi
PIP_DISABLE_PIP_VERSION_CHECK=1 "$root$venv/bin/pip" install --quiet --upgrade "$source"
"$root$venv/bin/netbootd" --version

echo "== configuration $root/etc/netbootd"
install -d -m 0755 "$root/etc/netbootd" "$root/etc/netbootd/machines" "$root/srv/netbootd/files"
if [ -e "$root/etc/netbootd/netbootd.toml" ]; then
    install -m 0644 "$here/netbootd.toml" "$root/etc/netbootd/netbootd.toml.dist"
    echo "   kept the existing netbootd.toml; this release's is netbootd.toml.dist"
else
    install -m 0644 "$here/netbootd.toml" "$root/etc/netbootd/netbootd.toml"
fi

echo "== credentials $root/etc/netbootd/credentials (root only; made when missing)"
install -d -m 0700 "$root/etc/netbootd/credentials"
(
    umask 077
    creds="$root/etc/netbootd/credentials"
    if [ ! -e "$creds/signing.key" ]; then
        head -c 32 /dev/urandom >"$creds/signing.key"
        echo "   signing.key: a new key (hosts answering the same machines need the same file: copy one to the others)"
    fi
    if [ ! -e "$creds/ui-auth" ]; then
        { echo "# netbootd dashboard (ui.auth_file): one bearer token, or user:password lines"
          head -c 24 /dev/urandom | base64; } >"$creds/ui-auth"
        echo "   ui-auth: a new dashboard token (curl -H \"Authorization: Bearer \$(tail -1 $creds/ui-auth)\" ...)"
    fi
)

echo "== unit $root/etc/systemd/system/netbootd.service"
install -d -m 0755 "$root/etc/systemd/system"
install -m 0644 "$checkout/systemd/netbootd.service" "$root/etc/systemd/system/netbootd.service"
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

cat <<EOT
== done. Next:
   put machine files into $root/etc/netbootd/machines (and boot files into $root/srv/netbootd/files), then
   $venv/bin/netbootd check --config /etc/netbootd/netbootd.toml
   systemctl enable --now netbootd && systemctl status netbootd
EOT
