#!/usr/bin/env bash
# Build what the QEMU boot tests boot: a kernel from Debian's linux-image package and a busybox
# initramfs that prints a marker line and powers off. Idempotent; everything is cached in
# tests/integration/.assets/ (gitignored). Needs apt-get (to download the kernel package, no
# install), dpkg-deb, busybox-static, cpio and gzip. Usage: tests/integration/assets.sh [--force]
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="$HERE/.assets"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

# The kernel modules the guest needs for its NIC (virtio-net-pci), in no particular order; their
# dependencies are resolved from each module's own `depends=` field (no modules.dep in the .deb).
ROOT_MODULES="virtio_pci virtio_net"
BUSYBOX="${BUSYBOX:-$(command -v busybox || echo /bin/busybox)}"

die() { echo "assets.sh: $*" >&2; exit 1; }
temps=()
trap 'rm -rf "${temps[@]}"' EXIT

mkdir -p "$OUT"
if command -v flock >/dev/null; then  # two test runs at once: one builds, the other waits
    exec 9>"$OUT/.lock"
    flock 9
fi

# ---------------------------------------------------------------- the kernel package
pkg=""
if command -v apt-cache >/dev/null; then
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
fi
if [ -z "$pkg" ]; then
    [ -s "$OUT/kernel.pkg" ] || die "cannot resolve linux-image-amd64's kernel package (run apt-get update?)"
    pkg="$(cat "$OUT/kernel.pkg")"
    echo "assets.sh: apt-cache gave no kernel package; using the cached $pkg"
fi

if [ "$FORCE" = 1 ] || [ ! -s "$OUT/vmlinuz" ] || [ ! -d "$OUT/modules" ] || [ "$(cat "$OUT/kernel.pkg" 2>/dev/null)" != "$pkg" ]; then
    echo "assets.sh: fetching $pkg"
    work="$(mktemp -d "$OUT/.work.XXXXXX")"
    temps+=("$work")
    (cd "$work" && apt-get download -q "$pkg" >/dev/null 2>"$work/apt.err") \
        || { cat "$work/apt.err" >&2; die "apt-get download $pkg failed"; }
    deb="$(ls "$work"/*.deb)"
    mkdir "$work/x"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/x" --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/*' './lib/modules/*/kernel/net/core/*'
    vmlinuz="$(ls "$work"/x/boot/vmlinuz-*)"
    kdir="$(ls -d "$work"/x/lib/modules/*)"

    # Resolve the module set and a load order (dependencies first) from the `depends=` fields.
    declare -A path_of=()
    while IFS= read -r ko; do
        name="$(basename "$ko")"; name="${name%.ko*}"
        path_of[${name//-/_}]="$ko"
    done < <(find "$kdir/kernel" -name '*.ko*')
    order=()
    declare -A seen=()
    visit() {
        local m="${1//-/_}" dep deps file
        [ -n "${seen[$m]:-}" ] && return
        seen[$m]=1
        file="${path_of[$m]:-}"
        [ -n "$file" ] || die "module $m is not in $pkg (built in? then drop it from ROOT_MODULES)"
        case "$file" in
            *.ko) deps="$(tr '\0' '\n' < "$file" | sed -n 's/^depends=//p' | head -n1)" ;;
            *) die "compressed module $file: extend assets.sh to decompress it" ;;
        esac
        for dep in ${deps//,/ }; do visit "$dep"; done
        order+=("$m")
    }
    for m in $ROOT_MODULES; do visit "$m"; done

    rm -rf "$OUT/modules" "$OUT/vmlinuz"
    mkdir "$OUT/modules"
    for m in "${order[@]}"; do cp "${path_of[$m]}" "$OUT/modules/$m.ko"; done
    printf '%s\n' "${order[@]}" > "$OUT/modules/order"
    cp "$vmlinuz" "$OUT/vmlinuz"
    echo "$pkg" > "$OUT/kernel.pkg"
    rm -f "$OUT/initrd.cpio.gz"  # rebuilt below with the new modules
    echo "assets.sh: kernel $(basename "$vmlinuz"), modules: ${order[*]}"
fi

# ---------------------------------------------------------------- the busybox initramfs
# Rebuilt when this script changes (the /init below lives here) or the modules changed.
stamp="$(sha256sum "$0" | cut -d' ' -f1)"
if [ "$FORCE" = 1 ] || [ ! -s "$OUT/initrd.cpio.gz" ] || [ "$(cat "$OUT/initrd.stamp" 2>/dev/null)" != "$stamp" ]; then
    [ -x "$BUSYBOX" ] || die "busybox not found (apt-get install busybox-static)"
    if command -v ldd >/dev/null && ! { ldd "$BUSYBOX" 2>&1 || true; } | grep -q 'not a dynamic executable'; then
        die "$BUSYBOX is dynamically linked; the initramfs needs busybox-static"
    fi
    command -v cpio >/dev/null || die "cpio not found (apt-get install cpio)"
    root="$(mktemp -d "$OUT/.root.XXXXXX")"
    temps+=("$root")
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,lib/modules}
    cp "$BUSYBOX" "$root/bin/busybox"
    cp "$OUT"/modules/*.ko "$OUT/modules/order" "$root/lib/modules/"

    cat > "$root/init" <<'INIT'
#!/bin/busybox sh
# netbootd integration test guest: report what this machine received, then power off.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
dmesg -n 1
say() { echo "$*" > /dev/console 2>/dev/null || echo "$*"; }
fail() { say "NETBOOT-FAIL $*"; sleep 1; poweroff -f; }
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done
ip link set lo up
iface=""
for i in $(seq 1 100); do
    for d in /sys/class/net/*; do
        n="${d##*/}"
        [ "$n" = lo ] || { iface="$n"; break; }
    done
    [ -n "$iface" ] && break
    sleep 0.1
