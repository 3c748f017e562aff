#!/usr/bin/env bash
# Idempotent set-up on Debian/Ubuntu as root: packages, /dev/kvm, the project venv.
# Used by `make demo`, `make test` and `make bench`; fast when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
          libvirt-dev pkg-config redis-server tini binutils util-linux python3-venv python3-dev gcc)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU runs as libvirt-qemu (group kvm); /dev/kvm may come as root:root 0600.
if [ -e /dev/kvm ] && getent group kvm >/dev/null; then
  chgrp kvm /dev/kvm && chmod 660 /dev/kvm
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[worker,flower,test]'
  rm -f .venv/.installed-* && touch "$stamp"
fi
