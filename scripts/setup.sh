#!/usr/bin/env bash
# Everything a fresh machine needs: QEMU's tools (the compatibility oracle), pnpm, the workspace's
# dependencies (this builds driver-raw's native helper) and a build of every package.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=0
for tool in qemu-img qemu-io qemu-nbd qemu-storage-daemon nbdkit nbdinfo zstd; do
  command -v "$tool" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  echo "setup: installing QEMU tools (qemu-utils, qemu-system-common, nbdkit, libnbd-bin) and zstd"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-utils qemu-system-common nbdkit libnbd-bin zstd >/dev/null
fi

PNPM_VERSION=10.34.9
if ! command -v pnpm >/dev/null 2>&1 || [ "$(pnpm --version 2>/dev/null)" != "$PNPM_VERSION" ]; then
  echo "setup: installing pnpm $PNPM_VERSION"
  npm install -g "pnpm@$PNPM_VERSION" >/dev/null 2>&1
fi

pnpm install --frozen-lockfile --reporter=silent
pnpm -r --sort --reporter-hide-prefix build >/dev/null
