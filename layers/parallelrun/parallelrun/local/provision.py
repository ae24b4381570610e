"""Create the local stack on a moto server from template.yaml, the single source of truth.

The SAM template is translated offline with aws-sam-translator and created through moto's
CloudFormation API, so the local buckets, queues, table, functions and event source mappings
are the ones AWS would create, under the same generated names. What moto cannot do is run the
functions (no Docker here), so this module hands back everything a local runtime needs to play
Lambda's part: each function's code folder, handler, limits, resolved environment and event
sources.

Two moto behaviours shape it (moto 5.2.5):

- moto SQS *invokes* a function (through Docker) whenever a message is sent to a queue with an
  enabled event source mapping: it receives the message (spending one of its receives, so
  maxReceiveCount drifts) and logs a Docker error. The mappings are therefore read, then
  disabled. They are disabled rather than deleted because moto's DeleteEventSourceMapping leaves
  the mapping attached to the queue, still firing.
- moto CloudFormation ignores a bucket's NotificationConfiguration (and its public access
  block, lifecycle rules and point-in-time recovery). The S3 event sources are read from the
  translated template instead; the local runtime delivers them itself. Wiring the bucket to the
  function through the S3 API would not help: PutObject then tries Docker (~180 ms, error logged).
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from parallelrun.core.errors import ConflictError, StackError
from parallelrun.local import deployrules, template
from parallelrun.local.functions import FunctionSpec, function_ids, read_functions

_READY_STATES = ("CREATE_COMPLETE", "UPDATE_COMPLETE")
_CREATE_TIMEOUT = 120.0  # seconds; moto creates the stack within the CreateStack call


@dataclass(frozen=True)
class ProvisionedStack:
    """The provisioned stack: its resolved outputs and its functions by logical id."""

    endpoint_url: str
    region: str
    stack_name: str
    outputs: dict[str, str]
    functions: dict[str, FunctionSpec]


def provision(
    endpoint_url: str | None,
    *,
    template_path: str | None = None,
    stack_name: str = "parallelrun",
    parameters: dict[str, str] | None = None,
    region: str = "us-east-1",
) -> ProvisionedStack:
    """Create the stack on the moto server at ``endpoint_url``, or return it if it exists.

    ``parameters`` override the template's defaults (a local run wants e.g. a short
    ``BatchVisibilityTimeout``). Calling again with the same stack name returns the existing
    stack; a parameter given then that differs from the stack's raises ``ConflictError``.
    """
    path = Path(template_path) if template_path else template.default_template()
    overrides = {key: str(value) for key, value in (parameters or {}).items()}
    source = template.read_template(path, overrides)

    session = _session(region)
    bootstrap_bucket = f"{stack_name}-local-code"
    code_dirs = template.point_code_at_bucket(source, path.parent, bootstrap_bucket)
    translated = template.translate(source, overrides, region)

    cfn = session.client("cloudformation", endpoint_url=endpoint_url)
    existing = _existing_stack(cfn, stack_name)
    if existing is None:
        s3 = session.client("s3", endpoint_url=endpoint_url)
        _upload_code(s3, bootstrap_bucket, region, code_dirs)
        existing = _create_stack(cfn, stack_name, translated, overrides)
    else:
        _check_parameters(existing, overrides)

    physical, queue_urls = _resources(cfn, stack_name)
    specs = read_functions(
        session.client("lambda", endpoint_url=endpoint_url),
        queue_urls,
        translated,
        physical,
        {logical_id: code_dirs[logical_id] for logical_id in function_ids(translated, physical)},
    )
    _refuse_what_aws_refuses(session.client("sqs", endpoint_url=endpoint_url), stack_name, specs)
    return ProvisionedStack(
        endpoint_url=endpoint_url,
        region=region,
        stack_name=stack_name,
        outputs={o["OutputKey"]: o["OutputValue"] for o in existing.get("Outputs", [])},
        functions=specs,
    )


def _resources(cfn: Any, stack_name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The stack's physical ids by logical id, and its queues' URLs by queue name."""
    # moto also lists the resources whose Condition is false, without a type or logical id.
    resources = [
        r for r in cfn.describe_stack_resources(StackName=stack_name)["StackResources"] if "ResourceType" in r
    ]
    physical = {  # moto gives some resources (a Lambda permission) no physical id
        r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources if "PhysicalResourceId" in r
    }
    # A queue's physical id is its URL; keyed by queue name, the last part of its URL and ARN.
    queue_urls = {
        r["PhysicalResourceId"].rsplit("/", 1)[1]: r["PhysicalResourceId"]
        for r in resources
        if r["ResourceType"] == "AWS::SQS::Queue"
    }
    return physical, queue_urls


