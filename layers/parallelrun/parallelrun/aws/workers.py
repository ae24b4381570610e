"""A deployment's own worker on a deployed stack: a Lambda layer of its requirements, its own
batch queue, a function configured like the stack's worker with that layer added, and the event
source between them. Made by ``deployments create`` for a deployment with requirements, removed
with the deployment; the planner sends that deployment's mini-batches to its queue.

The stack's worker is the model: the new function copies its runtime, handler, role, timeout,
memory, storage, environment and layers (read from the event source on the stack's batch queue,
so a stack deployed under any name is found), and its code, downloaded through the presigned URL
GetFunction gives. The queue copies the batch queue's visibility timeout and redrive policy: its
dead-letter queue is the stack's, whose failure recorder counts a mini-batch that exhausted its
tries wherever it ran (DESIGN invariant 2). Lambda's size limits are checked before anything is
created; a failure half-way removes what was made.
"""

from __future__ import annotations

import hashlib
import io
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parallelrun import aws
from parallelrun.aws.config import StackConfig
from parallelrun.core.environments import PYTHON_VERSION, LambdaSizes
from parallelrun.core.errors import InputError, StackError

FUNCTION_NAME_LIMIT = 64  # Lambda's limit on a function's name (queues allow 80, layers 140)
# What the deployment's function is told, beyond the stack worker's environment.
ENVIRONMENT_VAR = "PARALLELRUN_ENVIRONMENT"  # the requirements' id its layer was built for
QUEUE_VAR = "PARALLELRUN_BATCH_QUEUE_URL"  # its own batch queue (a failed attempt's visibility is changed there)


def _download(url: str) -> bytes:
    """A function's code or a layer's zip, through the presigned URL Lambda gives (valid 10 minutes:
    https://docs.aws.amazon.com/lambda/latest/api/API_FunctionCodeLocation.html)."""
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 (an https URL from Lambda)
        return response.read()


def worker_name(cfg: StackConfig, endpoint: str, deployment: str) -> str:
    """The name of the deployment's function, queue and layer: the stack's prefix (which the roles'
    grants name) and a hash of the deployment's name, refused if Lambda would refuse it."""
    name = cfg.deployment_worker_prefix + hashlib.sha256(f"{endpoint}/{deployment}".encode()).hexdigest()[:16]
    if len(name) > FUNCTION_NAME_LIMIT:
        raise StackError(f"a deployment's worker would be named {name!r}, over Lambda's {FUNCTION_NAME_LIMIT} "
                         "characters: deploy the stack under a shorter name")
    return name


def unzipped_size(data: bytes) -> int:
    """What a zip takes once extracted, from its central directory."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return sum(info.file_size for info in archive.infolist())


@dataclass(frozen=True)
class StackWorker:
    """The stack's worker as a deployment's function copies it."""

    configuration: dict[str, Any]  # GetFunction's Configuration
    code: bytes
    mapping: dict[str, Any]  # its event source mapping on the batch queue
    unzipped: int  # its code and layers, extracted


def stack_worker(cfg: StackConfig) -> StackWorker:
    """The function that reads the stack's batch queue, with its code and its size unzipped."""
    lam = aws.client("lambda")
    queue_arn = _queue_attributes(cfg.batch_queue_url)["QueueArn"]
    mappings = lam.list_event_source_mappings(EventSourceArn=queue_arn)["EventSourceMappings"]
    if not mappings:
        raise StackError(f"no function reads the stack's batch queue {cfg.batch_queue_url}: is the stack deployed?")
    function = lam.get_function(FunctionName=mappings[0]["FunctionArn"])
    configuration = function["Configuration"]
    if configuration.get("PackageType") == "Image":
        raise InputError("the stack's worker is a container image (WorkerPackageType=Image), which takes no layers: "
                         "install the deployment's requirements in the image (functions/worker/Dockerfile)")
    code = _download(function["Code"]["Location"])
    layers = [_download(lam.get_layer_version_by_arn(Arn=layer["Arn"])["Content"]["Location"])
              for layer in configuration.get("Layers", [])]
    return StackWorker(configuration, code, mappings[0], unzipped_size(code) + sum(map(unzipped_size, layers)))


