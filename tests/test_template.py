"""template.yaml: lints clean and declares the resources and wiring the rest of the code relies on."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template.yaml"

RESOURCES = {
    "InputBucket": "AWS::S3::Bucket",
    "ArtifactsBucket": "AWS::S3::Bucket",
    "BatchQueue": "AWS::SQS::Queue",
    "BatchDeadLetterQueue": "AWS::SQS::Queue",
    "PlannerQueue": "AWS::SQS::Queue",
    "PlannerDeadLetterQueue": "AWS::SQS::Queue",
    "FinalizeQueue": "AWS::SQS::Queue",
    "FinalizeDeadLetterQueue": "AWS::SQS::Queue",
    "PlannerFailureQueue": "AWS::SQS::Queue",
    "InputBucketPolicy": "AWS::S3::BucketPolicy",
    "ArtifactsBucketPolicy": "AWS::S3::BucketPolicy",
    "Table": "AWS::DynamoDB::Table",
    "ParallelRunLayer": "AWS::Serverless::LayerVersion",
    "PlannerFunction": "AWS::Serverless::Function",
    "WorkerFunction": "AWS::Serverless::Function",
    "AggregatorFunction": "AWS::Serverless::Function",
    "FailureRecorderFunction": "AWS::Serverless::Function",
}
OUTPUTS = {
    "InputBucketName",
    "ArtifactsBucketName",
    "TableName",
    "BatchQueueUrl",
    "EcsBatchQueueUrl",
    "BatchDeadLetterQueueUrl",
    "PlannerQueueUrl",
    "FinalizeQueueUrl",
    "WorkerTimeout",
    "WorkerBatchSize",
    "MaxReceiveCount",
    "MaxInflightBatches",
    "PlannerInterval",
    "PlannerInputsPerInvocation",
    "WorkerMaxConcurrency",
    "PlannerFunctionName",
    "WorkerFunctionName",
    "AggregatorFunctionName",
    "FailureRecorderFunctionName",
}
ENVIRONMENT = {
    "PARALLELRUN_TABLE",
    "PARALLELRUN_SCORING_ROLE_ARN",
    "PARALLELRUN_INPUT_BUCKET",
    "PARALLELRUN_ARTIFACTS_BUCKET",
    "PARALLELRUN_BATCH_QUEUE_URL",
    "PARALLELRUN_ECS_QUEUE_URL",
    "PARALLELRUN_PLANNER_QUEUE_URL",
    "PARALLELRUN_FINALIZE_QUEUE_URL",
    "PARALLELRUN_WORKER_TIMEOUT",
    "PARALLELRUN_WORKER_BATCH_SIZE",
    "PARALLELRUN_WORKER_MAX_CONCURRENCY",
    "PARALLELRUN_MAX_RECEIVE_COUNT",
    "PARALLELRUN_MAX_INFLIGHT_BATCHES",
    "PARALLELRUN_AGGREGATE_BATCHES_PER_INVOCATION",
    "PARALLELRUN_PLANNER_INTERVAL",
    "PARALLELRUN_PLANNER_INPUTS_PER_INVOCATION",
}
# Handler folder -> the core module its app.handler must delegate to.
HANDLERS = {
    "PlannerFunction": "pipeline.planner",
    "WorkerFunction": "pipeline.worker",
    "AggregatorFunction": "pipeline.aggregator",
    "FailureRecorderFunction": "pipeline.failure_recorder",
}
@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded, matches = decode(str(TEMPLATE))
    assert not matches, matches
    return loaded


def _props(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    return template["Resources"][logical_id]["Properties"]


def _sqs_events(template: dict[str, Any], function: str) -> list[dict[str, Any]]:
    events = _props(template, function).get("Events", {}).values()
    return [e["Properties"] for e in events if e["Type"] == "SQS"]


def test_cfn_lint_reports_nothing() -> None:
    # cfn-lint has no __main__; run its entry point with this interpreter.
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())", str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_resources_and_outputs_are_declared(template: dict[str, Any]) -> None:
    types_by_id = {k: v["Type"] for k, v in template["Resources"].items()}
    assert {k: types_by_id.get(k) for k in RESOURCES} == RESOURCES
    assert OUTPUTS <= set(template["Outputs"])


def test_every_function_gets_every_environment_variable(template: dict[str, Any]) -> None:
    assert set(template["Globals"]["Function"]["Environment"]["Variables"]) == ENVIRONMENT
    for function in HANDLERS:
        assert "Environment" not in _props(template, function), f"{function} overrides Globals"


def test_worker_reports_batch_item_failures(template: dict[str, Any]) -> None:
    (worker,) = _sqs_events(template, "WorkerFunction")
    assert worker["Queue"] == {"Fn::GetAtt": ["BatchQueue", "Arn"]}
    assert worker["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert worker["BatchSize"] == {"Ref": "WorkerBatchSize"}
    assert worker["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "WorkerMaxConcurrency"}}
    # Every dead-letter queue has a consumer, so whatever gives up still ends its job.
    recorder = _sqs_events(template, "FailureRecorderFunction")
    assert sorted(e["Queue"]["Fn::GetAtt"][0] for e in recorder) == [
        "BatchDeadLetterQueue", "FinalizeDeadLetterQueue", "PlannerDeadLetterQueue", "PlannerFailureQueue"]
    assert all(e["FunctionResponseTypes"] == ["ReportBatchItemFailures"] for e in recorder)


def test_batch_queue_redrives_after_max_receive_count(template: dict[str, Any]) -> None:
    redrive = _props(template, "BatchQueue")["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["BatchDeadLetterQueue", "Arn"]}
    assert redrive["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    assert template["Parameters"]["MaxReceiveCount"]["Default"] == 3
    assert _props(template, "BatchQueue")["VisibilityTimeout"] == {"Ref": "BatchVisibilityTimeout"}
    for queue, dlq in (("PlannerQueue", "PlannerDeadLetterQueue"), ("FinalizeQueue", "FinalizeDeadLetterQueue")):
        props = _props(template, queue)
        assert props["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": [dlq, "Arn"]}
        assert props["VisibilityTimeout"] >= 6 * 900  # 6 x the consuming function's timeout


def test_buckets_are_encrypted_and_private(template: dict[str, Any]) -> None:
    for bucket in ("InputBucket", "ArtifactsBucket"):
        props = _props(template, bucket)
        (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        rules = props["LifecycleConfiguration"]["Rules"]
        assert any(r.get("AbortIncompleteMultipartUpload") == {"DaysAfterInitiation": 1} for r in rules)


def _value(template: dict[str, Any], value: Any) -> Any:
    """A literal, or the default of the parameter it !Refs."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return template["Parameters"][value["Ref"]]["Default"]
    return value