done
[ -n "$iface" ] || fail "no network interface (is virtio_net loaded?)"
mac="$(cat "/sys/class/net/$iface/address")"
ip link set "$iface" up
udhcpc -i "$iface" -n -q -f -t 10 -T 2 -s /etc/udhcpc.script >/tmp/udhcpc.log 2>&1 \
    || fail "mac=$mac no DHCP lease: $(tr '\n' ' ' < /tmp/udhcpc.log)"
ip="$(ip -4 -o addr show dev "$iface" | sed -n 's/.* inet \([^ ]*\).*/\1/p')"
cmdline="$(cat /proc/cmdline)"
url=""
for word in $cmdline; do
    case "$word" in nbd_ign=*) url="${word#nbd_ign=}" ;; esac
done
if [ -n "$url" ]; then
    # No `wget -T`: it segfaults in Debian 12's busybox-static (1.35.0); `timeout` bounds it.
    if timeout 20 wget -q -O /tmp/ignition "$url" 2>/tmp/wget.err; then
        body="$(tr '\r\n' '  ' < /tmp/ignition)"
    else
        body="FETCH-FAILED($(tr '\n' ' ' < /tmp/wget.err))"
    fi
else
    body="NO-URL"
fi
say "NETBOOT-OK mac=$mac ip=$ip cmdline=$cmdline ignition=$body"
sleep 0.2
poweroff -f
INIT
    chmod 755 "$root/init"

    cat > "$root/etc/udhcpc.script" <<'SCRIPT'
#!/bin/sh
# udhcpc hook: configure the lease (address, mask, default route).
case "$1" in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
        ;;
    deconfig)
        ip addr flush dev "$interface"
        ;;
esac
exit 0
SCRIPT
    chmod 755 "$root/etc/udhcpc.script"

    (cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -9n) > "$OUT/initrd.cpio.gz.tmp"
    mv "$OUT/initrd.cpio.gz.tmp" "$OUT/initrd.cpio.gz"
    echo "$stamp" > "$OUT/initrd.stamp"
    echo "assets.sh: initramfs $(du -h "$OUT/initrd.cpio.gz" | cut -f1)"
fi
echo "assets.sh: ready in $OUT ($(cat "$OUT/kernel.pkg"))"
