#!/bin/bash
# Build the sandbox root filesystem as a tarball with mmdebstrap.
# Usage: mkrootfs.sh OUTPUT_TAR DEB_CACHE_DIR PACKAGES_FILE
#
# mmdebstrap (rather than debootstrap) because it resolves dependencies with apt, so alternatives
# such as those of python3-matplotlib are handled and a single pass installs everything.
set -euo pipefail

out=$1
cache=$2
pkgfile=$3
here=$(cd "$(dirname "$0")" && pwd)

# Comments and blank lines out, one comma-separated list for --include.
pkgs=$(sed -e 's/#.*//' "$pkgfile" | tr -s '[:space:]' '\n' | sed '/^$/d' | paste -sd, -)
mkdir -p "$cache"

mmdebstrap \
    --mode=root \
    --variant=minbase \
    --format=tar \
    --skip=essential/unlink \
    --aptopt='APT::Install-Recommends "false"' \
    --aptopt='APT::Install-Suggests "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --include="$pkgs" \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives' \
    --setup-hook="sync-in '$cache' /var/cache/apt/archives/" \
    --customize-hook='chroot "$1" apt-get -y upgrade' \
    --customize-hook="sync-out /var/cache/apt/archives '$cache'" \
    --customize-hook="'$here/customize.sh' \"\$1\"" \
    bookworm "$out" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
