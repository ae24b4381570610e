#!/usr/bin/env bash
# Create .sam-venv with the AWS SAM CLI (pinned, with its whole tree in sam-constraints.txt).
# It lives apart from .venv because it wants a newer botocore than the one tested there.
# `sam build` also needs python3.11 on PATH: it builds the python3.11 functions with it, no
# Docker needed. Quick when nothing changed. Then: .sam-venv/bin/sam build, sam deploy --guided.
exec "$(dirname "$0")/tool-venv.sh" .sam-venv scripts/sam-constraints.txt aws-sam-cli
