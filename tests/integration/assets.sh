#!/usr/bin/env bash
# Build what the QEMU boot tests boot: a kernel from Debian's linux-image package and a busybox
# initramfs that prints a marker line and powers off (or, with nbd_install=, writes a disk image to the
# machine's disk and reboots), and a small disk image that boots by itself (disk.img.gz), for x86-64
# and for arm64. Idempotent; everything is cached in tests/integration/.assets/ (gitignored), arm64
# in its arm64/ directory.
#
# x86-64: needs apt-get (to download the kernel package, no install), dpkg-deb, busybox-static, cpio
# and gzip; for the Secure Boot UKIs also systemd-boot-efi, binutils, sbsigntool, openssl and ovmf
# (their keys); for the test disk fdisk (sfdisk), dosfstools, mtools, syslinux, syslinux-common and
# systemd-boot-efi.
# arm64: Debian's arm64 packages (kernel, busybox-static, systemd-boot-efi's stub, shim-signed,
# grub-efi-arm64-signed) are downloaded, not installed, through package lists of their own in
# .assets/arm64/apt (the host's apt sources, arm64 only: the host needs no `dpkg --add-architecture`),
# and so is debian-installer-12-netboot-arm64 (the installer's netboot kernel and initrd);
# the arm64 UKI needs binutils-aarch64-linux-gnu; the arm64 iPXE comes from deploy/ipxe-arm64.sh
# (Debian 13's ipxe package). When arm64 cannot be built only the arm64 tests skip (under CI they
# fail): .assets/arm64/unavailable says why.
#
# Usage: tests/integration/assets.sh [--force]
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="$HERE/.assets"
ARM64="$OUT/arm64"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

# The kernel modules the guest needs for its NIC (virtio-net-pci), in no particular order; their
# dependencies are resolved from each module's own `depends=` field (no modules.dep in the .deb).
ROOT_MODULES="virtio_pci virtio_net"
# ...and those the installer (nbd_install=, below) loads for the disk it writes: virtio-blk (/dev/vda)
# only. /dev/sda (AHCI, SCSI) would need libata or scsi_mod + sd_mod: about 600 KB more initramfs.
DISK_MODULES="virtio_blk"
BUSYBOX="${BUSYBOX:-$(command -v busybox || echo /bin/busybox)}"

die() { echo "assets.sh: $*" >&2; exit 1; }
temps=()
trap 'rm -rf "${temps[@]}"' EXIT

mkdir -p "$OUT"
if command -v flock >/dev/null; then  # two test runs at once: one builds, the other waits
    exec 9>"$OUT/.lock"
    flock 9
fi

# ================================================================ shared by the architectures
# apt-get and apt-cache run with "${APT_OPTS[@]}": nothing for the host's own package lists, the
# private arm64 lists for arm64.
APT_OPTS=()

# The versioned kernel package a metapackage (linux-image-amd64) depends on: the name changes with
# Debian's updates. Without an answer from apt, the one cached in $out/kernel.pkg.
kernel_package() {
    local out="$1" meta="$2" pkg=""
    if command -v apt-cache >/dev/null; then
        pkg="$(apt-cache "${APT_OPTS[@]}" depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    fi
    if [ -z "$pkg" ]; then
        [ -s "$out/kernel.pkg" ] || die "cannot resolve $meta's kernel package (run apt-get update?)"
        pkg="$(cat "$out/kernel.pkg")"
        echo "assets.sh: apt-cache gave no kernel package; using the cached $pkg" >&2
    fi
    echo "$pkg"
}

# apt-get download PACKAGE... into the directory $1.
apt_download() {
    local dir="$1"; shift
    (cd "$dir" && apt-get "${APT_OPTS[@]}" download -q "$@" >/dev/null 2>"$dir/apt.err") \
        || { cat "$dir/apt.err" >&2; die "apt-get download $* failed"; }
}

# The COFF machine of a PE image (aa64, 8664), or nothing when the file is not one. od only: the
# host's binutils may not know the other architecture's PE format.
pe_machine() {
    local file="$1" at
    [ "$(head -c 2 "$file")" = MZ ] || return 0
    at="$(od -An -tu4 -j 60 -N 4 "$file" | tr -d ' ')"
    [ "$(od -An -c -j "$at" -N 4 "$file" | tr -d ' ')" = 'PE\0\0' ] || return 0
    od -An -tx2 -j $((at + 4)) -N 2 "$file" | tr -d ' '
}

