#!/usr/bin/env bash
# Build a generic Debian live system that boots over the network through netbootd: a kernel, a
# dracut initramfs (generic: dmsquash-live + livenet + network-legacy) that fetches its root file
# system over HTTP (root=live:URL), the root file system as a squashfs, and the same initramfs with
# Ignition (Debian's `ignition` package) for machines that take an Ignition config.
#
# Output, in the directory given (default: ./live):
#   vmlinuz               the kernel (Debian's linux-image-amd64)
#   initrd.img            dracut, generic (no host-only), zstd
#   initrd-ignition.img   the same with Ignition (ignition.firstboot=1 ignition.platform.id=metal
#                         ignition.config.url=URL on the command line)
#   rootfs.squashfs       a minimal Debian (systemd, udev, curl, iproute2), xz; autologin on ttyS0;
#                         its service nbd-live.service prints `NETBOOTD-LIVE-OK nbd_marker=<value>`
#                         on the console (nbd_marker= from the kernel command line), or, with
#                         nbd_install=URL on the command line, writes that gzip'd disk image to
#                         /dev/vda, calls nbd_done=URL (nbd_failed=URL when it fails) and reboots
#   packages.txt          the packages and versions in the initramfs build and in the root
#   unavailable           only when the build could not run: why (the tests read it)
#
# Everything comes from Debian packages through mmdebstrap with this machine's own apt sources (no
# mirror is named here). Runs as root (mmdebstrap's root mode, chroot). Needs mmdebstrap, squashfs-tools
# and util-linux (unshare).
#
# Cached and idempotent: the two mmdebstrap trees are kept as tarballs in OUT/.cache, each rebuilt
# only when its packages' candidate versions or its mmdebstrap options change; the outputs only when
# those or this script change (a stamp of both beside each). A second run is seconds. Without
# an answer from apt (offline) the outputs already built are kept.
#
# Usage: deploy/os/build-live.sh [--force] [OUT]
set -euo pipefail

FORCE=0
if [ "${1:-}" = "--force" ]; then FORCE=1; shift; fi
OUT="${1:-live}"
SELF="$(readlink -f "$0")"
STARTED=$SECONDS

# What each tree installs (--variant=minbase plus these). The initramfs build: the kernel, dracut and
# what its network-legacy module runs (dhclient, arping, pgrep), curl (url-lib, which livenet and
# Ignition need), systemd-sysv (reboot/poweroff in the initramfs), zstd (its compression), ignition
# (its dracut module 30ignition).
BOOT_PACKAGES="linux-image-amd64 dracut dracut-live dracut-network isc-dhcp-client iputils-arping procps curl zstd systemd-sysv ignition"
# The live root: systemd as init, udev, curl and gzip for the installer, iproute2 to look at the network.
ROOT_PACKAGES="systemd-sysv udev curl iproute2 gzip"

say() { echo "build-live: [$((SECONDS - STARTED)) s] $*"; }
die() { echo "build-live: $*" >&2; exit 1; }

mkdir -p "$OUT/.cache"
OUT="$(cd "$OUT" && pwd)"
CACHE="$OUT/.cache"
exec 9>"$CACHE/.lock"
flock 9  # two runs at once: one builds, the other waits and then finds everything built

unavailable() {
    echo "$*" > "$OUT/unavailable"
    die "$*"
}
[ "$(id -u)" = 0 ] || unavailable "must run as root (mmdebstrap's root mode and chroot)"
missing=""
command -v mmdebstrap >/dev/null || missing+=" mmdebstrap"
command -v mksquashfs >/dev/null || missing+=" squashfs-tools"
command -v unshare >/dev/null || missing+=" util-linux"
[ -z "$missing" ] || unavailable "missing tools: apt-get install$missing"

# The release to build: this machine's own (its apt sources serve it).
. /etc/os-release
SUITE="${SUITE:-${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release: set SUITE}}"

