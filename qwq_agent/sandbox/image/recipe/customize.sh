#!/bin/bash
# mmdebstrap customize hook: runs on the host with the root filesystem in $1.
set -euo pipefail
root=$1

chroot "$root" groupadd --gid 1000 sandbox
chroot "$root" useradd --uid 1000 --gid 1000 --create-home --home-dir /home/sandbox --shell /bin/bash sandbox
install -d -m 0755 -o 1000 -g 1000 "$root/workspace"

here=$(cd "$(dirname "$0")" && pwd)

# Drop build-time baggage (see prune.txt for why); only what is actually installed is named.
installed=$(chroot "$root" dpkg-query -W -f='${Package}\n')
prune=$(sed -e 's/#.*//' "$here/prune.txt" | tr -s '[:space:]' '\n' | sed '/^$/d' | grep -Fxf - <(echo "$installed") || true)
if [ -n "$prune" ]; then
    # shellcheck disable=SC2086
    chroot "$root" dpkg --purge --force-depends $prune
fi

# Debian's matplotlib reads /etc/matplotlibrc; Agg there means plots work with MPLBACKEND unset too.
# Any existing backend line goes first: matplotlib rejects a file that sets a key twice.
sed -i -E '/^[[:space:]]*backend[[:space:]]*:/d' "$root/etc/matplotlibrc"
echo 'backend: Agg' >> "$root/etc/matplotlibrc"

# The libraries' own test suites are a third of dist-packages and never imported by user code.
find "$root/usr/lib/python3/dist-packages" -depth -type d -name tests -exec rm -rf {} +

# Nothing in the sandbox may install packages (no network), so apt's indexes and caches are dead weight.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/apt/* "$root"/var/log/dpkg.log "$root"/usr/share/info/*