# $out/vmlinuz and $out/modules/ (the NIC's and the disk's modules, their load orders) from the kernel package $pkg;
# the kernel must be an EFI PE for $machine (firmware and GRUB boot it as one).
kernel_assets() {
    local out="$1" pkg="$2" machine="$3" work deb vmlinuz kdir ko name m
    if [ "$FORCE" = 0 ] && [ -s "$out/vmlinuz" ] && [ -d "$out/modules" ] && [ "$(cat "$out/kernel.pkg" 2>/dev/null)" = "$pkg" ] \
            && [ "$(cat "$out/modules/roots" 2>/dev/null)" = "$ROOT_MODULES; $DISK_MODULES" ]; then
        return 0
    fi
    echo "assets.sh: fetching $pkg"
    work="$(mktemp -d "$out/.work.XXXXXX")"
    temps+=("$work")
    apt_download "$work" "$pkg"
    deb="$(ls "$work"/*.deb)"
    mkdir "$work/x"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/x" --wildcards './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/*' './lib/modules/*/kernel/net/core/*'
    vmlinuz="$(ls "$work"/x/boot/vmlinuz-*)"
    kdir="$(ls -d "$work"/x/lib/modules/*)"
    [ "$(pe_machine "$vmlinuz")" = "$machine" ] || die "$(basename "$vmlinuz") of $pkg is not an EFI PE image for machine $machine"

    # Resolve the module sets and a load order (dependencies first) from the `depends=` fields:
    # modules/order (the NIC's), then modules/order.disk (the disk's, less what the NIC's loaded).
    declare -A path_of=() seen=()
    local order=() nic_order=()
    while IFS= read -r ko; do
        name="$(basename "$ko")"; name="${name%.ko*}"
        path_of[${name//-/_}]="$ko"
    done < <(find "$kdir/kernel" -name '*.ko*')
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
    nic_order=("${order[@]}")
    order=()
    for m in $DISK_MODULES; do visit "$m"; done

    rm -rf "$out/modules" "$out/vmlinuz"
    mkdir "$out/modules"
    for m in "${nic_order[@]}" "${order[@]}"; do cp "${path_of[$m]}" "$out/modules/$m.ko"; done
    printf '%s\n' "${nic_order[@]}" > "$out/modules/order"
    printf '%s\n' "${order[@]}" > "$out/modules/order.disk"
    echo "$ROOT_MODULES; $DISK_MODULES" > "$out/modules/roots"
    cp "$vmlinuz" "$out/vmlinuz"
    echo "$pkg" > "$out/kernel.pkg"
    rm -f "$out/initrd.cpio.gz"  # rebuilt with the new modules
    echo "assets.sh: kernel $(basename "$vmlinuz"), modules: ${nic_order[*]}; for the installer's disk: ${order[*]}"
}

# $out/initrd.cpio.gz: $busybox, $out/modules and the one /init both architectures boot (below).
# Rebuilt when this script (the /init lives here), busybox or the modules change.
initramfs_assets() {
    local out="$1" busybox="$2" stamp root
    # contents only: the paths differ with how the script is called (relative, absolute) and with PATH
    stamp="$(cat "$0" "$busybox" "$out"/modules/* | sha256sum | cut -d' ' -f1)"
    if [ "$FORCE" = 0 ] && [ -s "$out/initrd.cpio.gz" ] && [ "$(cat "$out/initrd.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    [ -x "$busybox" ] || die "busybox not found (apt-get install busybox-static)"
    if command -v ldd >/dev/null && ! { ldd "$busybox" 2>&1 || true; } | grep -q 'not a dynamic executable'; then
        die "$busybox is dynamically linked; the initramfs needs busybox-static"
    fi
    command -v cpio >/dev/null || die "cpio not found (apt-get install cpio)"
    root="$(mktemp -d "$out/.root.XXXXXX")"
    temps+=("$root")
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,lib/modules}
    cp "$busybox" "$root/bin/busybox"
    cp "$out"/modules/*.ko "$out/modules/order" "$out/modules/order.disk" "$root/lib/modules/"

    cat > "$root/init" <<'INIT'
#!/bin/busybox sh
# netbootd integration test guest: report what this machine received, then power off. With
# nbd_install= on its command line it is an installer instead (below): it writes that disk image to
# the machine's disk, reports to nbd_done= (or, when anything fails, nbd_failed=) and reboots.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
dmesg -n 1
say() { echo "$*" > /dev/console 2>/dev/null || echo "$*"; }
cmdline="$(cat /proc/cmdline)"
# arg NAME: the value of NAME= on the kernel command line: everything after the first `=` up to the
# next space (a URL keeps its own `=` and `&`). Status 1 when NAME= is not there.
arg() {
    local word value="" found=1
    set -f  # the words are not file name patterns (a URL may hold `?` or `*`)
    for word in $cmdline; do
        case "$word" in "$1="*) value="${word#*=}"; found=0; break ;; esac
    done
    set +f
    printf '%s\n' "$value"
    return $found
}
url="$(arg nbd_ign)"
install="$(arg nbd_install)"
done_url="$(arg nbd_done)"
failed_url="$(arg nbd_failed)"
fail_on_purpose="$(arg nbd_fail)"
[ "$fail_on_purpose" = 0 ] && fail_on_purpose=""
installing=""
[ -n "$install$fail_on_purpose" ] && installing=1
net_up=""

# ---- the installer's reports
# report URL DATA: POST the form DATA to URL; up to 10 tries 2 s apart (a 503 means "not yet"). A
# server that takes GET only (405) gets a GET of URL as it is. Status 0 once one try succeeded.
report() {
    local target="$1" data="$2" i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        # No `wget -T`: it segfaults in Debian 12's busybox-static (1.35.0); `timeout` bounds it.
        timeout 20 wget -q -O /tmp/report.out --post-data="$data" "$target" 2>/tmp/report.err && return 0
        if grep -q ' 405 ' /tmp/report.err; then
            timeout 20 wget -q -O /tmp/report.out "$target" 2>/tmp/report.err && return 0
        fi
        say "nbd-install: $target, try $i of 10: $(tr '\n' ' ' < /tmp/report.err)"
        [ "$i" = 10 ] || sleep 2
    done
    return 1
}
# form TEXT: TEXT as one form-encoded value
form() { printf '%s' "$*" | tr '\n' ' ' | sed 's/%/%25/g; s/&/%26/g; s/=/%3D/g; s/+/%2B/g; s/#/%23/g; s/ /+/g'; }
# install_failed REASON: tell nbd_failed= (once the network is up), say so, reboot.
install_failed() {
    local reason="$*"
    if [ -n "$failed_url" ] && [ -n "$net_up" ]; then
        report "$failed_url" "status=failed&reason=$(form "$reason")" \
            || reason="$reason (nbd_failed= not reached: $(tr '\n' ' ' < /tmp/report.err))"
    fi
    say "NETBOOTD-INSTALL-FAILED $reason"
    sync
    sleep 0.2
    reboot -f
    sleep 60
}
fail() {
    [ -n "$installing" ] && install_failed "$*"
    say "NETBOOT-FAIL $*"; sleep 1; poweroff -f
}

# ---- the network
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
case "${url:-${install:-${failed_url:-$done_url}}}" in
*://\[*)
    # An IPv6 URL: an IPv6-only segment. The kernel configures its address itself (SLAAC, from the
    # router advertisement; Debian's busybox has no DHCPv6 client); wait until it is no longer tentative.
    ip=""
    for i in $(seq 1 150); do
        ip="$(ip -6 -o addr show dev "$iface" scope global | grep -v tentative | sed -n 's/.* inet6 \([^ ]*\).*/\1/p' | head -n1)"
        [ -n "$ip" ] && break
        sleep 0.1
    done
    [ -n "$ip" ] || fail "mac=$mac no IPv6 address within 15 s (SLAAC needs a router advertisement whose prefix has the A flag)"
    ;;
*)
    udhcpc -i "$iface" -n -q -f -t 10 -T 2 -s /etc/udhcpc.script >/tmp/udhcpc.log 2>&1 \
        || fail "mac=$mac no DHCP lease: $(tr '\n' ' ' < /tmp/udhcpc.log)"
    ip="$(ip -4 -o addr show dev "$iface" | sed -n 's/.* inet \([^ ]*\).*/\1/p')"
    ;;
esac
net_up=1

# ---- the installer: nbd_install=<URL of a gzip'd raw disk image> [nbd_done=<URL>] [nbd_failed=<URL>]
# [nbd_disk=<device>] [nbd_fail=1: report a failure without writing anything]
if [ -n "$installing" ]; then
    [ -z "$fail_on_purpose" ] || install_failed "asked to fail (nbd_fail=$fail_on_purpose)"
    for m in $(cat /lib/modules/order.disk); do
        insmod "/lib/modules/$m.ko" || install_failed "insmod $m"
    done
    want="$(arg nbd_disk)"
    disk=""
    for i in $(seq 1 100); do
        for d in ${want:-/dev/vda /dev/sda /dev/nvme0n1}; do
            [ -b "$d" ] && { disk="$d"; break; }
        done
        [ -n "$disk" ] && break
        sleep 0.1
    done
    [ -n "$disk" ] || install_failed "no disk (${want:-/dev/vda, /dev/sda or /dev/nvme0n1}) within 10 s"
    say "nbd-install: mac=$mac ip=$ip writing $install to $disk"
    status=0
    set -o pipefail
    timeout 900 wget -q -O- "$install" 2>/tmp/wget.err | gunzip -c 2>/tmp/gunzip.err | dd of="$disk" bs=1M conv=fsync 2>/tmp/dd.err \
        || status=$?
    set +o pipefail
    if [ "$status" != 0 ]; then
        # the first stage that said why (wget's error also makes gunzip complain about no input)
        why="$(cat /tmp/wget.err)"
        [ -n "$why" ] || why="$(cat /tmp/gunzip.err)"
        [ -n "$why" ] || why="$(grep -v ' records ' /tmp/dd.err)"
        [ -n "$why" ] || why="exit status $status (143: no image within 900 s)"
        install_failed "writing $install to $disk: $(echo "$why" | tr '\n' ' ' | sed 's/ *$//')"
    fi
    sync
    if [ -n "$done_url" ]; then
        report "$done_url" "status=done&disk=$disk" \
            || install_failed "$disk written, but nbd_done= not reached: $(tr '\n' ' ' < /tmp/report.err)"
    fi
    say "NETBOOTD-INSTALL-DONE disk=$disk"
    sleep 0.2
    reboot -f
    sleep 60
fi

# ---- the test guest's report
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
# nbd_reboot_once (the disk tests): a marker in the disk's (/dev/vda) first sector. Not there: write
# it and reboot. There: report it (the disk kept what the earlier power-on wrote) and go on. The
# sector is a BIOS boot sector too: booted from the disk, it prints `NETBOOT-DISK-BOOT NBD-MARK <id>`
# on the serial port and powers the machine off.
case " $cmdline " in *" nbd_reboot_once "*)
    for m in $(cat /lib/modules/order.disk); do
        insmod "/lib/modules/$m.ko" 2>/dev/null || true  # loaded already when nbd_install= came first
    done
    disk=""
    for i in $(seq 1 50); do
        [ -b /dev/vda ] && { disk=/dev/vda; break; }
        sleep 0.1
    done
    [ -n "$disk" ] || fail "mac=$mac nbd_reboot_once: no disk /dev/vda (is virtio_blk loaded?)"
    found="$(head -c 512 "$disk" | tr -c 'A-Za-z0-9 -' '\n' | sed -n 's/^.*NBD-MARK \([0-9a-f-]\{36\}\).*$/\1/p' | head -n1)"
    if [ -z "$found" ]; then
        mark="$(cat /proc/sys/kernel/random/uuid)"
        # 16-bit code at 0x7c00: cli; ds=0; si=0x7c1d (the text after it); each byte out to COM1
        # (0x3f8) up to the NUL; ACPI power off (0x2000 to PM1a_CNT, 0x604, as SeaBIOS sets it); hlt
        code='\372\061\300\216\330\276\035\174\254\204\300\164\006\272\370\003\356\353\365\272\004\006\270\000\040\357\364\353\375'
        { printf "$code"; printf 'NETBOOT-DISK-BOOT NBD-MARK %s\r\n\000' "$mark"; } > /tmp/code
        { dd if=/tmp/code bs=510 count=1 conv=sync 2>/dev/null; printf '\125\252'; } > /tmp/sector
        dd if=/tmp/sector of="$disk" bs=512 count=1 conv=notrunc,fsync 2>/dev/null \
            || fail "mac=$mac nbd_reboot_once: cannot write $disk"
        sync
        say "NETBOOT-DISK wrote=$mark, rebooting"
        sleep 0.2
        reboot -f
    fi
    say "NETBOOT-DISK found=$found"
    ;;
esac
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

    (cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -9n) > "$out/initrd.cpio.gz.tmp"
    mv "$out/initrd.cpio.gz.tmp" "$out/initrd.cpio.gz"
    echo "$stamp" > "$out/initrd.stamp"
    echo "assets.sh: initramfs $(du -h "$out/initrd.cpio.gz" | cut -f1) ($out)"
}

