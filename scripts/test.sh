#!/usr/bin/env bash
# Set up, then run the whole test suite (cfn-lint of template.yaml included).
# pytest exits non-zero when it collects no test, so an empty run cannot pass.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
