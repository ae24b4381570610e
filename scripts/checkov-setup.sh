#!/usr/bin/env bash
# Create .checkov-venv with checkov (pinned, with its whole tree in checkov-constraints.txt), the
# static analyser tests/test_checkov.py runs on template.yaml. It lives apart from .venv because
# its tree pins its own boto3/botocore, other than the ones tested in .venv.
# Quick when nothing changed. Then: .checkov-venv/bin/checkov -f template.yaml --framework cloudformation
exec "$(dirname "$0")/tool-venv.sh" .checkov-venv scripts/checkov-constraints.txt checkov