# The candidate versions of PACKAGES, one "name version" a line; empty when apt has no answer.
versions() {
    # shellcheck disable=SC2086
    apt-cache show --no-all-versions $1 2>/dev/null | awk '/^Package:/ {p=$2} /^Version:/ {print p, $2}' | sort
}
# stamp PART PACKAGES: a hash of PART of this script (the lines between `# >>> PART` and `# <<< PART`:
# a tree's mmdebstrap options), the package list and their versions; status 1 when apt has no version.
stamp() {
    local vers
    vers="$(versions "$2")"
    [ "$(echo "$vers" | grep -c .)" = "$(echo "$2" | wc -w)" ] || return 1
    { sed -n "/^# >>> $1\$/,/^# <<< $1\$/p" "$SELF"; echo "$SUITE $2"; echo "$vers"; } | sha256sum | cut -d' ' -f1
}
fresh() {  # fresh FILE... STAMPFILE STAMP: all FILEs there and built from STAMP
    local args=("$@") n=$#
    local want="${args[n-1]}" stampfile="${args[n-2]}" f
    [ "$FORCE" = 0 ] || return 1
    for f in "${args[@]:0:n-2}"; do [ -s "$f" ] || return 1; done
    [ "$(cat "$stampfile" 2>/dev/null)" = "$want" ]
}

temps=()
trap 'for t in "${temps[@]}"; do rm -rf "$t"; done' EXIT

# mmdebstrap NAME PACKAGES [OPTIONS...]: $CACHE/NAME.tar, a minbase tree with PACKAGES.
debstrap() {
    local name="$1" packages="$2"; shift 2
    local log="$CACHE/$name.log"
    say "mmdebstrap $name ($SUITE, minbase + $packages): $log"
    # no mirror argument: mmdebstrap takes this machine's apt sources
    if ! mmdebstrap --variant=minbase --include="${packages// /,}" "$@" "$SUITE" "$CACHE/$name.tmp.tar" </dev/null >"$log" 2>&1; then
        rm -f "$CACHE/$name.tmp.tar"
        tail -5 "$log" >&2
        unavailable "mmdebstrap $name failed (can apt reach its packages? apt-get update?): $(grep -E '^E: ' "$log" | tail -1)"
    fi
    mv "$CACHE/$name.tmp.tar" "$CACHE/$name.tar"
}
# unpack NAME: a new temporary directory holding $CACHE/NAME.tar, its path on stdout
unpack() {
    local dir
    dir="$(mktemp -d "$CACHE/.$1.XXXXXX")"
    tar -x -C "$dir" -f "$CACHE/$1.tar"
    echo "$dir"
}

# ---------------------------------------------------------------- the initramfs build tree
# >>> boot-tree
BOOT_TREE_OPTS=(
    # the kernel's and dracut's postinst would run dracut's kernel hook (an image for this tree, unused):
    # diverted to a no-op, dracut runs below
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --divert /etc/kernel/postinst.d/dracut.distrib --add /etc/kernel/postinst.d/dracut'
    --essential-hook='mkdir -p "$1/etc/kernel/postinst.d" && printf "#!/bin/sh\nexit 0\n" > "$1/etc/kernel/postinst.d/dracut" && chmod 755 "$1/etc/kernel/postinst.d/dracut"'
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
)
# <<< boot-tree
boot_stamp="$(stamp boot-tree "$BOOT_PACKAGES")" || boot_stamp=""
root_stamp="$(stamp root-tree "$ROOT_PACKAGES")" || root_stamp=""
if [ -z "$boot_stamp" ] || [ -z "$root_stamp" ]; then
    if [ -s "$OUT/rootfs.squashfs" ] && [ -s "$OUT/initrd-ignition.img" ] && [ -s "$OUT/initrd.img" ]; then
        say "apt knows no version of some packages (apt-get update?): keeping the live system built before"
        exit 0
    fi
    unavailable "apt knows no candidate version of: $BOOT_PACKAGES / $ROOT_PACKAGES (apt-get update? this machine's apt sources must serve $SUITE)"
fi
rm -f "$OUT/unavailable"

