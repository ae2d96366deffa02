#!/usr/bin/env bash
# Build what the QEMU boot tests boot: a kernel from Debian's linux-image package and a busybox
# initramfs that prints a marker line and powers off. Idempotent; everything is cached in
# tests/integration/.assets/ (gitignored). Needs apt-get (to download the kernel package, no
# install), dpkg-deb, busybox-static, cpio and gzip; for the Secure Boot UKIs also systemd-boot-efi,
# binutils, sbsigntool, openssl and ovmf (their keys). Usage: tests/integration/assets.sh [--force]
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

# ---------------------------------------------------------------- the UKIs (Secure Boot tests)
# The kernel + initramfs above + a command line in systemd-boot's stub: uki-signed.efi signed with
# OVMF's snakeoil key (whose certificate OVMF_VARS_4M.snakeoil.fd trusts), uki-unsigned.efi not
# signed. Rebuilt when an input changes. Without the tools only these two are left out (the
# Secure Boot tests skip, naming the packages).
UKI_STUB="${UKI_STUB:-/usr/lib/systemd/boot/efi/linuxx64.efi.stub}"
SNAKEOIL_KEY=/usr/share/ovmf/PkKek-1-snakeoil.key  # encrypted; its passphrase is "snakeoil"
SNAKEOIL_CERT=/usr/share/ovmf/PkKek-1-snakeoil.pem
UKI_CMDLINE="console=ttyS0 panic=-1 nbd_uki=1"  # no `quiet`: the tests read "Secure boot enabled"

uki_missing=""
[ -f "$UKI_STUB" ] || uki_missing+=" systemd-boot-efi"
command -v objcopy >/dev/null && command -v objdump >/dev/null || uki_missing+=" binutils"
command -v sbsign >/dev/null || uki_missing+=" sbsigntool"
command -v openssl >/dev/null || uki_missing+=" openssl"
[ -f "$SNAKEOIL_KEY" ] && [ -f "$SNAKEOIL_CERT" ] || uki_missing+=" ovmf"
if [ -n "$uki_missing" ]; then
    rm -f "$OUT/uki-signed.efi" "$OUT/uki-unsigned.efi" "$OUT/uki.stamp"
    echo "assets.sh: no UKIs (the Secure Boot tests skip): apt-get install$uki_missing"
else
    uki_stamp="$( { cat "$OUT/vmlinuz" "$OUT/initrd.cpio.gz" "$UKI_STUB" "$SNAKEOIL_CERT"
                    echo "$UKI_CMDLINE"; sed -n '/^# -* the UKIs/,/^fi$/p' "$0"; } | sha256sum | cut -d' ' -f1)"
    if [ "$FORCE" = 1 ] || [ ! -s "$OUT/uki-signed.efi" ] || [ ! -s "$OUT/uki-unsigned.efi" ] \
            || [ "$(cat "$OUT/uki.stamp" 2>/dev/null)" != "$uki_stamp" ]; then
        work="$(mktemp -d "$OUT/.uki.XXXXXX")"
        temps+=("$work")
        chmod 700 "$work"  # the decrypted key lives here until the EXIT trap removes it
        printf 'NAME="netbootd test guest"\nID=netbootd-test\n' > "$work/os-release"
        printf '%s' "$UKI_CMDLINE" > "$work/cmdline"
        # Each section at the next 64 KiB boundary after the stub's last section and the one before,
        # so nothing overlaps whatever the stub's and the kernel's sizes.
        align() { echo $(( ($1 + 0xffff) & ~0xffff )); }
        size() { stat -c %s "$1"; }
        end=0
        while read -r idx _ sz vma _; do  # objdump -h rows: Idx Name Size VMA LMA File-off Algn
            [[ "$idx" =~ ^[0-9]+$ ]] && (( 0x$vma + 0x$sz > end )) && end=$(( 0x$vma + 0x$sz ))
        done < <(objdump -h "$UKI_STUB")
        [ "$end" -gt 0 ] || die "cannot read the sections of $UKI_STUB (objdump -h)"
        args=()
        for section in osrel:os-release cmdline:cmdline linux:vmlinuz initrd:initrd.cpio.gz; do
            name="${section%%:*}"; file="${section#*:}"
            [ -f "$work/$file" ] && path="$work/$file" || path="$OUT/$file"
            vma="$(align "$end")"
            args+=(--add-section ".$name=$path" --change-section-vma ".$name=$(printf '0x%x' "$vma")")
            end=$(( vma + $(size "$path") ))
        done
        objcopy "${args[@]}" "$UKI_STUB" "$work/uki-unsigned.efi"
        openssl rsa -in "$SNAKEOIL_KEY" -passin pass:snakeoil -out "$work/snakeoil.key" 2>/dev/null \
            || die "openssl could not decrypt $SNAKEOIL_KEY with the passphrase snakeoil"
        sbsign --key "$work/snakeoil.key" --cert "$SNAKEOIL_CERT" --output "$work/uki-signed.efi" \
            "$work/uki-unsigned.efi" >/dev/null 2>"$work/sbsign.err" || { cat "$work/sbsign.err" >&2; die "sbsign failed"; }
        rm -f "$work/snakeoil.key"
        sbverify --cert "$SNAKEOIL_CERT" "$work/uki-signed.efi" >/dev/null 2>&1 || die "sbverify rejects the signed UKI"
        mv "$work/uki-unsigned.efi" "$OUT/uki-unsigned.efi"
        mv "$work/uki-signed.efi" "$OUT/uki-signed.efi"
        echo "$uki_stamp" > "$OUT/uki.stamp"
        echo "assets.sh: UKIs $(du -h "$OUT/uki-signed.efi" | cut -f1) (signed with OVMF's snakeoil key, and unsigned), cmdline: $UKI_CMDLINE"
    fi
fi
echo "assets.sh: ready in $OUT ($(cat "$OUT/kernel.pkg"))"
