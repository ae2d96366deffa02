#!/usr/bin/env bash
# An arm64 iPXE for netbootd on a Debian 12 boot host.
#
# Debian 12's ipxe package is x86 only; Debian 13's (trixie) ships /usr/lib/ipxe/ipxe-arm64.efi.
# This script downloads that package (apt-get download: nothing is installed, the host's apt
# configuration is not changed) through a throwaway package list for trixie built from this host's
# own apt sources (the same mirrors, the suite replaced), takes ipxe-arm64.efi out of it into TARGET
# (default /usr/local/lib/ipxe), checks that it is an arm64 EFI application, and prints the netbootd
# settings that serve it.
#
# netbootd serves every architecture's iPXE from one directory (tftp.ipxe_dir), so the x86 binaries
# of this host's own ipxe package (undionly.kpxe, snponly.efi) are copied into TARGET as well, unless
# --no-x86: rerun the script after an ipxe upgrade to refresh them.
# This iPXE is not signed for Secure Boot: Secure Boot machines boot shim + GRUB (secure_boot = true).
#
# Usage: deploy/ipxe-arm64.sh [--mirror URI] [--deb FILE] [--no-x86] [TARGET]
#   --mirror URI  a Debian mirror to take trixie from (default: this host's apt sources for its release)
#   --deb FILE    an ipxe .deb from Debian 13 already at hand (no download: for hosts without a mirror)
#   --no-x86      only ipxe-arm64.efi
set -euo pipefail

SUITE=trixie
NAME=ipxe-arm64.efi
X86_DIR=/usr/lib/ipxe
X86_BINARIES="undionly.kpxe snponly.efi"  # netbootd's defaults for ipxe.bios and ipxe.efi64
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

say() { echo "ipxe-arm64.sh: $*"; }
die() { echo "ipxe-arm64.sh: $*" >&2; exit 1; }

mirrors=() deb="" x86=1 target=/usr/local/lib/ipxe
while [ $# -gt 0 ]; do
    case "$1" in
        --mirror) [ $# -ge 2 ] || die "--mirror needs a URI"; mirrors+=("$2"); shift 2 ;;
        --deb) [ $# -ge 2 ] || die "--deb needs a file"; deb="$(realpath "$2")"; shift 2 ;;
        --no-x86) x86=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (--help)" ;;
        *) target="$1"; shift ;;
    esac
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- the package
if [ -z "$deb" ]; then
    command -v apt-get >/dev/null || die "apt-get is missing: download Debian 13's ipxe package elsewhere and pass --deb"
    if [ ${#mirrors[@]} -eq 0 ]; then
        # This host's sources for its own release (not -updates, -security, or third-party suites).
        release="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
        [ -n "$release" ] || die "cannot read this host's release from /etc/os-release: pass --mirror URI"
        mapfile -t mirrors < <(apt-get indextargets --no-release-info --format '$(REPO_URI) $(RELEASE) $(TARGET_OF)' \
                                   2>/dev/null | awk -v r="$release" '$2 == r && $3 == "deb" {print $1}' | sort -u)
        [ ${#mirrors[@]} -gt 0 ] || die "no apt source for $release on this host to take $SUITE from: pass --mirror URI"
    fi
    mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/parts" "$work/download"
    touch "$work/apt/status"
    signed_by=""
    [ -f "$KEYRING" ] && signed_by=" [signed-by=$KEYRING]"
    for uri in "${mirrors[@]}"; do echo "deb$signed_by $uri $SUITE main"; done > "$work/apt/sources.list"
    if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then
        chmod 755 "$work"
        chown -R _apt "$work/apt/lists" "$work/apt/cache" "$work/download"  # apt's download sandbox user
    fi
    apt=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=$work/apt/parts"
         -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=$work/apt/parts"
         -o "Dir::State::Lists=$work/apt/lists" -o "Dir::State::status=$work/apt/status" -o "Dir::Cache=$work/apt/cache")
    say "reading $SUITE's package list from ${mirrors[*]}"
    apt-get "${apt[@]}" -q --error-on=any update >"$work/update.log" 2>&1 \
        || { cat "$work/update.log" >&2; die "apt-get update for $SUITE failed (a mirror that carries $SUITE: --mirror URI)"; }
    (cd "$work/download" && apt-get "${apt[@]}" -q download ipxe >"$work/download.log" 2>&1) \
        || { cat "$work/download.log" >&2; die "apt-get download ipxe from $SUITE failed"; }
    deb="$(ls "$work"/download/ipxe_*.deb)"
fi
[ -f "$deb" ] || die "$deb: no such file"
version="$(dpkg-deb -f "$deb" Package Version | awk '/^Package:/ {p = $2} /^Version:/ {v = $2} END {print p " " v}')"
[ "${version%% *}" = ipxe ] || die "$deb is not an ipxe package ($version)"
version="${version#* }"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" "./usr/lib/ipxe/$NAME" 2>/dev/null \
    || die "ipxe $version has no /usr/lib/ipxe/$NAME (Debian 13's ipxe package has it)"
binary="$work/usr/lib/ipxe/$NAME"

# ---------------------------------------------------------------- is it an arm64 EFI application?
# PE header (offset at 0x3c): "PE\0\0", COFF machine 0xaa64, optional header's Subsystem 10.
u() { od -An -tu"$1" -j "$2" -N "$1" "$binary" | tr -d ' '; }
[ "$(head -c 2 "$binary")" = MZ ] || die "$NAME of ipxe $version is not a PE image"
pe="$(u 4 60)"
[ "$(od -An -c -j "$pe" -N 4 "$binary" | tr -d ' ')" = 'PE\0\0' ] || die "$NAME of ipxe $version is not a PE image"
[ "$(u 2 $((pe + 4)))" = $((0xaa64)) ] || die "$NAME of ipxe $version is not for arm64 (COFF machine $(u 2 $((pe + 4))))"
[ "$(u 2 $((pe + 24 + 68)))" = 10 ] || die "$NAME of ipxe $version is not an EFI application"

# ---------------------------------------------------------------- install
mkdir -p "$target"
target="$(realpath "$target")"
install -m 0644 "$binary" "$target/.$NAME.tmp" && mv "$target/.$NAME.tmp" "$target/$NAME"
say "$target/$NAME: iPXE from Debian's ipxe $version, an arm64 EFI application (sha256 $(sha256sum "$target/$NAME" | cut -d' ' -f1))"
copied=""
if [ "$x86" = 1 ] && [ "$target" != "$X86_DIR" ]; then
    for f in $X86_BINARIES; do
        if [ -f "$X86_DIR/$f" ]; then
            install -m 0644 "$X86_DIR/$f" "$target/.$f.tmp" && mv "$target/.$f.tmp" "$target/$f"
            copied+=" $f"
        fi
    done
    if [ -n "$copied" ]; then
        say "copied this host's x86 iPXE beside it (tftp.ipxe_dir serves every architecture):$copied"
    else
        say "no x86 iPXE in $X86_DIR to copy beside it: x86 machines need it in $target too (apt-get install ipxe, then rerun)"
    fi
fi

cat <<EOF

netbootd.toml (then \`netbootd check\`; arm64 machines that boot iPXE get $NAME over TFTP or HTTP):

[tftp]
ipxe_dir = "$target"

[ipxe]
arm64 = "$NAME"
EOF