def _refuse_what_aws_refuses(sqs: Any, stack_name: str, specs: dict[str, FunctionSpec]) -> None:
    """Raise StackError when AWS would fail the stack that moto created (see deployrules)."""
    mappings = [deployrules.QueueMapping(spec.logical_id, source.queue_arn, source.batch_size, source.batching_window,
                                         source.maximum_concurrency)
                for spec in specs.values() for source in spec.queue_sources]
    visibility = {source.queue_arn: int(sqs.get_queue_attributes(
        QueueUrl=source.queue_url, AttributeNames=["VisibilityTimeout"])["Attributes"]["VisibilityTimeout"])
        for spec in specs.values() for source in spec.queue_sources}
    found = deployrules.violations(
        [deployrules.Function(spec.logical_id, spec.timeout, spec.memory) for spec in specs.values()],
        mappings, visibility)
    if found:
        raise StackError(f"stack {stack_name} would not deploy on AWS, which refuses: " + "; ".join(found))


def _session(region: str) -> boto3.session.Session:
    """A session with the caller's environment credentials, else dummy ones (moto accepts any).

    Only the environment is consulted: the full credential chain could end at the instance
    metadata endpoint, a network call a local stack must never make.
    """
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return boto3.session.Session(region_name=region)
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region
    )


def _existing_stack(cfn: Any, stack_name: str) -> dict[str, Any] | None:
    """The stack if it exists and is usable (waiting while moto is still creating it)."""
    try:
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    if stack["StackStatus"].endswith("_IN_PROGRESS"):
        stack = _wait(cfn, stack_name)
    if stack["StackStatus"] not in _READY_STATES:
        raise StackError(
            f"stack {stack_name} exists in state {stack['StackStatus']}: delete it or use another stack name"
        )
    return stack


def _upload_code(s3: Any, bucket: str, region: str, folders: dict[str, Path]) -> None:
    """Zip each code folder into the bootstrap bucket under the key the template now names."""
    # us-east-1 is the one region that refuses an explicit LocationConstraint.
    location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        s3.create_bucket(Bucket=bucket, **location)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    for logical_id, folder in folders.items():
        s3.put_object(Bucket=bucket, Key=f"code/{logical_id}.zip", Body=_zip_folder(folder))


def _zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _create_stack(
    cfn: Any, stack_name: str, translated: dict[str, Any], overrides: dict[str, str]
) -> dict[str, Any]:
    try:
        cfn.create_stack(
            StackName=stack_name,
            TemplateBody=json.dumps(template.locally_creatable(translated)),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in overrides.items()],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
    except cfn.exceptions.AlreadyExistsException:
        pass  # another process created it first: wait for theirs
    stack = _wait(cfn, stack_name)
    if stack["StackStatus"] not in _READY_STATES:
        events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
        failed = [
            f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
            for e in events
            if "FAILED" in e["ResourceStatus"]
        ]
        reason = "; ".join(failed) or stack.get("StackStatusReason")
        raise StackError(f"stack {stack_name} ended in {stack['StackStatus']}: {reason}")
    return stack


def _wait(cfn: Any, stack_name: str) -> dict[str, Any]:
    deadline = time.monotonic() + _CREATE_TIMEOUT
    while True:
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack
        if time.monotonic() > deadline:
            raise StackError(
                f"stack {stack_name} still {stack['StackStatus']} after {_CREATE_TIMEOUT:.0f} s"
            )
        time.sleep(0.05)


def _check_parameters(stack: dict[str, Any], overrides: dict[str, str]) -> None:
    """Refuse to hand back an existing stack whose parameters differ from the ones asked for."""
    current = {p["ParameterKey"]: p.get("ParameterValue") for p in stack.get("Parameters", [])}
    differing = {k: (current.get(k), v) for k, v in overrides.items() if current.get(k) != v}
    if differing:
        detail = ", ".join(f"{k}={have!r} (asked {want!r})" for k, (have, want) in differing.items())
        raise ConflictError(
            f"stack {stack['StackName']} already exists with {detail}: delete it or use another stack name"
        )