def _queue_attributes(url: str) -> dict[str, str]:
    return aws.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def create(cfg: StackConfig, name: str, layer_zip: Path, environment_id: str) -> str:
    """Make the deployment's worker named ``name`` from ``layer_zip`` (see the module doc); returns
    its batch queue's URL. Lambda's limits are checked first: nothing is made if they refuse it."""
    base = stack_worker(cfg)
    layer = layer_zip.read_bytes()
    sizes = LambdaSizes(len(layer), unzipped_size(layer), base.unzipped, len(base.configuration.get("Layers", [])))
    if sizes.problems():
        raise InputError("the deployment's requirements do not fit a Lambda worker: " + "; ".join(sizes.problems())
                         + " (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html)")
    batch = _queue_attributes(cfg.batch_queue_url)
    config = base.configuration
    if int(batch["VisibilityTimeout"]) < int(config["Timeout"]):
        raise StackError(f"the stack's batch queue's visibility timeout ({batch['VisibilityTimeout']} s) is below its "
                         f"worker's timeout ({config['Timeout']} s): Lambda would refuse the event source")
    lam, sqs = aws.client("lambda"), aws.client("sqs")
    try:
        version = lam.publish_layer_version(LayerName=name, Content={"ZipFile": layer},
                                            CompatibleRuntimes=[f"python{PYTHON_VERSION}"],
                                            Description=f"requirements {environment_id}")["LayerVersionArn"]
        queue_url = sqs.create_queue(QueueName=name, Attributes={
            "VisibilityTimeout": batch["VisibilityTimeout"], "RedrivePolicy": batch["RedrivePolicy"],
            "SqsManagedSseEnabled": "true"})["QueueUrl"]
        # str(): moto gives a template's numeric variables back as numbers, which CreateFunction refuses.
        variables = {**{k: str(v) for k, v in config.get("Environment", {}).get("Variables", {}).items()},
                     QUEUE_VAR: queue_url, ENVIRONMENT_VAR: environment_id}
        # Layers are extracted in order, a later one's files over an earlier one's: the
        # deployment's packages go last, so its versions win
        # (https://docs.aws.amazon.com/lambda/latest/dg/adding-layers.html).
        lam.create_function(
            FunctionName=name, Runtime=config["Runtime"], Handler=config["Handler"], Role=config["Role"],
            Code={"ZipFile": base.code}, Timeout=config["Timeout"], MemorySize=config["MemorySize"],
            EphemeralStorage=config.get("EphemeralStorage", {"Size": 512}),
            Architectures=config.get("Architectures", ["x86_64"]), Environment={"Variables": variables},
            Layers=[layer["Arn"] for layer in config.get("Layers", [])] + [version],
            Description=f"parallelrun worker of a deployment with requirements {environment_id}")
        lam.get_waiter("function_active_v2").wait(FunctionName=name)
        mapping = base.mapping
        lam.create_event_source_mapping(
            EventSourceArn=_queue_attributes(queue_url)["QueueArn"], FunctionName=name,
            BatchSize=mapping.get("BatchSize", 10), FunctionResponseTypes=mapping.get("FunctionResponseTypes", []),
            **({"ScalingConfig": mapping["ScalingConfig"]} if mapping.get("ScalingConfig") else {}))
    except Exception:
        delete(name)
        raise
    return queue_url


def delete(name: str) -> None:
    """Remove the worker named ``name``: its event sources first (so nothing reads the queue), the
    function, the queue and every version of its layer; what is already gone is skipped."""
    lam, sqs = aws.client("lambda"), aws.client("sqs")
    try:
        for mapping in lam.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]:
            lam.delete_event_source_mapping(UUID=mapping["UUID"])
        lam.delete_function(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        pass
    try:
        sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])
    except sqs.exceptions.QueueDoesNotExist:
        pass
    for version in lam.list_layer_versions(LayerName=name).get("LayerVersions", []):
        lam.delete_layer_version(LayerName=name, VersionNumber=version["Version"])


def queue_holds_messages(queue_url: str) -> bool:
    """Whether mini-batches wait in the queue or are being scored from it (approximate, as SQS counts)."""
    found = _queue_attributes(queue_url)
    return any(int(found.get(a, 0)) for a in ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                                              "ApproximateNumberOfMessagesDelayed"))

