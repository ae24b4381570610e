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
import yaml
from botocore.exceptions import ClientError
from samtranslator.metrics.metrics import DummyMetricsPublisher, Metrics
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import intrinsics_multi_constructor

from parallelrun.core.errors import ConflictError, StackError
from parallelrun.local import deployrules

# Local code paths of each SAM resource type, rewritten to S3 locations before translation.
_CODE_PROPERTIES = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
}
_READY_STATES = ("CREATE_COMPLETE", "UPDATE_COMPLETE")
# Resource types moto's CloudFormation cannot create (it would list a resource with no type).
# The queue policy: moto does not enforce resource policies, so the local stack goes without it.
# The bucket policies deny requests without TLS, which is every request to the local server (plain
# HTTP on 127.0.0.1): enforced, they would refuse everything. The planner's asynchronous invocation
# config (retries, on-failure destination) is read from the translated template instead
# (_async_invoke_configs), and played by parallelrun.local.destinations.
_NOT_CREATED_LOCALLY = ("AWS::SQS::QueuePolicy", "AWS::S3::BucketPolicy", "AWS::Lambda::EventInvokeConfig")
# Lambda's retries of a failed asynchronous invocation when EventInvokeConfig sets none
# (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html).
_DEFAULT_RETRY_ATTEMPTS = 2
_CREATE_TIMEOUT = 120.0  # seconds; moto creates the stack within the CreateStack call


@dataclass(frozen=True)
class QueueSource:
    """An SQS event source of a function, as its event source mapping says."""

    queue_url: str
    queue_arn: str
    batch_size: int
    report_batch_item_failures: bool
    maximum_concurrency: int | None
    batching_window: int = 0


@dataclass(frozen=True)
class BucketSource:
    """An S3 event source of a function, as the bucket's notification configuration says."""

    bucket: str
    events: list[str]
    suffix: str | None
    prefix: str | None


@dataclass(frozen=True)
class AsyncInvokeConfig:
    """How Lambda handles a failed asynchronous invocation of a function (its EventInvokeConfig)."""

    maximum_retry_attempts: int
    on_failure_queue_url: str | None  # where the invocation record goes when every try failed


@dataclass(frozen=True)
class FunctionSpec:
    """One function of the stack: what a local runtime needs to call its handler as Lambda would."""

    logical_id: str
    code_dir: str
    handler: str
    timeout: int
    memory: int
    environment: dict[str, str]
    queue_sources: list[QueueSource]
    bucket_sources: list[BucketSource]
    function_arn: str
    async_invoke: AsyncInvokeConfig


@dataclass(frozen=True)
class LocalStack:
    """The provisioned stack: its resolved outputs and its functions by logical id."""

    endpoint_url: str
    region: str
    stack_name: str
    outputs: dict[str, str]
    functions: dict[str, FunctionSpec]


class _TemplateLoader(yaml.SafeLoader):
    """A YAML loader for CloudFormation short tags (!Ref, !Sub, !GetAtt...).

    A subclass, so that registering the tags does not change ``yaml.safe_load`` process-wide
    (``samtranslator.yaml_helper.yaml_parse`` would).
    """


_TemplateLoader.add_multi_constructor("!", intrinsics_multi_constructor)


def provision(
    endpoint_url: str | None,
    *,
    template_path: str | None = None,
    stack_name: str = "parallelrun",
    parameters: dict[str, str] | None = None,
    region: str = "us-east-1",
) -> LocalStack:
    """Create the stack on the moto server at ``endpoint_url``, or return it if it exists.

    ``parameters`` override the template's defaults (a local run wants e.g. a short
    ``BatchVisibilityTimeout``). Calling again with the same stack name returns the existing
    stack; a parameter given then that differs from the stack's raises ``ConflictError``.
    """
    path = Path(template_path) if template_path else _default_template()
    overrides = {key: str(value) for key, value in (parameters or {}).items()}
    template = yaml.load(path.read_text(), Loader=_TemplateLoader)
    unknown = sorted(set(overrides) - set(template.get("Parameters", {})))
    if unknown:
        raise StackError(f"unknown template parameter(s) {unknown} for {path}")

    session = _session(region)
    bootstrap_bucket = f"{stack_name}-local-code"
    code_dirs = _point_code_at_bucket(template, path.parent, bootstrap_bucket)
    translated = _translate(template, overrides, session)

    cfn = session.client("cloudformation", endpoint_url=endpoint_url)
    existing = _existing_stack(cfn, stack_name)
    if existing is None:
        s3 = session.client("s3", endpoint_url=endpoint_url)
        _upload_code(s3, bootstrap_bucket, region, code_dirs)
        existing = _create_stack(cfn, stack_name, translated, overrides)
    else:
        _check_parameters(existing, overrides)

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
    functions = _read_functions(
        session.client("lambda", endpoint_url=endpoint_url),
        queue_urls,
        translated,
        physical,
        {logical_id: code_dirs[logical_id] for logical_id in _function_ids(translated, physical)},
    )
    _refuse_what_aws_refuses(session.client("sqs", endpoint_url=endpoint_url), stack_name, functions)
    return LocalStack(
        endpoint_url=endpoint_url,
        region=region,
        stack_name=stack_name,
        outputs={o["OutputKey"]: o["OutputValue"] for o in existing.get("Outputs", [])},
        functions=functions,
    )


