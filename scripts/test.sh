#!/usr/bin/env bash
# The whole test suite: unit tests, then integration tests in throwaway network namespaces (root).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