# $dest: a UKI (unsigned) of $out/vmlinuz + $out/initrd.cpio.gz + $cmdline in systemd-boot's $stub,
# put together with that architecture's objdump/objcopy (binutils: a PE for another CPU needs its
# cross binutils).
build_uki() {
    local stub="$1" objdump="$2" objcopy="$3" cmdline="$4" out="$5" dest="$6" work end idx sz vma section name file path
    work="$(mktemp -d "$out/.uki.XXXXXX")"
    temps+=("$work")
    printf 'NAME="netbootd test guest"\nID=netbootd-test\n' > "$work/os-release"
    printf '%s' "$cmdline" > "$work/cmdline"
    # Each section at the next 64 KiB boundary after the stub's last section and the one before,
    # so nothing overlaps whatever the stub's and the kernel's sizes.
    align() { echo $(( ($1 + 0xffff) & ~0xffff )); }
    end=0
    while read -r idx _ sz vma _; do  # objdump -h rows: Idx Name Size VMA LMA File-off Algn
        [[ "$idx" =~ ^[0-9]+$ ]] && (( 0x$vma + 0x$sz > end )) && end=$(( 0x$vma + 0x$sz ))
    done < <("$objdump" -h "$stub")
    [ "$end" -gt 0 ] || die "cannot read the sections of $stub ($objdump -h)"
    local args=()
    for section in osrel:os-release cmdline:cmdline linux:vmlinuz initrd:initrd.cpio.gz; do
        name="${section%%:*}"; file="${section#*:}"
        [ -f "$work/$file" ] && path="$work/$file" || path="$out/$file"
        vma="$(align "$end")"
        args+=(--add-section ".$name=$path" --change-section-vma ".$name=$(printf '0x%x' "$vma")")
        end=$(( vma + $(stat -c %s "$path") ))
    done
    "$objcopy" "${args[@]}" "$stub" "$dest"
}