def test_buckets_deny_requests_without_tls(template: dict[str, Any]) -> None:
    policies = {_props(template, k)["Bucket"]["Ref"]: _props(template, k)["PolicyDocument"]
                for k, v in template["Resources"].items() if v["Type"] == "AWS::S3::BucketPolicy"}
    assert set(policies) == {"InputBucket", "ArtifactsBucket"}
    for bucket, document in policies.items():
        (deny,) = [s for s in document["Statement"] if s["Effect"] == "Deny"]
        assert deny["Principal"] == "*" and deny["Action"] == "s3:*"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        # Both the bucket (list, policy calls) and every object in it.
        assert deny["Resource"] == [{"Fn::GetAtt": [bucket, "Arn"]}, {"Fn::Sub": f"${{{bucket}.Arn}}/*"}]
    # Still named by string, not by !Ref (see test_planner_starts_on_ready_markers).
    assert "BucketName" in _props(template, "InputBucket")


def test_data_outlives_the_stack(template: dict[str, Any]) -> None:
    for logical_id in ("InputBucket", "ArtifactsBucket", "Table"):
        resource = template["Resources"][logical_id]
        assert (resource.get("DeletionPolicy"), resource.get("UpdateReplacePolicy")) == ("Retain", "Retain"), logical_id


def test_table_is_encrypted_and_recoverable(template: dict[str, Any]) -> None:
    props = _props(template, "Table")
    assert props["SSESpecification"] == {"SSEEnabled": True}  # the AWS managed KMS key (checkov-skips.yaml)
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_artifacts_are_versioned_and_old_versions_expire(template: dict[str, Any]) -> None:
    props = _props(template, "ArtifactsBucket")
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    expiring = [r for r in props["LifecycleConfiguration"]["Rules"]
                if r["Status"] == "Enabled" and "NoncurrentVersionExpiration" in r]
    assert expiring and 0 < expiring[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] <= 90


def test_control_functions_have_reserved_concurrency_their_sources_fit_in(template: dict[str, Any]) -> None:
    # AWS: keep the reserved concurrency >= the sum of the SQS event sources' MaximumConcurrency,
    # or Lambda throttles messages it already received (each throttle spends a receive).
    for function in ("PlannerFunction", "AggregatorFunction", "FailureRecorderFunction"):
        reserved = _props(template, function)["ReservedConcurrentExecutions"]
        sources = _sqs_events(template, function)
        assert all("MaximumConcurrency" in s.get("ScalingConfig", {}) for s in sources), function
        assert sum(s["ScalingConfig"]["MaximumConcurrency"] for s in sources) <= reserved, function
    # The planner keeps room for its asynchronous (S3) invocations too.
    planner = _sqs_events(template, "PlannerFunction")
    assert sum(s["ScalingConfig"]["MaximumConcurrency"] for s in planner) < _props(
        template, "PlannerFunction")["ReservedConcurrentExecutions"]


