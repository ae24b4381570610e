#!/usr/bin/env bash
# Set up, then run the digits demo on a local stack (moto; no AWS account needed).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/parallelrun demo "$@"