# ---------------------------------------------------------------- the test disk (provisioning tests)
# $out/disk.img.gz, and $out/disk.img.size (its size unpacked, in bytes): a raw disk image that boots
# from itself alone, for the provisioning tests (the installer in the /init above writes it to a
# machine's disk; the machine then boots its disk). MBR, one active FAT32 partition (type EF) with
# $out/vmlinuz and an initramfs of the disk's own (not the network one: its /init touches no network)
# whose /init prints `NETBOOTD-DISK-OK firmware=<bios|uefi> disk_marker=<disk_marker= of its command
# line>` and powers off. UEFI: systemd-boot ($efi_loader) as EFI/BOOT/$efi_name with one entry
# (disk_marker=systemd-boot); BIOS ($bios = syslinux; x86-64 only): syslinux's MBR and boot sector
# and syslinux.cfg (disk_marker=syslinux). Built without mounting anything (sfdisk, mkfs.vfat,
# mtools, syslinux's mtools installer); rebuilt when an input changes.
DISK_MIB=64
SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin
disk_assets() {
    local out="$1" busybox="$2" console="$3" efi_loader="$4" efi_name="$5" bios="$6" stamp work root part started=$SECONDS
    stamp="$( { cat "$out/vmlinuz" "$busybox" "$efi_loader"
                if [ -n "$bios" ]; then cat "$SYSLINUX_MBR" "$(command -v syslinux)"; fi
                echo "$console $efi_name $bios $DISK_MIB"; sed -n '/^disk_assets()/,/^}$/p' "$0"; } | sha256sum | cut -d' ' -f1)"
    if [ "$FORCE" = 0 ] && [ -s "$out/disk.img.gz" ] && [ -s "$out/disk.img.size" ] && [ "$(cat "$out/disk.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    work="$(mktemp -d "$out/.disk.XXXXXX")"
    temps+=("$work")
    root="$work/root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev}
    cp "$busybox" "$root/bin/busybox"
    cat > "$root/init" <<'INIT'
#!/bin/busybox sh
# The test disk's own system (tests/integration/assets.sh): no network, nothing from netbootd. It says
# which firmware started it and its boot entry's disk_marker=, then powers off.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
dmesg -n 1
firmware=bios
[ -d /sys/firmware/efi ] && firmware=uefi
marker=""
set -f
for word in $(cat /proc/cmdline); do
    case "$word" in disk_marker=*) marker="${word#*=}" ;; esac
