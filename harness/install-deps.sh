#!/usr/bin/env bash
# Host packages for miglab's real-VM harness. Idempotent; run as root (CI runs it through `make deps`).
#
# - QEMU >= 9 (qemu-system-x86). Debian 12's 7.2 loses guest writes while migrating under TCG (fixed by
#   QEMU commit 03bfc2188f, in 9.0). If neither the installed nor the distro's candidate QEMU is >= 9, add
#   <codename>-backports using the mirror URIs of the machine's own Debian apt source (no mirror host is
#   written in this repository) and install QEMU from there.
# - busybox-static, cpio: the guest initramfs;  gcc, libc6-dev: the static workload program;
# - iproute2: namespaces, veth, tbf;  zstd, xz-utils: kernel payload formats;
# - redis-tools: the real-application workload (guest.py copies its binaries and their libraries into the
#   initramfs; installing it here guarantees the libraries exist under this distro's package names).
set -euo pipefail

QEMU_MIN_MAJOR=9
PACKAGES=(busybox-static cpio iproute2 gcc libc6-dev zstd xz-utils redis-tools)

die() { echo "install-deps: error: $*" >&2; exit 1; }
say() { echo "install-deps: $*"; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages)"
command -v apt-get >/dev/null || die "apt-get not found; this script supports Debian-based hosts only"
export DEBIAN_FRONTEND=noninteractive

. /etc/os-release
codename="${VERSION_CODENAME:-}"
[ -n "$codename" ] || die "cannot tell the distribution codename from /etc/os-release"

apt_install() { apt-get install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"; }

# major version of the installed qemu-system-x86_64, or 0
installed_qemu_major() {
    command -v qemu-system-x86_64 >/dev/null || { echo 0; return; }
    qemu-system-x86_64 --version 2>/dev/null | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1
}

# major version of apt's candidate for qemu-system-x86 [from a given release], or 0
candidate_qemu_major() {
    local v
    v=$(apt-cache policy ${1:+-t "$1"} qemu-system-x86 2>/dev/null | sed -n 's/^ *Candidate: *//p' | head -n1)
    case "$v" in ''|'(none)') echo 0; return ;; esac
    v="${v#*:}"          # drop the epoch
    echo "${v%%[.+~]*}"
}

# The machine's own Debian mirror URI for $codename (deb822 .sources or one-line sources.list).
debian_mirror_uri() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v want="$codename" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; suites = ""; enabled = 1
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)    { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/)  { suites = " " $i " " }
                    if ($i ~ /^Enabled:[ \t]*no/) enabled = 0
                }
                if (enabled && uris != "" && suites ~ (" " want " ")) { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$f"
    done | head -n1
    if [ -f /etc/apt/sources.list ]; then
        awk -v want="$codename" '$1 == "deb" {
                i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == want) { print $i; exit }
            }' /etc/apt/sources.list
    fi
}

have_backports_source() {
    grep -rqsE "^[^#]*\b${codename}-backports\b" /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources 2>/dev/null
}

say "apt-get update"
apt-get update -qq >/dev/null || die "apt-get update failed"

qemu_major=$(installed_qemu_major)
if [ "${qemu_major:-0}" -ge "$QEMU_MIN_MAJOR" ]; then
    say "QEMU $qemu_major.x already installed: $(qemu-system-x86_64 --version | head -n1)"
elif [ "$(candidate_qemu_major)" -ge "$QEMU_MIN_MAJOR" ]; then
    say "installing qemu-system-x86 $(candidate_qemu_major).x from $codename"
    apt_install qemu-system-x86
else
    if ! have_backports_source; then
        uri=$(debian_mirror_uri)
        [ -n "$uri" ] || die "no apt source for '$codename' found in /etc/apt/sources.list{,.d}; cannot derive a ${codename}-backports source"
        keyring=/usr/share/keyrings/debian-archive-keyring.gpg
        [ -f "$keyring" ] || die "$keyring missing (install debian-archive-keyring)"
        say "adding ${codename}-backports from the machine's mirror $uri"
        cat >/etc/apt/sources.list.d/miglab-backports.sources <<EOF
# Added by miglab harness/install-deps.sh: QEMU >= $QEMU_MIN_MAJOR for TCG migration.
Types: deb
URIs: $uri
Suites: ${codename}-backports
Components: main
Signed-By: $keyring
EOF
        apt-get update -qq >/dev/null || die "apt-get update failed after adding ${codename}-backports"
    fi
    bp_major=$(candidate_qemu_major "${codename}-backports")
    [ "${bp_major:-0}" -ge "$QEMU_MIN_MAJOR" ] || die "${codename}-backports offers no qemu-system-x86 >= $QEMU_MIN_MAJOR (found ${bp_major:-none})"
    say "installing qemu-system-x86 ${bp_major}.x from ${codename}-backports"
    apt-get install -y -qq --no-install-recommends -t "${codename}-backports" qemu-system-x86 >/dev/null \
        || die "apt-get install -t ${codename}-backports qemu-system-x86 failed"
fi

qemu_major=$(installed_qemu_major)
[ "${qemu_major:-0}" -ge "$QEMU_MIN_MAJOR" ] || die "qemu-system-x86_64 is ${qemu_major:-missing}, need >= $QEMU_MIN_MAJOR"

say "installing ${PACKAGES[*]}"
apt_install "${PACKAGES[@]}"

for tool in busybox cpio ip gcc; do
    command -v "$tool" >/dev/null || die "$tool still missing after installing packages"
done
busybox --list | grep -qx sh || die "busybox has no sh applet (need busybox-static)"
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || die "static libc (libc6-dev) missing"
say "ok: $(qemu-system-x86_64 --version | head -n1)"
