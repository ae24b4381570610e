"""The stack's functions as a local runtime calls them: each one's code folder, handler, limits,
resolved environment and event sources, and how Lambda handles its failed asynchronous invocations.

Read from moto's Lambda (configurations and SQS event source mappings, which are disabled as they
are read) and from the translated template (S3 event sources and EventInvokeConfigs, which moto's
CloudFormation ignores); see :mod:`parallelrun.local.provision` for why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallelrun.core.errors import StackError

# Lambda's retries of a failed asynchronous invocation when EventInvokeConfig sets none
# (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html).
_DEFAULT_RETRY_ATTEMPTS = 2


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


def function_ids(translated: dict[str, Any], physical: dict[str, str]) -> list[str]:
    """The functions the stack created (a false Condition leaves one out), all with local code."""
    created = [
        k for k, r in translated["Resources"].items() if r["Type"] == "AWS::Lambda::Function" and k in physical
    ]
    images = [k for k in created if translated["Resources"][k]["Properties"].get("PackageType") == "Image"]
    if images:
        raise StackError(f"{', '.join(images)}: the local stack runs Zip functions only (WorkerPackageType=Zip)")
    return created


def read_functions(
    lam: Any,
    queue_urls: dict[str, str],
    translated: dict[str, Any],
    physical: dict[str, str],
    code_dirs: dict[str, Path],
) -> dict[str, FunctionSpec]:
    """Each function's resolved configuration and event sources.

    Disables every SQS mapping it reads (see parallelrun.local.provision): the local runtime polls.
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