if fresh "$CACHE/boot.tar" "$CACHE/boot.stamp" "$boot_stamp"; then
    say "initramfs build tree: cached"
else
    debstrap boot "$BOOT_PACKAGES" "${BOOT_TREE_OPTS[@]}"
    echo "$boot_stamp" > "$CACHE/boot.stamp"
fi

# ---------------------------------------------------------------- kernel and initramfs images
# dracut's `network` module picks its handler from the modules already included; Debian's ignition
# dracut module (30ignition) pulls network in at 30, before 35network-legacy, so systemd-networkd
# would be chosen, and dracut 059 with it never fetches root=live:http://. So: network-legacy first,
# Ignition left out, and for initrd-ignition.img added late (95ignition-late, a link to 30ignition,
# made after the generic image is built: the module includes itself wherever it is). zstd's level 3,
# not dracut's 15: a few MB more, minutes less to build on a busy machine.
DRACUT_CONF='hostonly="no"
hostonly_cmdline="no"
compress="zstd -q -T0 -3"
add_dracutmodules+=" dmsquash-live livenet network network-legacy nbd-live "
omit_dracutmodules+=" ignition "
'
# dracut 059's live overlay: sysroot.mount runs before dmsquash-live's hook has made the overlay's
# directories ("failed to resolve '/run/overlayfs'"); the mount later succeeds, but Ignition's files
# stage would have run on an empty /sysroot. Made before the mount.
OVERLAY_HOOK='#!/bin/sh
mkdir -m 0755 -p /run/overlayfs /run/ovlwork'
NBD_MODULE_SETUP='#!/bin/bash
check() { return 255; }
depends() { return 0; }
install() { inst_hook pre-mount 10 "$moddir/overlay-dirs.sh"; }'
# Debian's Ignition relabels for SELinux after writing files; without SELinux there is no setfiles
# and it fails ("failed to handle relabeling"): a no-op one in the Ignition image.
SETFILES_NOOP='#!/bin/sh
exit 0'
initrd_stamp="$({ echo "$boot_stamp"; cat "$SELF"; } | sha256sum | cut -d' ' -f1)"
if fresh "$OUT/vmlinuz" "$OUT/initrd.img" "$OUT/initrd-ignition.img" "$OUT/initrd.stamp" "$initrd_stamp"; then
    say "kernel and initramfs images: cached"
