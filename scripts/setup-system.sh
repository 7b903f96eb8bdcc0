#!/usr/bin/env bash
# Installs the Debian packages listed in scripts/system-packages.txt (idempotent, quiet).
# A package the configured apt sources cannot provide is reported and skipped, so one
# missing package cannot stop the whole test run; the tests that need it then say so.
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
if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
  for pkg in "${need[@]}"; do
    apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 \
      || echo "setup-system: could not install $pkg from the configured apt sources" >&2
  done
fi
