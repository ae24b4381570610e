"""The local stack is provisioned from template.yaml on a moto server, resolved and safe to poll."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from parallelrun.core.errors import ConflictError, StackError
from parallelrun.local.provision import ProvisionedStack, provision

ROOT = Path(__file__).resolve().parents[1]
# moto keeps one state per process: the in-process server shares it with mock_aws, so this
# module uses a stack name of its own.
STACK = "provision-test"
PARAMETERS = {"WorkerTimeout": "60", "BatchVisibilityTimeout": "70", "MaxReceiveCount": "2"}
FUNCTIONS = {"PlannerFunction", "WorkerFunction", "AggregatorFunction", "FailureRecorderFunction"}
QUEUE_VARIABLES = {
    "PARALLELRUN_BATCH_QUEUE_URL": "BatchQueueUrl",
    "PARALLELRUN_ECS_QUEUE_URL": "EcsBatchQueueUrl",
    "PARALLELRUN_PLANNER_QUEUE_URL": "PlannerQueueUrl",
    "PARALLELRUN_FINALIZE_QUEUE_URL": "FinalizeQueueUrl",
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def stack(endpoint: str) -> ProvisionedStack:
    started = time.perf_counter()
    provisioned = provision(endpoint, stack_name=STACK, parameters=PARAMETERS)
    # About 1.5 s on 2 cores, ~1 s of it moto importing its CloudFormation module once.
    assert time.perf_counter() - started < 20
    return provisioned


@pytest.fixture(scope="module")
def aws(endpoint: str) -> Any:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    return lambda service: session.client(service, endpoint_url=endpoint)


def _queue_attributes(aws: Any, url: str) -> dict[str, str]:
    return aws("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def test_outputs_name_real_resources(stack: ProvisionedStack, aws: Any) -> None:
    outputs = stack.outputs
    assert outputs["InputBucketName"] == f"{STACK}-input-123456789012-us-east-1"
    aws("s3").head_bucket(Bucket=outputs["InputBucketName"])
    aws("s3").head_bucket(Bucket=outputs["ArtifactsBucketName"])
    assert outputs["MaxReceiveCount"] == "2"
    assert outputs["WorkerTimeout"] == "60"
    assert outputs["WorkerBatchSize"] == "1"
    assert outputs["MaxInflightBatches"] == "200"
    assert outputs["WorkerMaxConcurrency"] == "100"
    assert outputs["PlannerInputsPerInvocation"] == "2000"
    for key in ("PlannerFunctionName", "WorkerFunctionName", "AggregatorFunctionName", "FailureRecorderFunctionName"):
        aws("lambda").get_function_configuration(FunctionName=outputs[key])


def test_queues_have_overridden_visibility_and_redrive(stack: ProvisionedStack, aws: Any) -> None:
    batch = _queue_attributes(aws, stack.outputs["BatchQueueUrl"])
    dlq = _queue_attributes(aws, stack.outputs["BatchDeadLetterQueueUrl"])
    assert batch["VisibilityTimeout"] == "70"
    assert json.loads(batch["RedrivePolicy"]) == {"deadLetterTargetArn": dlq["QueueArn"], "maxReceiveCount": 2}
    assert dlq["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    for key in ("PlannerQueueUrl", "FinalizeQueueUrl"):
        attributes = _queue_attributes(aws, stack.outputs[key])
        assert attributes["VisibilityTimeout"] == "5400"
        target = json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"]
        assert aws("sqs").get_queue_url(QueueName=target.rsplit(":", 1)[1])["QueueUrl"]


def test_table_has_pk_and_sk(stack: ProvisionedStack, aws: Any) -> None:
    table = aws("dynamodb").describe_table(TableName=stack.outputs["TableName"])["Table"]
    assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {("pk", "HASH"), ("sk", "RANGE")}
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_functions_have_resolved_environment(stack: ProvisionedStack, aws: Any) -> None:
    assert set(stack.functions) == FUNCTIONS
    for spec in stack.functions.values():
        env = spec.environment
        assert all(isinstance(v, str) for v in env.values())
        assert env["PARALLELRUN_TABLE"] == stack.outputs["TableName"]
        assert env["PARALLELRUN_INPUT_BUCKET"] == stack.outputs["InputBucketName"]
        assert env["PARALLELRUN_ARTIFACTS_BUCKET"] == stack.outputs["ArtifactsBucketName"]
        for variable, output in QUEUE_VARIABLES.items():
            assert env[variable] == stack.outputs[output]
            assert _queue_attributes(aws, env[variable])["QueueArn"].endswith(env[variable].rsplit("/", 1)[1])
        assert env["PARALLELRUN_MAX_RECEIVE_COUNT"] == "2"
        assert env["PARALLELRUN_WORKER_TIMEOUT"] == "60"
        assert env["PARALLELRUN_WORKER_BATCH_SIZE"] == "1"
        assert env["PARALLELRUN_WORKER_MAX_CONCURRENCY"] == "100"
        assert env["PARALLELRUN_MAX_INFLIGHT_BATCHES"] == "200"
        assert env["PARALLELRUN_PLANNER_INTERVAL"] == "2"
        assert env["PARALLELRUN_PLANNER_INPUTS_PER_INVOCATION"] == "2000"
        assert spec.handler == "app.handler"
        assert (Path(spec.code_dir) / "app.py").is_file()


def test_function_limits_and_code_folders(stack: ProvisionedStack) -> None:
    worker = stack.functions["WorkerFunction"]
    assert Path(worker.code_dir) == ROOT / "functions" / "worker"
    assert (worker.timeout, worker.memory) == (60, 1769)
    assert Path(stack.functions["FailureRecorderFunction"].code_dir) == ROOT / "functions" / "failure_recorder"
    assert stack.functions["FailureRecorderFunction"].timeout == 60


def test_event_sources(stack: ProvisionedStack) -> None:
    (worker,) = stack.functions["WorkerFunction"].queue_sources
    assert worker.queue_url == stack.outputs["BatchQueueUrl"]
    assert worker.queue_arn.endswith(":" + worker.queue_url.rsplit("/", 1)[1])
    assert worker.report_batch_item_failures is True
    assert (worker.batch_size, worker.maximum_concurrency) == (1, 100)
    assert stack.functions["WorkerFunction"].bucket_sources == []

    recorders = stack.functions["FailureRecorderFunction"].queue_sources
    assert stack.outputs["BatchDeadLetterQueueUrl"] in {r.queue_url for r in recorders}
    assert sorted(r.queue_url.rsplit("/", 1)[1].split("-")[-2] for r in recorders) == [
        "BatchDeadLetterQueue", "FinalizeDeadLetterQueue", "PlannerDeadLetterQueue", "PlannerFailureQueue"]
    assert all((r.batch_size, r.report_batch_item_failures) == (10, True) for r in recorders)

    (aggregator,) = stack.functions["AggregatorFunction"].queue_sources
    assert aggregator.queue_url == stack.outputs["FinalizeQueueUrl"]

    planner = stack.functions["PlannerFunction"]
    assert [q.queue_url for q in planner.queue_sources] == [stack.outputs["PlannerQueueUrl"]]
    (bucket,) = planner.bucket_sources
    assert bucket.bucket == stack.outputs["InputBucketName"]
    assert bucket.events == ["s3:ObjectCreated:*"]
    assert (bucket.suffix, bucket.prefix) == ("_READY", None)
    # Its asynchronous (S3) invocations: EventInvokeConfig, which moto's CloudFormation cannot create.
    assert planner.async_invoke.maximum_retry_attempts == 2
    assert planner.async_invoke.on_failure_queue_url in {r.queue_url for r in recorders}
    assert planner.function_arn.startswith("arn:aws:lambda:us-east-1:") and "PlannerFunction" in planner.function_arn


def test_nothing_steals_messages_from_mapped_queues(stack: ProvisionedStack, aws: Any) -> None:
    # With an enabled event source mapping, moto receives each sent message itself (trying to
    # run the function in Docker), which spends one of the message's receives.
    sqs = aws("sqs")
    for spec in stack.functions.values():
        for source in spec.queue_sources:
            sqs.send_message(QueueUrl=source.queue_url, MessageBody=f"probe {spec.logical_id}")
            received = sqs.receive_message(
                QueueUrl=source.queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
            ).get("Messages", [])
            assert [m["Body"] for m in received] == [f"probe {spec.logical_id}"]
            assert received[0]["Attributes"]["ApproximateReceiveCount"] == "1"
            sqs.delete_message(QueueUrl=source.queue_url, ReceiptHandle=received[0]["ReceiptHandle"])


def test_ready_marker_upload_works(stack: ProvisionedStack, aws: Any) -> None:
    s3 = aws("s3")
    bucket = stack.outputs["InputBucketName"]
    s3.put_object(Bucket=bucket, Key="endpoint/folder/_READY", Body=b"{}")
    assert s3.get_object(Bucket=bucket, Key="endpoint/folder/_READY")["Body"].read() == b"{}"


def test_provision_is_idempotent(stack: ProvisionedStack, endpoint: str, aws: Any) -> None:
    again = provision(endpoint, stack_name=STACK, parameters=PARAMETERS)
    assert again == stack
    assert [s["StackName"] for s in aws("cloudformation").describe_stacks()["Stacks"]].count(STACK) == 1


def test_existing_stack_with_other_parameters_is_refused(stack: ProvisionedStack, endpoint: str) -> None:
    with pytest.raises(ConflictError, match="BatchVisibilityTimeout"):
        provision(endpoint, stack_name=STACK, parameters={"BatchVisibilityTimeout": "60"})


def test_unknown_parameter_is_refused(stack: ProvisionedStack, endpoint: str) -> None:
    with pytest.raises(StackError, match="BatchVisibilityTimout"):
        provision(endpoint, stack_name=STACK, parameters={"BatchVisibilityTimout": "7"})
