"""checkov passes on template.yaml: every check it fails is listed in checkov-skips.yaml, for the
resources it fails on, with the reason it does not apply there; a fixed check leaves the list.

checkov runs from .checkov-venv (scripts/checkov-setup.sh), apart from the project's environment
as the SAM CLI is: its tree pins a boto3 other than the one tested in .venv."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_template import with_ecs_workers

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
SKIPS = ROOT / "checkov-skips.yaml"
CHECKOV = ROOT / ".checkov-venv" / "bin" / "checkov"


def _run(command: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    # No local endpoint to follow; checkov reads only the file.
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def failed(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    """(check id, logical id) of every check checkov fails on template.yaml, as it is and with ECS
    workers on (checkov leaves out the resources whose condition is false with the defaults)."""
    setup = _run([str(ROOT / "scripts" / "checkov-setup.sh")], timeout=240)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    folder = tmp_path_factory.mktemp("checkov")
    variants = [TEMPLATE]
    for mode in ("cpu", "gpu"):
        variants.append(folder / f"template-ecs-{mode}.yaml")
        variants[-1].write_text(with_ecs_workers(mode))
    # One run over the three files (each its own -f): checkov's start-up is most of its time.
    # --skip-download: no call to Prisma Cloud for guidelines (no network here, none needed).
    files = [arg for template in variants for arg in ("-f", str(template))]
    result = _run([str(CHECKOV), *files, "--framework", "cloudformation", "--output", "json", "--quiet",
                   "--skip-download"], timeout=180)
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 1: some check failed
    reports = json.loads(result.stdout)
    (report,) = [r for r in (reports if isinstance(reports, list) else [reports])
                 if r.get("check_type") == "cloudformation"]
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    # Every file was read (each fails checks listed in checkov-skips.yaml, the SQS-managed keys for one).
    assert {Path(c["file_abs_path"]).name for c in report["results"]["failed_checks"]} == {t.name for t in variants}
    # A resource is named "<type>.<logical id>".
    found = {(c["check_id"], c["resource"].rsplit(".", 1)[1]) for c in report["results"]["failed_checks"]}
    return found


@pytest.fixture(scope="module")
def skips() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(SKIPS.read_text())


def _listed(skips: dict[str, dict[str, Any]]) -> set[tuple[str, str]]:
    return {(check, resource) for check, resources in skips.items() for resource in resources}


def test_every_failed_check_is_listed_with_its_reason(failed: set[tuple[str, str]],
                                                      skips: dict[str, dict[str, Any]]) -> None:
    unlisted = sorted(failed - _listed(skips))
    assert not unlisted, f"fix these in template.yaml, or list them in {SKIPS.name} with why they do not apply"


def test_every_listed_check_still_fails(failed: set[tuple[str, str]], skips: dict[str, dict[str, Any]]) -> None:
    stale = sorted(_listed(skips) - failed)
    assert not stale, f"these pass now: remove them from {SKIPS.name}"


def test_every_skip_says_why(skips: dict[str, dict[str, Any]]) -> None:
    for check, resources in skips.items():
        assert check.startswith("CKV_") and isinstance(resources, dict) and resources, check
        for resource, reason in resources.items():
            assert isinstance(reason, str) and len(reason.split()) >= 20, f"{check} {resource}: give the reason"