done
echo "NETBOOTD-DISK-OK firmware=$firmware disk_marker=$marker" > /dev/console
sleep 0.2
poweroff -f
INIT
    chmod 755 "$root/init"
    (cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -9n) > "$work/initrd.gz"

    local args="console=$console panic=-1"
    printf 'timeout 0\ndefault netbootd-disk.conf\neditor no\n' > "$work/loader.conf"
    printf 'title netbootd test disk\nlinux /vmlinuz\ninitrd /initrd.gz\noptions %s disk_marker=systemd-boot\n' "$args" > "$work/entry.conf"
    printf 'SERIAL 0 115200\nDEFAULT netbootd-disk\nPROMPT 0\nTIMEOUT 0\nLABEL netbootd-disk\n  LINUX /vmlinuz\n  INITRD /initrd.gz\n  APPEND %s disk_marker=syslinux\n' \
        "$args" > "$work/syslinux.cfg"

    # The partition: from 1 MiB to the end (hidden sectors 2048: syslinux's boot sector reads its
    # partition's offset there), a fixed volume id.
    part="$work/part.img"
    mkfs.vfat -F 32 -s 1 -S 512 -h 2048 -n NBDDISK -i 6e626464 -C "$part" $(( (DISK_MIB - 1) * 1024 )) >/dev/null \
        || die "mkfs.vfat failed"
    export MTOOLS_SKIP_CHECK=1
    mmd -i "$part" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
    mcopy -i "$part" "$out/vmlinuz" ::/vmlinuz
    mcopy -i "$part" "$work/initrd.gz" ::/initrd.gz
    mcopy -i "$part" "$efi_loader" "::/EFI/BOOT/$efi_name"
    mcopy -i "$part" "$work/loader.conf" ::/loader/loader.conf
    mcopy -i "$part" "$work/entry.conf" ::/loader/entries/netbootd-disk.conf
    if [ -n "$bios" ]; then
        mcopy -i "$part" "$work/syslinux.cfg" ::/syslinux.cfg
        syslinux --install "$part" || die "syslinux --install failed"
    fi

    truncate -s "${DISK_MIB}M" "$work/disk.img"
    printf 'label: dos\nlabel-id: 0x6e626464\nstart=2048, type=ef, bootable\n' | sfdisk -q "$work/disk.img" >/dev/null \
        || die "sfdisk failed"
    if [ -n "$bios" ]; then
        dd if="$SYSLINUX_MBR" of="$work/disk.img" bs=440 count=1 conv=notrunc status=none
    fi
    dd if="$part" of="$work/disk.img" bs=1M seek=1 conv=notrunc,sparse status=none
    gzip -9n < "$work/disk.img" > "$work/disk.img.gz"
    stat -c %s "$work/disk.img" > "$out/disk.img.size"
    mv "$work/disk.img.gz" "$out/disk.img.gz"
    echo "$stamp" > "$out/disk.stamp"
    echo "assets.sh: test disk $out/disk.img.gz $(du -h "$out/disk.img.gz" | cut -f1) (${DISK_MIB} MiB unpacked;" \
         "UEFI systemd-boot${bios:+, BIOS $bios}) in $((SECONDS - started)) s"
}

