#!/usr/bin/env bash
# Debian packages that the ARM path needs: a cross compiler and qemu-user to run aarch64 code on x86.
# Installed only where apt-get is available and we are root; elsewhere the tools that need them
# say which package is missing.
set -euo pipefail
pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user qemu-user-static debootstrap"
missing=""
for p in $pkgs; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "system packages: all present ($pkgs)"
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "warning: cannot install Debian packages:$missing (need root and apt-get); the ARM path will not work" >&2
fi
