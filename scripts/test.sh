#!/usr/bin/env bash
# The whole test suite from a fresh clone: set-up, then lint, typecheck, package checks and every test.
# Ends with "N passed, N failed[, N skipped]".
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec node scripts/run-suite.mjs "$@"