def test_planner_failures_reach_the_failure_recorder(template: dict[str, Any]) -> None:
    config = _props(template, "PlannerFunction")["EventInvokeConfig"]
    assert 0 <= config["MaximumRetryAttempts"] <= 2
    assert config["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS", "Destination": {"Fn::GetAtt": ["PlannerFailureQueue", "Arn"]}}
    assert any(e["Queue"] == {"Fn::GetAtt": ["PlannerFailureQueue", "Arn"]}
               for e in _sqs_events(template, "FailureRecorderFunction"))


def test_every_queue_is_encrypted_and_outlasts_its_readers_timeout(template: dict[str, Any]) -> None:
    """Lambda refuses at deploy an SQS event source whose queue's visibility timeout is below the
    function's timeout (moto accepts it); AWS recommends 6 x the timeout
    (https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-configure.html)."""
    queues = [k for k, v in template["Resources"].items() if v["Type"] == "AWS::SQS::Queue"]
    assert all(_props(template, q).get("SqsManagedSseEnabled") is True for q in queues)
    read = set()
    for function, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        timeout = _value(template, _props(template, function)["Timeout"])
        for source in _sqs_events(template, function):
            queue = source["Queue"]["Fn::GetAtt"][0]
            read.add(queue)
            visibility = _value(template, _props(template, queue).get("VisibilityTimeout", 30))  # SQS's default
            assert visibility >= 6 * timeout, f"{queue} ({visibility} s) read by {function} (timeout {timeout} s)"
    # Every queue has a reader whose timeout was checked, but the ECS queue, which no Lambda reads:
    # its long-running workers extend each message's visibility while they work.
    assert read == set(queues) - {"EcsBatchQueue"}
    assert "EcsBatchQueue" not in {s["Queue"]["Fn::GetAtt"][0] for f in HANDLERS for s in _sqs_events(template, f)}


def test_planner_starts_on_ready_markers(template: dict[str, Any]) -> None:
    events = _props(template, "PlannerFunction")["Events"].values()
    (s3,) = [e["Properties"] for e in events if e["Type"] == "S3"]
    assert s3["Bucket"] == {"Ref": "InputBucket"}
    assert s3["Filter"]["S3Key"]["Rules"] == [{"Name": "suffix", "Value": "_READY"}]
    # The functions name the input bucket by the same string, never by !Ref (a circular dependency).
    name = _props(template, "InputBucket")["BucketName"]
    assert template["Globals"]["Function"]["Environment"]["Variables"]["PARALLELRUN_INPUT_BUCKET"] == name


def test_each_function_runs_as_a_role_of_its_own_without_wildcards(template: dict[str, Any]) -> None:
    # SAM's Policies (and the managed SQS execution role its SQS events add: sqs:* on *) are gone;
    # what each role grants is proved used and sufficient by tests/test_iam.py.
    roles = {}
    for function in [*HANDLERS, "WorkerImageFunction"]:
        props = _props(template, function)
        assert "Policies" not in props, function
        roles[function] = props["Role"]["Fn::GetAtt"]
    assert roles.pop("WorkerImageFunction") == roles["WorkerFunction"]  # one worker, two packagings
    assert len({role[0] for role in roles.values()}) == len(roles)
    for name in [*(role[0] for role in roles.values()), "ScoringRole"]:
        for policy in _props(template, name)["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert statement["Resource"] != "*" and "*" not in statement["Resource"], (name, statement)
                # No function deletes in S3 but in its own scratch: the aggregator its collated
                # ranges, the planner its listing's carries.
                scratch = {"AggregatorRole": "jobs/*/collated/*", "PlannerRole": "jobs/*/plan/carry-*"}
                own = [{"Fn::Sub": "${ArtifactsBucket.Arn}/" + scratch[name]}] if name in scratch else None
                deletes = [a for a in actions if "Delete" in a and a.startswith("s3:")]
                assert not [a for a in actions if "*" in a or "Acl" in a or "Lifecycle" in a], (name, actions)
                assert not deletes or (statement["Resource"] == own and actions == ["s3:DeleteObject"]), (name, statement)


@pytest.mark.parametrize("function", sorted(HANDLERS))
def test_handler_delegates_to_the_core(
    template: dict[str, Any], function: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    props = _props(template, function)
    module_file, _, attribute = props["Handler"].rpartition(".")
    app = ROOT / props["CodeUri"] / f"{module_file}.py"
    core = HANDLERS[function]
    calls = []
    stub = types.ModuleType(f"parallelrun.pipeline.{core}")
    stub.handle_event = lambda event, context: calls.append((event, context)) or "done"  # type: ignore[attr-defined]
    # Both places `from parallelrun.pipeline import <module>` looks: the package attribute (set once the real
    # module was imported) and sys.modules.
    package, _, name = f"parallelrun.{core}".rpartition(".")
    monkeypatch.setattr(importlib.import_module(package), name, stub, raising=False)
    monkeypatch.setitem(sys.modules, f"parallelrun.{core}", stub)

    spec = importlib.util.spec_from_file_location(f"app_{function}", app)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    assert getattr(module, attribute)({"Records": []}, "ctx") == "done"
    assert calls == [({"Records": []}, "ctx")]
