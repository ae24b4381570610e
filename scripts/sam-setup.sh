#!/usr/bin/env bash
# Create .sam-venv with the AWS SAM CLI (pinned, with its whole tree in sam-constraints.txt).
# It lives apart from .venv because it wants a newer botocore than aioboto3 allows there.
# `sam build` also needs python3.11 on PATH: it builds the python3.11 functions with it, no
# Docker needed. Quick when nothing changed. Then: .sam-venv/bin/sam build, sam deploy --guided.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v python3.11 >/dev/null 2>&1; then
  echo "error: the SAM CLI needs python3.11 on PATH (sam build runs it for the python3.11 functions)" >&2
  exit 1
fi

stamp=.sam-venv/.installed
wanted=$(sha256sum scripts/sam-constraints.txt | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
[ -x .sam-venv/bin/python ] || python3.11 -m venv .sam-venv
.sam-venv/bin/python -m pip install --quiet --upgrade pip
.sam-venv/bin/python -m pip install --quiet -c scripts/sam-constraints.txt aws-sam-cli
echo "$wanted" > "$stamp"
