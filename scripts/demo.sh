#!/usr/bin/env bash
# The main job: set-up, then the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec node scripts/demo.mjs "$@"
