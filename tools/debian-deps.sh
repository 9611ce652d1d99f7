#!/usr/bin/env bash
# Make sure the commands a make target needs are on PATH, installing the Debian packages that
# carry them when they are not: `debian-deps.sh COMMAND=PACKAGE ...`. Installs with apt-get as
# root (as CI runs), through sudo otherwise; where neither can install, it stops with one line
# naming the packages to install.
set -euo pipefail
missing=()
for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
# One package may carry several of the commands.
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo)
else
    echo "missing: install the Debian packages ${packages}(apt-get install ${packages% })" >&2
    exit 1
fi
command -v apt-get >/dev/null || { echo "missing: ${packages}(no apt-get here: install them with this system's package manager)" >&2; exit 1; }
echo "installing ${packages}from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq || echo "apt-get update failed; installing from the cached package lists"
# shellcheck disable=SC2086
"${as_root[@]}" apt-get install -y -qq --no-install-recommends $packages