else
    say "unpacking the initramfs build tree"
    tree="$(unpack boot)"; temps+=("$tree")
    printf '%s' "$DRACUT_CONF" > "$tree/etc/dracut.conf.d/90-netbootd-live.conf"
    mods="$tree/usr/lib/dracut/modules.d"
    mkdir -p "$mods/90nbd-live"
    printf '%s\n' "$NBD_MODULE_SETUP" > "$mods/90nbd-live/module-setup.sh"
    printf '%s\n' "$OVERLAY_HOOK" > "$mods/90nbd-live/overlay-dirs.sh"
    chmod 755 "$mods/90nbd-live/"*
    [ -d "$mods/30ignition" ] || die "the ignition package has no dracut module 30ignition"
    printf '%s\n' "$SETFILES_NOOP" > "$tree/setfiles-noop"
    chmod 755 "$tree/setfiles-noop"
    kver="$(ls "$tree/lib/modules")"
    [ "$(echo "$kver" | wc -l)" = 1 ] || die "expected one kernel in the build tree, found: $kver"
    # dracut in the tree, /proc /sys /dev bound in a mount namespace of its own (gone when it ends)
    in_tree() {
        unshare --mount --propagation private sh -c '
            tree="$1"; shift
            for d in proc sys dev; do mount --rbind "/$d" "$tree/$d"; done
            exec chroot "$tree" "$@"' sh "$tree" "$@"
    }
    say "dracut: initrd.img (kernel $kver)"
    # not /initrd.img: the kernel's package made that a link into /boot
    in_tree dracut --force --no-hostonly --no-hostonly-cmdline /nbd-initrd.img "$kver" >"$CACHE/dracut.log" 2>&1 \
        || { tail -20 "$CACHE/dracut.log" >&2; die "dracut failed: $CACHE/dracut.log"; }
    say "dracut: initrd-ignition.img"
    ln -sfn 30ignition "$mods/95ignition-late"
    in_tree dracut --force --no-hostonly --no-hostonly-cmdline -a ignition-late \
        --include /setfiles-noop /usr/sbin/setfiles /nbd-initrd-ignition.img "$kver" >"$CACHE/dracut-ignition.log" 2>&1 \
        || { tail -20 "$CACHE/dracut-ignition.log" >&2; die "dracut (Ignition) failed: $CACHE/dracut-ignition.log"; }
    included() { grep -q "Including module: $1 \*\*\*" "$2"; }
    for m in dmsquash-live livenet network-legacy nbd-live; do
        included "$m" "$CACHE/dracut.log" || die "dracut left out the module $m: $CACHE/dracut.log"
        included "$m" "$CACHE/dracut-ignition.log" || die "dracut left out the module $m: $CACHE/dracut-ignition.log"
    done
    ! included 'ignition[-a-z]*' "$CACHE/dracut.log" || die "the generic initrd.img includes Ignition: $CACHE/dracut.log"
    included ignition-late "$CACHE/dracut-ignition.log" || die "dracut left Ignition out of initrd-ignition.img: $CACHE/dracut-ignition.log"
    cp "$tree/boot/vmlinuz-$kver" "$OUT/vmlinuz.tmp"
    mv "$tree/nbd-initrd.img" "$OUT/initrd.img.tmp"
    mv "$tree/nbd-initrd-ignition.img" "$OUT/initrd-ignition.img.tmp"
    for f in vmlinuz initrd.img initrd-ignition.img; do chmod 644 "$OUT/$f.tmp"; mv -T "$OUT/$f.tmp" "$OUT/$f"; done
    chroot "$tree" dpkg-query -W -f '${Package} ${Version}\n' > "$CACHE/boot.packages"
    echo "$initrd_stamp" > "$OUT/initrd.stamp"
    rm -rf "$tree"
fi

# ---------------------------------------------------------------- the live root
# >>> root-tree
ROOT_TREE_OPTS=(
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*'
)
# <<< root-tree
if fresh "$CACHE/root.tar" "$CACHE/root.stamp" "$root_stamp"; then
    say "live root tree: cached"
else
    debstrap root "$ROOT_PACKAGES" "${ROOT_TREE_OPTS[@]}"
    echo "$root_stamp" > "$CACHE/root.stamp"
fi

NBD_LIVE_SERVICE='[Unit]
Description=netbootd live system: its marker, or the installer (nbd_install=)
After=systemd-user-sessions.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/nbd-live
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target'
NBD_LIVE='#!/bin/bash
# netbootd live system: what the kernel command line says to do. The network is up already (the
# initramfs configured it to fetch this root).
set -uo pipefail
cmdline="$(cat /proc/cmdline)"
# arg NAME: the value of NAME= on the command line (a URL keeps its own `=` and `&`)
arg() {
    local word
    set -f
    for word in $cmdline; do
        case "$word" in "$1="*) printf "%s\n" "${word#*=}"; set +f; return 0 ;; esac
    done
    set +f
    return 1
}
say() { echo "$*" > /dev/console; }
install="$(arg nbd_install || true)"
if [ -z "$install" ]; then
    say "NETBOOTD-LIVE-OK nbd_marker=$(arg nbd_marker || true) kernel=$(uname -r)"
    exit 0
fi

# The installer: the gzip'"'"'d raw disk image at nbd_install= onto nbd_disk= (/dev/vda), then nbd_done=.
done_url="$(arg nbd_done || true)"
failed_url="$(arg nbd_failed || true)"
failed() {
    say "NETBOOTD-INSTALL-FAILED $*"
    [ -z "$failed_url" ] || curl -fsS --retry 5 --retry-all-errors -d "status=failed" --data-urlencode "reason=$*" "$failed_url" >/dev/null
    sync; systemctl reboot --force --force
}
disk="$(arg nbd_disk || echo /dev/vda)"
for i in $(seq 50); do [ -b "$disk" ] && break; sleep 0.2; done
[ -b "$disk" ] || failed "no disk $disk"
say "nbd-install: writing $install to $disk"
curl -fsS --retry 5 --retry-all-errors "$install" | gunzip | dd of="$disk" bs=1M conv=fsync status=none \
    || failed "writing $install to $disk failed"