def _refuse_what_aws_refuses(sqs: Any, stack_name: str, functions: dict[str, FunctionSpec]) -> None:
    """Raise StackError when AWS would fail the stack that moto created (see deployrules)."""
    mappings = [deployrules.QueueMapping(spec.logical_id, source.queue_arn, source.batch_size, source.batching_window,
                                         source.maximum_concurrency)
                for spec in functions.values() for source in spec.queue_sources]
    visibility = {source.queue_arn: int(sqs.get_queue_attributes(
        QueueUrl=source.queue_url, AttributeNames=["VisibilityTimeout"])["Attributes"]["VisibilityTimeout"])
        for spec in functions.values() for source in spec.queue_sources}
    found = deployrules.violations(
        [deployrules.Function(spec.logical_id, spec.timeout, spec.memory) for spec in functions.values()],
        mappings, visibility)
    if found:
        raise StackError(f"stack {stack_name} would not deploy on AWS, which refuses: " + "; ".join(found))


def _default_template() -> Path:
    """template.yaml at the top of the repository (this file is layers/parallelrun/parallelrun/local/)."""
    repository = Path(__file__).resolve().parents[4]
    for candidate in (repository / "template.yaml", Path.cwd() / "template.yaml"):
        if candidate.is_file():
            return candidate
    raise StackError("template.yaml not found in the repository or the current folder: pass template_path")


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


def _point_code_at_bucket(template: dict[str, Any], base: Path, bucket: str) -> dict[str, Path]:
    """Replace each local CodeUri/ContentUri by an object in ``bucket``; return the folders by logical id.

    SAM accepts only S3 locations without the SAM CLI's packaging step, and moto's Lambda reads
    the code object at create time (the code is never run there).
    """
    folders: dict[str, Path] = {}
    for logical_id, resource in template.get("Resources", {}).items():
        prop = _CODE_PROPERTIES.get(resource.get("Type", ""))
        uri = resource.get("Properties", {}).get(prop) if prop else None
        if isinstance(uri, str) and not uri.startswith("s3://"):
            folder = (base / uri).resolve()
            if not folder.is_dir():
                raise StackError(f"{logical_id}: {prop} {uri!r} is not a folder under {base}")
            folders[logical_id] = folder
            resource["Properties"][prop] = {"Bucket": bucket, "Key": f"code/{logical_id}.zip"}
    return folders


def _translate(
    template: dict[str, Any], overrides: dict[str, str], session: boto3.session.Session
) -> dict[str, Any]:
    """The SAM template as plain CloudFormation, translated offline (the session gives the region).

    Policy templates ship with samtranslator; the managed-policy map (names to ARNs, normally
    read from IAM) is only needed for policies named by bare name, which the template avoids:
    an empty map (``dict()``) keeps it offline.
    """
    # The translator records usage metrics; publishing them to the dummy publisher (a no-op)
    # keeps its destructor from warning about unpublished metrics on stderr.
    metrics = Metrics("ServerlessTransform", DummyMetricsPublisher())
    translator = Translator(None, Parser(), boto_session=session, metrics=metrics)
    translated = translator.translate(
        template, parameter_values=dict(overrides), get_managed_policy_map=dict
    )
    metrics.publish()
    return translated


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
            TemplateBody=json.dumps(_locally_creatable(translated)),
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


def _locally_creatable(translated: dict[str, Any]) -> dict[str, Any]:
    resources = {k: r for k, r in translated["Resources"].items() if r["Type"] not in _NOT_CREATED_LOCALLY}
    return {**translated, "Resources": resources}


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


def _function_ids(translated: dict[str, Any], physical: dict[str, str]) -> list[str]:
    """The functions the stack created (a false Condition leaves one out), all with local code."""
    created = [
        k for k, r in translated["Resources"].items() if r["Type"] == "AWS::Lambda::Function" and k in physical
    ]
    images = [k for k in created if translated["Resources"][k]["Properties"].get("PackageType") == "Image"]
    if images:
        raise StackError(f"{', '.join(images)}: the local stack runs Zip functions only (WorkerPackageType=Zip)")
    return created