# ================================================================ x86-64
pkg="$(kernel_package "$OUT" linux-image-amd64)"
kernel_assets "$OUT" "$pkg" 8664
initramfs_assets "$OUT" "$BUSYBOX"

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
                    echo "$UKI_CMDLINE"; sed -n '/^build_uki()/,/^}$/p;/^# -* the UKIs/,/^fi$/p' "$0"; } | sha256sum | cut -d' ' -f1)"
    if [ "$FORCE" = 1 ] || [ ! -s "$OUT/uki-signed.efi" ] || [ ! -s "$OUT/uki-unsigned.efi" ] \
            || [ "$(cat "$OUT/uki.stamp" 2>/dev/null)" != "$uki_stamp" ]; then
        work="$(mktemp -d "$OUT/.sign.XXXXXX")"
        temps+=("$work")
        chmod 700 "$work"  # the decrypted key lives here until the EXIT trap removes it
        build_uki "$UKI_STUB" objdump objcopy "$UKI_CMDLINE" "$OUT" "$work/uki-unsigned.efi"
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

# ---------------------------------------------------------------- the test disk
DISK_EFI_LOADER="${DISK_EFI_LOADER:-/usr/lib/systemd/boot/efi/systemd-bootx64.efi}"
# Packages the test disk needs, for the architecture's EFI loader $1 (and syslinux for BIOS: $2).
disk_missing() {
    local missing=""
    [ -f "$1" ] || missing+=" systemd-boot-efi"
    command -v sfdisk >/dev/null || missing+=" fdisk"
    command -v mkfs.vfat >/dev/null || missing+=" dosfstools"
    command -v mcopy >/dev/null && command -v mmd >/dev/null || missing+=" mtools"
    if [ -n "${2:-}" ]; then
        command -v syslinux >/dev/null || missing+=" syslinux"
        [ -f "$SYSLINUX_MBR" ] || missing+=" syslinux-common"
    fi
    echo "$missing"
}
disk_missing="$(disk_missing "$DISK_EFI_LOADER" syslinux)"
if [ -n "$disk_missing" ]; then
    rm -f "$OUT/disk.img.gz" "$OUT/disk.img.size" "$OUT/disk.stamp"
    echo "assets.sh: no test disk (the disk tests skip): apt-get install$disk_missing"
else
    disk_assets "$OUT" "$BUSYBOX" ttyS0 "$DISK_EFI_LOADER" BOOTX64.EFI syslinux
fi

# ================================================================ arm64
# In .assets/arm64: vmlinuz (Debian's signed kernel), modules/, initrd.cpio.gz (the same /init),
# uki.efi (unsigned, in linuxaa64.efi.stub), shimaa64.efi.signed and grubnetaa64.efi.signed (for
# netbootd's grub.arm64_shim / arm64_grub), ipxe/ipxe-arm64.efi (deploy/ipxe-arm64.sh), disk.img.gz
# (the test disk, UEFI only: systemd-bootaa64.efi from systemd-boot-efi), d-i/linux and d-i/initrd.gz
# (the Debian installer's netboot kernel and initrd, below).
ARM64_UKI_CMDLINE="console=ttyAMA0 panic=-1 nbd_uki=1"
ARM64_LOADERS="busybox-static systemd-boot-efi shim-signed grub-efi-arm64-signed"
# package:path of each file taken from them
ARM64_FILES="busybox-static:bin/busybox systemd-boot-efi:usr/lib/systemd/boot/efi/linuxaa64.efi.stub
shim-signed:usr/lib/shim/shimaa64.efi.signed grub-efi-arm64-signed:usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed
systemd-boot-efi:usr/lib/systemd/boot/efi/systemd-bootaa64.efi"

