#!/usr/bin/env bash
# Create .checkov-venv with checkov (pinned, with its whole tree in checkov-constraints.txt), the
# static analyser tests/test_checkov.py runs on template.yaml. It lives apart from .venv because
# its tree pins its own boto3/botocore, which aioboto3's pins there would fight.
# Quick when nothing changed. Then: .checkov-venv/bin/checkov -f template.yaml --framework cloudformation
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v python3.11 >/dev/null 2>&1; then
  echo "error: python3.11 is needed on PATH for .checkov-venv" >&2
  exit 1
fi

stamp=.checkov-venv/.installed
wanted=$(sha256sum scripts/checkov-constraints.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
[ -x .checkov-venv/bin/python ] || python3.11 -m venv .checkov-venv
.checkov-venv/bin/python -m pip install --quiet --upgrade pip
.checkov-venv/bin/python -m pip install --quiet -c scripts/checkov-constraints.txt checkov
echo "$wanted" > "$stamp"
