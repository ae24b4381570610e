#!/usr/bin/env bash
# tool-venv.sh VENV CONSTRAINTS PACKAGE: install PACKAGE into its own virtual environment VENV,
# pinned with its whole tree in CONSTRAINTS, apart from .venv (tools such as the SAM CLI and
# checkov pin another botocore than the one tested there). Quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$1 constraints=$2 package=$3

if ! command -v python3.11 >/dev/null 2>&1; then
  echo "error: $package needs python3.11 on PATH (for $venv)" >&2
  exit 1
fi

stamp=$venv/.installed
wanted=$(sha256sum "$constraints" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || python3.11 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -c "$constraints" "$package"
echo "$wanted" > "$stamp"