# The Debian installer's arm64 netboot kernel and initrd (text frontend), as the package installs
# them on an arm64 host (its files are arch "all": an amd64 host could install it, but the tests need
# no root-owned install). In $ARM64/d-i, with d-i/package ("package version"); downloaded again only
# when apt's candidate version differs (the .deb is 128 MB). A failure here leaves the other arm64
# assets standing: d-i.unavailable says why, and only the installer test skips.
ARM64_DI_PACKAGE=debian-installer-12-netboot-arm64
ARM64_DI_PATH=usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64
di_assets() {
    temps=()
    trap 'rm -rf "${temps[@]}"' EXIT  # a subshell (below)
    local dir="$ARM64/d-i" version work deb
    version="$(apt-cache "${APT_OPTS[@]}" policy "$ARM64_DI_PACKAGE" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    [ "$version" != "(none)" ] || version=""
    if [ "$FORCE" = 0 ] && [ -s "$dir/linux" ] && [ -s "$dir/initrd.gz" ] && [ -s "$dir/package" ] \
            && { [ -z "$version" ] || [ "$(cat "$dir/package")" = "$ARM64_DI_PACKAGE $version" ]; }; then
        return 0  # current, or apt knows no version (offline lists): the cached files serve
    fi
    [ -n "$version" ] || die "apt knows no $ARM64_DI_PACKAGE in the arm64 package lists ($ARM64/apt/update.log)"
    echo "assets.sh: fetching $ARM64_DI_PACKAGE $version"
    work="$(mktemp -d "$ARM64/.d-i.XXXXXX")"
    temps+=("$work")
    apt_download "$work" "$ARM64_DI_PACKAGE"
    deb="$(ls "$work"/*.deb)"
    mkdir "$work/x"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/x" "./$ARM64_DI_PATH/linux" "./$ARM64_DI_PATH/initrd.gz" \
        || die "$ARM64_DI_PACKAGE $version has no /$ARM64_DI_PATH/linux and initrd.gz"
    [ "$(pe_machine "$work/x/$ARM64_DI_PATH/linux")" = aa64 ] || die "$ARM64_DI_PACKAGE's linux is not an arm64 EFI PE image"
    rm -rf "$dir"
    mkdir "$work/d-i"
    mv "$work/x/$ARM64_DI_PATH/linux" "$work/x/$ARM64_DI_PATH/initrd.gz" "$work/d-i/"
    echo "$ARM64_DI_PACKAGE $version" > "$work/d-i/package"
    mv "$work/d-i" "$dir"
    echo "assets.sh: arm64 installer $ARM64_DI_PACKAGE $version: linux $(du -h "$dir/linux" | cut -f1), initrd.gz $(du -h "$dir/initrd.gz" | cut -f1)"
}