def _read_functions(
    lam: Any,
    queue_urls: dict[str, str],
    translated: dict[str, Any],
    physical: dict[str, str],
    code_dirs: dict[str, Path],
) -> dict[str, FunctionSpec]:
    """Each function's resolved configuration and event sources.

    Disables every SQS mapping it reads (see the module docstring): the local runtime polls.
    """
    mappings: dict[str, list[dict[str, Any]]] = {}
    for page in lam.get_paginator("list_event_source_mappings").paginate():
        for mapping in page["EventSourceMappings"]:
            mappings.setdefault(mapping["FunctionArn"], []).append(mapping)

    bucket_sources = _bucket_sources(translated, physical)
    async_configs = _async_invoke_configs(translated, physical)
    functions = {}
    for logical_id, folder in code_dirs.items():
        config = lam.get_function_configuration(FunctionName=physical[logical_id])
        variables = config.get("Environment", {}).get("Variables", {})
        queue_sources = []
        for mapping in mappings.get(config["FunctionArn"], []):
            if mapping.get("State") != "Disabled":
                lam.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
            arn = mapping["EventSourceArn"]
            response_types = mapping.get("FunctionResponseTypes") or []
            concurrency = (mapping.get("ScalingConfig") or {}).get("MaximumConcurrency")
            queue_sources.append(
                QueueSource(
                    queue_url=queue_urls[arn.rsplit(":", 1)[1]],
                    queue_arn=arn,
                    batch_size=int(mapping["BatchSize"]),
                    report_batch_item_failures="ReportBatchItemFailures" in response_types,
                    maximum_concurrency=None if concurrency is None else int(concurrency),
                    batching_window=int(mapping.get("MaximumBatchingWindowInSeconds") or 0),
                )
            )
        functions[logical_id] = FunctionSpec(
            logical_id=logical_id,
            code_dir=str(folder),
            handler=config["Handler"],
            timeout=int(config["Timeout"]),
            memory=int(config["MemorySize"]),
            # moto keeps a number from a !Ref'd Number parameter as a number; Lambda gives strings.
            environment={k: str(v) for k, v in variables.items()},
            queue_sources=queue_sources,
            bucket_sources=bucket_sources.get(logical_id, []),
            function_arn=config["FunctionArn"],
            async_invoke=async_configs.get(logical_id, AsyncInvokeConfig(_DEFAULT_RETRY_ATTEMPTS, None)),
        )
    return functions


def _async_invoke_configs(translated: dict[str, Any], physical: dict[str, str]) -> dict[str, AsyncInvokeConfig]:
    """Each function's EventInvokeConfig by function logical id, its destination queue resolved.

    Only SQS destinations can be played locally (a queue's physical id is its URL); another kind
    is refused rather than silently dropped.
    """
    configs = {}
    for logical_id, resource in translated["Resources"].items():
        if resource["Type"] != "AWS::Lambda::EventInvokeConfig":
            continue
        props = resource["Properties"]
        destination = props.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
        queue_url = None
        if destination is not None:
            target = destination.get("Fn::GetAtt", [None])[0] if isinstance(destination, dict) else None
            if translated["Resources"].get(target, {}).get("Type") != "AWS::SQS::Queue":
                raise StackError(f"{logical_id}: the local stack delivers on-failure records to an SQS queue "
                                 f"of the stack only, not to {destination!r}")
            queue_url = physical[target]
        retries = int(props.get("MaximumRetryAttempts", _DEFAULT_RETRY_ATTEMPTS))
        configs[props["FunctionName"]["Ref"]] = AsyncInvokeConfig(retries, queue_url)
    return configs


def _bucket_sources(
    translated: dict[str, Any], physical: dict[str, str]
) -> dict[str, list[BucketSource]]:
    """S3 event sources by function logical id, from the buckets' NotificationConfiguration.

    SAM writes one LambdaConfiguration per event type; those with the same bucket and filter
    are merged into one source.
    """
    merged: dict[tuple[str, str, str | None, str | None], list[str]] = {}
    for logical_id, resource in translated["Resources"].items():
        if resource["Type"] != "AWS::S3::Bucket":
            continue
        notifications = resource.get("Properties", {}).get("NotificationConfiguration", {})
        for config in notifications.get("LambdaConfigurations", []):
            function_id = config["Function"]["Fn::GetAtt"][0]
            rules = config.get("Filter", {}).get("S3Key", {}).get("Rules", [])
            by_name = {r["Name"].lower(): r["Value"] for r in rules}
            key = (function_id, physical[logical_id], by_name.get("suffix"), by_name.get("prefix"))
            merged.setdefault(key, []).append(config["Event"])
    sources: dict[str, list[BucketSource]] = {}
    for (function_id, bucket, suffix, prefix), events in merged.items():
        sources.setdefault(function_id, []).append(
            BucketSource(bucket=bucket, events=events, suffix=suffix, prefix=prefix)
        )
    return sources
