"""The stack deploys: `sam validate --lint` and `sam build` pass without Docker, every function fits
Lambda's size limit, the container-image worker is linted, and clients find a stack by its name
through CloudFormation (the local stack answering through moto)."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode import decode

from parallelrun import aws
from parallelrun.aws.config import StackConfig
from parallelrun.client.api import Client
from parallelrun.client.cli import main
from parallelrun.core.errors import StackError
from parallelrun.local import provision, server
from tests.test_template import with_ecs_workers

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"
SAM = ROOT / ".sam-venv" / "bin" / "sam"

# Lambda refuses a function whose code and layers unzip to more than 262,144,000 bytes
# (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html: "250 MB").
LAMBDA_UNZIPPED_LIMIT = 262_144_000
# The AWS SDK for pandas managed layer (pandas, pyarrow, numpy), counted at its published unzipped
# size: 204 MiB for release 3.16.1, up from 167 MiB in 3.16.0, as measured with `du -h` in
# https://github.com/aws/aws-sdk-pandas/issues/3331 (the py3.13 build; no per-version figure is
# published for py3.11). The layer is not downloadable here, so this number stands in for it.
AWS_SDK_PANDAS_UNZIPPED = 204 * 1024 * 1024
# Provided by that layer: our own layer must not ship them again.
MANAGED_PACKAGES = ("pandas", "pyarrow", "numpy")


def _sam_environment() -> dict[str, str]:
    """The SAM CLI's environment: no telemetry, a region, and no local endpoint to follow."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    return {**env, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION", "us-east-1")}


def _run(command: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=_sam_environment(), capture_output=True, text=True, timeout=540)


@pytest.fixture(scope="session")
def sam() -> Path:
    """The SAM CLI in .sam-venv, created by scripts/sam-setup.sh (quick once it exists)."""
    result = _run([str(ROOT / "scripts" / "sam-setup.sh")])
    assert result.returncode == 0, result.stdout + result.stderr
    return SAM


