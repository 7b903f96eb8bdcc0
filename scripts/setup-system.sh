#!/usr/bin/env bash
# Installs the Debian packages listed in scripts/system-packages.txt (idempotent, quiet).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t pkgs < <(grep -v -E '^\s*(#|$)' "$here/system-packages.txt" | awk '{print $1}')
need=()
for pkg in "${pkgs[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "setup-system: not root; tests needing these will skip: ${need[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "setup-system: installing ${need[*]}" >&2
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