if [ -n "$done_url" ]; then
    curl -fsS --retry 10 --retry-all-errors -d status=done "$done_url" >/dev/null || failed "$done_url not reached"
fi
say "NETBOOTD-INSTALL-DONE disk=$disk"
sync
systemctl reboot --force --force'
AUTOLOGIN='[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM'
# Debian's Ignition relabels written files for SELinux unless the root says it is disabled
SELINUX_CONFIG='SELINUX=disabled
SELINUXTYPE=default'
squash_stamp="$({ echo "$root_stamp"; cat "$SELF"; } | sha256sum | cut -d' ' -f1)"
if fresh "$OUT/rootfs.squashfs" "$OUT/rootfs.stamp" "$squash_stamp"; then
    say "rootfs.squashfs: cached"
else
    say "unpacking the live root tree"
    tree="$(unpack root)"; temps+=("$tree")
    mkdir -p "$tree/etc/systemd/system/multi-user.target.wants"
    printf '%s\n' "$NBD_LIVE_SERVICE" > "$tree/etc/systemd/system/nbd-live.service"
    ln -sf /etc/systemd/system/nbd-live.service "$tree/etc/systemd/system/multi-user.target.wants/nbd-live.service"
    mkdir -p "$tree/usr/local/sbin" "$tree/etc/systemd/system/serial-getty@ttyS0.service.d" "$tree/etc/selinux"
    printf '%s\n' "$NBD_LIVE" > "$tree/usr/local/sbin/nbd-live"
    chmod 755 "$tree/usr/local/sbin/nbd-live"
    printf '%s\n' "$AUTOLOGIN" > "$tree/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
    printf '%s\n' "$SELINUX_CONFIG" > "$tree/etc/selinux/config"
    echo netbootd-live > "$tree/etc/hostname"
    # every boot of a live system is its first: systemd makes a new machine id and applies the
    # presets (enabling only), as Ignition's `"enabled": true` units expect
    echo uninitialized > "$tree/etc/machine-id"
    # ...but not systemd-networkd's: the initramfs configured the network (dhclient), it stays up
    mkdir -p "$tree/etc/systemd/system-preset"
    printf 'disable systemd-networkd.*\ndisable systemd-network-generator.service\n' \
        > "$tree/etc/systemd/system-preset/10-netbootd-live.preset"
    passwd -R "$tree" -d root >/dev/null  # autologin; a live test system, no password
    rm -rf "$tree/var/cache/apt/"* "$tree/var/lib/apt/lists/"*
    chroot "$tree" dpkg-query -W -f '${Package} ${Version}\n' > "$CACHE/root.packages"
    say "mksquashfs rootfs.squashfs (xz)"
    mksquashfs "$tree" "$OUT/rootfs.squashfs.tmp" -comp xz -noappend -quiet -no-progress >"$CACHE/mksquashfs.log" 2>&1 \
        || { cat "$CACHE/mksquashfs.log" >&2; die "mksquashfs failed"; }
    mv "$OUT/rootfs.squashfs.tmp" "$OUT/rootfs.squashfs"
    echo "$squash_stamp" > "$OUT/rootfs.stamp"
    rm -rf "$tree"
fi

{ echo "# initramfs build tree"; cat "$CACHE/boot.packages" 2>/dev/null; echo "# live root"; cat "$CACHE/root.packages" 2>/dev/null; } > "$OUT/packages.txt"
say "ready in $OUT: $(cd "$OUT" && for f in vmlinuz initrd.img initrd-ignition.img rootfs.squashfs; do printf '%s %s  ' "$f" "$(du -h "$f" | cut -f1)"; done)"