@pytest.fixture(scope="session")
def build_dir(sam: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`sam build` of template.yaml, once per session, into a temporary folder."""
    build = tmp_path_factory.mktemp("sam") / "build"
    result = _run([str(sam), "build", "--template-file", str(TEMPLATE), "--build-dir", str(build)])
    assert result.returncode == 0, result.stdout + result.stderr
    return build


def _size(folder: Path) -> int:
    """Unzipped size of a folder: what Lambda counts for a function or layer."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _layer_size(layer: Any, built: dict[str, Any], build_dir: Path) -> int:
    """The unzipped size of one entry of a function's Layers."""
    if layer == {"Ref": "ParallelRunLayer"}:
        return _size(build_dir / built["Resources"]["ParallelRunLayer"]["Properties"]["ContentUri"])
    assert "aws-sdk-pandas" in json.dumps(layer), f"a layer of unknown size: {layer}"
    return AWS_SDK_PANDAS_UNZIPPED


def test_sam_validate_lint_passes(sam: Path) -> None:
    result = _run([str(sam), "validate", "--lint", "--template-file", str(TEMPLATE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


@pytest.mark.parametrize("mode", ["cpu", "gpu"])
def test_sam_validate_lint_passes_with_ecs_workers_on(sam: Path, mode: str, tmp_path: Path) -> None:
    path = tmp_path / "template.yaml"
    path.write_text(with_ecs_workers(mode))
    result = _run([str(sam), "validate", "--lint", "--template-file", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_sam_build_builds_every_zip_function_and_the_layer(build_dir: Path) -> None:
    built, matches = decode(str(build_dir / "template.yaml"))
    assert not matches, matches
    resources = built["Resources"]
    zip_functions = {k for k, r in resources.items()
                     if r["Type"] == "AWS::Serverless::Function" and r["Properties"].get("PackageType") != "Image"}
    assert zip_functions == {"PlannerFunction", "WorkerFunction", "AggregatorFunction", "FailureRecorderFunction"}
    for function in zip_functions:
        assert (build_dir / resources[function]["Properties"]["CodeUri"] / "app.py").is_file()
    layer = build_dir / resources["ParallelRunLayer"]["Properties"]["ContentUri"] / "python"
    assert (layer / "parallelrun" / "pipeline" / "worker.py").is_file()
    assert (layer / "boto3").is_dir()  # the layer's requirements.txt was installed
    assert not (layer / "aiohttp").exists()  # nothing the functions do not import


def test_every_function_fits_the_lambda_size_limit(build_dir: Path) -> None:
    built, _ = decode(str(build_dir / "template.yaml"))
    layer = build_dir / built["Resources"]["ParallelRunLayer"]["Properties"]["ContentUri"] / "python"
    shipped = [name for name in MANAGED_PACKAGES if (layer / name).exists()]
    assert not shipped, f"{shipped} come from the AWS SDK for pandas layer: keep them out of ours"
    sizes = {}
    for logical_id, resource in built["Resources"].items():
        props = resource["Properties"]
        if resource["Type"] != "AWS::Serverless::Function" or props.get("PackageType") == "Image":
            continue
        sizes[logical_id] = _size(build_dir / props["CodeUri"]) + sum(
            _layer_size(entry, built, build_dir) for entry in props["Layers"])
    assert len(sizes) == 4
    over = {name: size for name, size in sizes.items() if size > LAMBDA_UNZIPPED_LIMIT}
    assert not over, f"unzipped size over Lambda's {LAMBDA_UNZIPPED_LIMIT:,} bytes: {over}"


def test_the_image_worker_is_linted_though_not_built(tmp_path: Path) -> None:
    template, _ = decode(str(TEMPLATE))
    image = template["Resources"]["WorkerImageFunction"]
    assert image["Condition"] == "WorkerIsImage" and template["Resources"]["WorkerFunction"]["Condition"] == "WorkerIsZip"
    assert image["Properties"]["PackageType"] == "Image"
    assert template["Parameters"]["WorkerPackageType"]["Default"] == "Zip"
    # cfn-lint checks the image function under its condition: a property an image cannot have
    # (a Handler) is reported, so the clean lint of template.yaml covers the Image path too.
    text = TEMPLATE.read_text().replace("      PackageType: Image\n", "      PackageType: Image\n      Handler: app.handler\n")
    broken = tmp_path / "template.yaml"
    broken.write_text(text)
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())", str(broken)],
        capture_output=True, text=True, timeout=120)
    assert "E3685" in result.stdout, result.stdout + result.stderr


def test_the_worker_dockerfile_builds_from_this_repository() -> None:
    """What a Docker build would need, checked without Docker: the Lambda base image, sources that
    exist in the build context (the repository root) and the worker's handler."""
    dockerfile = (ROOT / "functions" / "worker" / "Dockerfile").read_text()
    instructions = re.findall(r"^(FROM|COPY|CMD|RUN) (.+?)$", dockerfile.replace("\\\n", " "), re.MULTILINE)
    assert instructions[0] == ("FROM", "public.ecr.aws/lambda/python:3.11")
    for source in [s for kind, args in instructions if kind == "COPY" for s in args.split()[:-1]]:
        assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
    (cmd,) = [json.loads(args) for kind, args in instructions if kind == "CMD"]
    module, _, function = cmd[0].rpartition(".")
    assert f"def {function}(" in (ROOT / "functions" / "worker" / f"{module}.py").read_text()
    (run,) = [args for kind, args in instructions if kind == "RUN"]
    assert "-c /tmp/parallelrun/constraints.txt" in run and "scikit-learn" in run


def test_the_local_stack_refuses_the_image_worker(stack: Any) -> None:
    """The local runtime runs handlers from code folders: an image worker would never run there."""
    image = {"WorkerPackageType": "Image", "WorkerImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/w:1"}
    with pytest.raises(StackError, match=r"WorkerImageFunction: the local stack runs Zip functions only"):
        provision.provision(None, stack_name="local-image-worker", parameters=image)


def test_stack_outputs_give_the_config_the_functions_use(stack: Any) -> None:
    """Read through CloudFormation (moto here), a stack's outputs are the StackConfig its
    functions build from their environment: same resources, limits and planner interval. Only
    clients learn the schedule rules' and deployment workers' prefixes (functions never create them)."""
    name = stack.spec.stack_name
    read = StackConfig.from_stack(name)
    assert read.schedule_rule_prefix == f"{name}-schedule-"
    assert read.deployment_worker_prefix == f"{name}-Worker-"
    assert dataclasses.replace(read, schedule_rule_prefix=stack.cfg.schedule_rule_prefix,
                               deployment_worker_prefix=stack.cfg.deployment_worker_prefix) == stack.cfg
    assert Client.from_stack(name).cfg == read


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[provision.ProvisionedStack]:
    """A stack on a moto server, reached like a deployed one: by name, with no local state file."""
    moto, url = server.start()
    patch = pytest.MonkeyPatch()
    try:
        spec = provision.provision(url, stack_name="deployed-cli")
        patch.setenv("AWS_ENDPOINT_URL", url)
        patch.setenv("PARALLELRUN_HOME", str(tmp_path / "home"))
        patch.delenv("PARALLELRUN_STACK", raising=False)
        aws.reset_clients()
        yield spec
    finally:
        patch.undo()
        aws.reset_clients()
        moto.stop()


def test_cli_with_stack_works_against_a_stack_by_name(deployed: provision.ProvisionedStack, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["jobs"]) == 1  # no local stack running: only --stack can find this one
    assert "no local stack is running" in capsys.readouterr().err

    (tmp_path / "model.pkl").write_bytes(pickle.dumps(0))
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    bucket = deployed.outputs["InputBucketName"]
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for name in ("a.txt", "b.txt"):
        s3.put_object(Bucket=bucket, Key=f"ep/batch/{name}", Body=b"x")

    stack = ["--stack", "deployed-cli"]
    assert main([*stack, "models", "register", str(tmp_path / "model.pkl"), "--name", "m"]) == 0
    assert main([*stack, "endpoints", "create", "ep", "--code", str(code), "--entry-script", "score.py",
                 "--model", "m"]) == 0
    capsys.readouterr()
    assert main([*stack, "submit", "--endpoint", "ep", "--input", f"s3://{bucket}/ep/batch/"]) == 0
    job_id = capsys.readouterr().out.strip()

    # The job is in this stack's table, written there through the outputs CloudFormation gave.
    job = Client(StackConfig.from_outputs(deployed.outputs)).job(job_id)
    assert job.endpoint == "ep" and job.input_uri == f"s3://{bucket}/ep/batch/"

    monkeypatch.setenv("PARALLELRUN_STACK", "deployed-cli")  # the same, named by the environment
    assert main(["status", job_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["job_id"] == job_id

    assert main(["--stack", "no-such-stack", "jobs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: stack 'no-such-stack' does not exist in region us-east-1")



def test_the_pandas_layer_is_looked_up_for_the_stack_s_region() -> None:
    """Every region the layer is published in works with no ARN given: the template resolves the
    public SSM parameter of the chosen release in the stack's own region, unless an ARN is passed."""
    template, _ = decode(str(TEMPLATE))
    lookup = ("{{resolve:ssm:/aws/service/aws-sdk-pandas/${AwsSdkPandasVersion}/${AWS::Region}"
              "/py3.11/x86_64/layer-arn}}")
    zip_functions = [r for r in template["Resources"].values()
                     if r["Type"] == "AWS::Serverless::Function" and r["Properties"].get("PackageType") != "Image"]
    assert len(zip_functions) == 4
    for function in zip_functions:
        [choice] = [layer["Fn::If"] for layer in function["Properties"]["Layers"] if "Fn::If" in layer]
        assert choice == ["PandasLayerFromRegion", {"Fn::Sub": lookup}, {"Ref": "AwsSdkPandasLayerArn"}]
    assert template["Conditions"]["PandasLayerFromRegion"] == {"Fn::Equals": [{"Ref": "AwsSdkPandasLayerArn"}, ""]}
    assert template["Parameters"]["AwsSdkPandasVersion"]["Default"] == "3.16.1"