arm64_assets() {
    temps=()
    trap 'rm -rf "${temps[@]}"' EXIT  # a subshell: the parent's trap does not run for it
    command -v aarch64-linux-gnu-objcopy >/dev/null && command -v aarch64-linux-gnu-objdump >/dev/null \
        || die "aarch64-linux-gnu-objcopy is missing (apt-get install binutils-aarch64-linux-gnu)"
    command -v apt-get >/dev/null || die "apt-get is missing: Debian's arm64 packages cannot be downloaded"

    # The host's apt sources, arm64 packages only, in lists of our own: refreshed daily (and with
    # --force); when that fails (offline) the last lists serve.
    local apt="$ARM64/apt" work entry pkg file
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
    touch "$apt/status"
    APT_OPTS=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o "Dir::State::Lists=$apt/lists"
              -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt/cache")
    if [ "$FORCE" = 1 ] || [ ! -e "$apt/updated" ] || [ -n "$(find "$apt/updated" -mmin +1440)" ]; then
        # --error-on=any: a mirror that cannot be reached is a failure, not a warning
        if apt-get "${APT_OPTS[@]}" -q --error-on=any update >"$apt/update.log" 2>&1; then
            touch "$apt/updated"
            rm -f "$ARM64/loaders.pkgs"  # new lists: take the loaders again (kept only when unchanged below)
        elif [ -e "$apt/updated" ]; then
            echo "assets.sh: arm64 package lists not refreshed (apt-get update failed; $apt/update.log), using the last ones"
        else
            die "apt-get update of the arm64 package lists failed: $(grep -E '^(E|W): ' "$apt/update.log" | head -1) ($apt/update.log)"
        fi
    fi

    pkg="$(kernel_package "$ARM64" linux-image-arm64)"
    kernel_assets "$ARM64" "$pkg" aa64

    local have_files=1
    for entry in $ARM64_FILES; do [ -s "$ARM64/$(basename "${entry#*:}")" ] || have_files=0; done
    if [ "$FORCE" = 1 ] || ! [ -s "$ARM64/loaders.pkgs" ] || [ "$have_files" = 0 ]; then  # missing, or the lists were refreshed
        work="$(mktemp -d "$ARM64/.loaders.XXXXXX")"
        temps+=("$work")
        # shellcheck disable=SC2086
        apt_download "$work" $ARM64_LOADERS
        mkdir "$work/x"
        for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
        for entry in $ARM64_FILES; do
            file="$work/x/${entry#*:}"
            [ -s "$file" ] || die "${entry%%:*} (arm64) has no /${entry#*:}"
            cp "$file" "$ARM64/$(basename "$file")"
        done
        [ "$(pe_machine "$ARM64/shimaa64.efi.signed")" = aa64 ] && [ "$(pe_machine "$ARM64/grubnetaa64.efi.signed")" = aa64 ] \
            && [ "$(pe_machine "$ARM64/systemd-bootaa64.efi")" = aa64 ] \
            || die "shimaa64.efi.signed / grubnetaa64.efi.signed / systemd-bootaa64.efi are not arm64 EFI binaries"
        for deb in "$work"/*.deb; do dpkg-deb -f "$deb" Package Version | paste -sd' '; done > "$ARM64/loaders.pkgs"
        echo "assets.sh: arm64 $(sed 's/^Package: //; s/ Version: / /' "$ARM64/loaders.pkgs" | paste -sd, | sed 's/,/, /g')"
    fi

    initramfs_assets "$ARM64" "$ARM64/busybox"

    local stub="$ARM64/linuxaa64.efi.stub" uki_stamp
    uki_stamp="$( { cat "$ARM64/vmlinuz" "$ARM64/initrd.cpio.gz" "$stub"; echo "$ARM64_UKI_CMDLINE"
                    sed -n '/^build_uki()/,/^}$/p' "$0"; } | sha256sum | cut -d' ' -f1)"
    if [ "$FORCE" = 1 ] || [ ! -s "$ARM64/uki.efi" ] || [ "$(cat "$ARM64/uki.stamp" 2>/dev/null)" != "$uki_stamp" ]; then
        build_uki "$stub" aarch64-linux-gnu-objdump aarch64-linux-gnu-objcopy "$ARM64_UKI_CMDLINE" "$ARM64" "$ARM64/uki.efi.tmp"
        mv "$ARM64/uki.efi.tmp" "$ARM64/uki.efi"
        echo "$uki_stamp" > "$ARM64/uki.stamp"
        echo "assets.sh: arm64 UKI $(du -h "$ARM64/uki.efi" | cut -f1) (unsigned), cmdline: $ARM64_UKI_CMDLINE"
    fi

    # The test disk: UEFI only (systemd-bootaa64.efi as EFI/BOOT/BOOTAA64.EFI).
    local missing
    missing="$(disk_missing "$ARM64/systemd-bootaa64.efi")"
    if [ -n "$missing" ]; then
        rm -f "$ARM64/disk.img.gz" "$ARM64/disk.img.size" "$ARM64/disk.stamp"
        echo "assets.sh: no arm64 test disk (the arm64 disk tests skip): apt-get install$missing"
    else
        disk_assets "$ARM64" "$ARM64/busybox" ttyAMA0 "$ARM64/systemd-bootaa64.efi" BOOTAA64.EFI ""
    fi

    # The installer (its own subshell: its `die` stops only it).
    set +e
    (set -e; di_assets) 2>"$ARM64/d-i.err"
    local di_status=$?
    set -e
    cat "$ARM64/d-i.err" >&2
    if [ "$di_status" = 0 ]; then
        rm -f "$ARM64/d-i.unavailable"
    else
        { grep '^assets.sh: ' "$ARM64/d-i.err" | tail -1 | sed 's/^assets.sh: //'; } > "$ARM64/d-i.unavailable" || true
        [ -s "$ARM64/d-i.unavailable" ] || echo "exit $di_status: $(tail -1 "$ARM64/d-i.err")" > "$ARM64/d-i.unavailable"
        echo "assets.sh: no arm64 installer (its test skips): $(cat "$ARM64/d-i.unavailable")"
    fi

    # The arm64 iPXE, as an operator gets it: Debian 12 has none.
    if [ "$FORCE" = 1 ] || [ ! -s "$ARM64/ipxe/ipxe-arm64.efi" ]; then
        rm -f "$ARM64/ipxe.unavailable"
        if ! "$HERE/../../deploy/ipxe-arm64.sh" --no-x86 "$ARM64/ipxe" >"$ARM64/ipxe.log" 2>&1; then
            tail -3 "$ARM64/ipxe.log" > "$ARM64/ipxe.unavailable"
            echo "assets.sh: no arm64 iPXE (its tests skip): $(cat "$ARM64/ipxe.unavailable")"
        fi
    fi
}

# A subshell: what stops the arm64 part (its `die`) leaves the x86 assets standing.
mkdir -p "$ARM64"
set +e
(set -e; arm64_assets) 2>"$ARM64/errors.log"
arm64_status=$?
set -e
cat "$ARM64/errors.log" >&2
if [ "$arm64_status" = 0 ]; then
    rm -f "$ARM64/unavailable"
else
    { grep '^assets.sh: ' "$ARM64/errors.log" | tail -1 | sed 's/^assets.sh: //'; } > "$ARM64/unavailable" || true
    [ -s "$ARM64/unavailable" ] || echo "the arm64 part failed (exit $arm64_status): $(tail -1 "$ARM64/errors.log")" > "$ARM64/unavailable"
    echo "assets.sh: no arm64 assets (the arm64 tests skip): $(cat "$ARM64/unavailable")"
fi
echo "assets.sh: ready in $OUT ($(cat "$OUT/kernel.pkg")$([ "$arm64_status" = 0 ] && echo ", $(cat "$ARM64/kernel.pkg")")) after $SECONDS s"
