"""template.yaml: lints clean and declares the resources and wiring the rest of the code relies on."""

from __future__ import annotations

import importlib.util
import json
import re
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
    "PARALLELRUN_ECS_TASK",
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


# ---- the ECS workers (EcsWorkers cpu | gpu) -----------------------------------------------------

ECS_RESOURCES = {
    "EcsCluster": ("AWS::ECS::Cluster", "EcsOn"),
    "EcsClusterCapacity": ("AWS::ECS::ClusterCapacityProviderAssociations", "EcsOn"),
    "EcsLogGroup": ("AWS::Logs::LogGroup", "EcsOn"),
    "EcsSecurityGroup": ("AWS::EC2::SecurityGroup", "EcsOn"),
    "EcsExecutionRole": ("AWS::IAM::Role", "EcsOn"),
    "EcsTaskRole": ("AWS::IAM::Role", "EcsOn"),
    "EcsTaskAssumesScoringRole": ("AWS::IAM::Policy", "EcsOn"),
    "EcsTaskDefinition": ("AWS::ECS::TaskDefinition", "EcsOn"),
    "EcsService": ("AWS::ECS::Service", "EcsOn"),
    "EcsScalableTarget": ("AWS::ApplicationAutoScaling::ScalableTarget", "EcsOn"),
    "EcsBacklogScaling": ("AWS::ApplicationAutoScaling::ScalingPolicy", "EcsOn"),
    "EcsWakeUpScaling": ("AWS::ApplicationAutoScaling::ScalingPolicy", "EcsOn"),
    "EcsWakeUpAlarm": ("AWS::CloudWatch::Alarm", "EcsOn"),
    "EcsInstanceRole": ("AWS::IAM::Role", "EcsOnGpu"),
    "EcsInstanceProfile": ("AWS::IAM::InstanceProfile", "EcsOnGpu"),
    "EcsGpuLaunchTemplate": ("AWS::EC2::LaunchTemplate", "EcsOnGpu"),
    "EcsGpuAutoScalingGroup": ("AWS::AutoScaling::AutoScalingGroup", "EcsOnGpu"),
    "EcsGpuCapacityProvider": ("AWS::ECS::CapacityProvider", "EcsOnGpu"),
}
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def with_ecs_workers(mode: str) -> str:
    """template.yaml with EcsWorkers=``mode`` by default and its network and image given, as a
    deployment with ECS workers passes them: what cfn-lint and `sam validate` check for that path."""
    text = TEMPLATE.read_text()
    for name, value in (("EcsWorkers", mode), ("EcsVpcId", "vpc-0123456789abcdef0"),
                        ("EcsSubnets", "subnet-0123456789abcdef0,subnet-0fedcba9876543210"),
                        ("EcsWorkerImage", "123456789012.dkr.ecr.us-east-1.amazonaws.com/parallelrun-worker:1")):
        text, count = re.subn(rf"(\n  {name}:\n(?:    .*\n|      .*\n)*?    Default: )(\S+)", rf"\g<1>{value}", text)
        assert count == 1, name
    return text


def _lint(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "template.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())", str(path)],
        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", ["cpu", "gpu"])
def test_cfn_lint_reports_nothing_with_ecs_workers_on(mode: str, tmp_path: Path) -> None:
    text = with_ecs_workers(mode)
    assert f"    Default: {mode}\n" in text
    result = _lint(text, tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_ecs_resources_exist_only_behind_their_parameter(template: dict[str, Any]) -> None:
    found = {k: (v["Type"], v.get("Condition")) for k, v in template["Resources"].items() if k in ECS_RESOURCES}
    assert found == ECS_RESOURCES
    conditions = template["Conditions"]
    assert conditions["EcsOn"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "EcsWorkers"}, "none"]}]}
    assert template["Parameters"]["EcsWorkers"]["Default"] == "none"
    assert template["Parameters"]["EcsWorkers"]["AllowedValues"] == ["none", "cpu", "gpu"]
    # No other resource names an ECS resource unconditionally: only ScoringRole's trust does, under !If.
    ecs = set(ECS_RESOURCES)
    for logical_id, resource in template["Resources"].items():
        if logical_id in ecs:
            continue
        named = set(re.findall(r"\b(Ecs[A-Za-z]+)\b", json.dumps(resource))) & ecs
        assert not named or logical_id == "ScoringRole", (logical_id, named)
    trust = _props(template, "ScoringRole")["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["AWS"]
    assert trust == {"Fn::If": ["EcsOn", [{"Fn::GetAtt": ["WorkerRole", "Arn"]}, {"Fn::GetAtt": ["EcsTaskRole", "Arn"]}],
                                {"Fn::GetAtt": ["WorkerRole", "Arn"]}]}
    assert {k for k, v in template["Outputs"].items() if v.get("Condition") == "EcsOn"} == {
        "EcsTask", "EcsClusterName", "EcsServiceName"}


def test_the_ecs_task_runs_the_worker_command_with_its_health_check(template: dict[str, Any]) -> None:
    props = _props(template, "EcsTaskDefinition")
    (container,) = props["ContainerDefinitions"]
    assert container["EntryPoint"] == ["parallelrun", "worker"]
    assert container["Command"] == ["--stack", {"Ref": "AWS::StackName"}]
    assert container["Image"] == {"Ref": "EcsWorkerImage"}
    assert container["HealthCheck"]["Command"] == ["CMD", "parallelrun", "worker", "--health"]
    assert container["StopTimeout"] == 120  # Fargate's most: the worker's two minutes after SIGTERM
    assert container["ResourceRequirements"] == {"Fn::If": [
        "EcsOnGpu", [{"Type": "GPU", "Value": {"Ref": "EcsTaskGpus"}}], {"Ref": "AWS::NoValue"}]}
    variables = {v["Name"]: v["Value"] for v in container["Environment"]}
    assert variables["PARALLELRUN_SCORING_ROLE_ARN"] == {"Fn::GetAtt": ["ScoringRole", "Arn"]}
    assert props["RequiresCompatibilities"] == [{"Fn::If": ["EcsOnGpu", "EC2", "FARGATE"]}]
    assert props["NetworkMode"] == {"Fn::If": ["EcsOnGpu", "bridge", "awsvpc"]}
    assert (props["Cpu"], props["Memory"]) == ({"Ref": "EcsTaskCpu"}, {"Ref": "EcsTaskMemory"})
    assert props["TaskRoleArn"] == {"Fn::GetAtt": ["EcsTaskRole", "Arn"]}
    assert props["ExecutionRoleArn"] == {"Fn::GetAtt": ["EcsExecutionRole", "Arn"]}
    # The defaults are a task Fargate runs (core.compute's table of its sizes).
    from parallelrun.core import compute
    defaults = {name: template["Parameters"][name]["Default"] for name in ("EcsTaskCpu", "EcsTaskMemory")}
    assert defaults["EcsTaskMemory"] in compute.FARGATE_SIZES[defaults["EcsTaskCpu"]]


def test_the_worker_image_is_built_from_this_repository_for_that_command() -> None:
    """What a Docker build would need, checked without Docker (none on this machine: the image is
    unbuilt here): an official Python 3.11 slim base, a PyTorch CUDA runtime one by build arg, the
    package installed with its pinned tree, and the task definition's entry point."""
    text = DOCKERFILE.read_text()
    instructions = re.findall(r"^(ARG|FROM|COPY|RUN|USER|ENTRYPOINT|CMD) (.+?)$", text.replace("\\\n", " "),
                              re.MULTILINE)
    assert instructions[0] == ("ARG", "BASE=python:3.11-slim") and instructions[1] == ("FROM", "${BASE}")
    assert "--build-arg BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime" in text
    for source in [s for kind, args in instructions if kind == "COPY" for s in args.split()[:-1]]:
        assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
    (install,) = [args for kind, args in instructions if kind == "RUN" and "pip install" in args]
    assert "-c /tmp/parallelrun/constraints.txt /tmp/parallelrun" in install
    (entrypoint,) = [json.loads(args) for kind, args in instructions if kind == "ENTRYPOINT"]
    template, _ = decode(str(TEMPLATE))
    (container,) = _props(template, "EcsTaskDefinition")["ContainerDefinitions"]
    assert entrypoint == container["EntryPoint"] == ["parallelrun", "worker"]
    assert not [kind for kind, _ in instructions if kind == "CMD"]  # the task gives the arguments
    assert ("USER", "worker") in instructions
    assert 'parallelrun = "parallelrun.client.cli:main"' in (ROOT / "pyproject.toml").read_text()


def _statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [s for p in _props(template, role)["Policies"] for s in p["PolicyDocument"]["Statement"]]


def test_the_ecs_task_role_grants_what_the_worker_role_does_on_the_ecs_queue(template: dict[str, Any]) -> None:
    worker = [s for s in _statements(template, "WorkerRole") if not s["Action"][0].startswith("logs:")]
    for statement in worker:  # the Lambda worker's queues (the stack's, the deployments' own) → the ECS queue
        if "sqs:ReceiveMessage" in statement["Action"]:
            statement["Resource"] = [{"Fn::GetAtt": ["EcsBatchQueue", "Arn"]}]
    task = _statements(template, "EcsTaskRole")
    stack = [s for s in task if s["Action"] in (["cloudformation:DescribeStacks"], ["lambda:GetFunctionConfiguration"])]
    # What `parallelrun worker --stack` reads: the stack's outputs and the stack worker's environment.
    function = "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${AWS::StackName}-%s-*"
    assert stack == [
        {"Effect": "Allow", "Action": ["cloudformation:DescribeStacks"], "Resource": [{"Ref": "AWS::StackId"}]},
        {"Effect": "Allow", "Action": ["lambda:GetFunctionConfiguration"],
         "Resource": [{"Fn::Sub": function % name} for name in ("WorkerFunction", "WorkerImageFunction")]}]
    assert [s for s in task if s not in stack] == worker
    assume = _props(template, "EcsTaskAssumesScoringRole")
    assert assume["Roles"] == [{"Ref": "EcsTaskRole"}]
    assert assume["PolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": {"Fn::GetAtt": ["ScoringRole", "Arn"]}}]
    for role in ("EcsTaskRole", "EcsExecutionRole"):
        (trust,) = _props(template, role)["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
        assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    # The execution role pulls and logs; its one "*" is ECR's token, which names no resource.
    execution = _statements(template, "EcsExecutionRole")
    assert [s["Action"] for s in execution if s["Resource"] == "*"] == [["ecr:GetAuthorizationToken"]]
    assert [s["Resource"] for s in execution if s["Action"][0].startswith("logs:")] == [
        [{"Fn::GetAtt": ["EcsLogGroup", "Arn"]}]]
    for statement in task:
        assert statement["Resource"] != "*" and not any("*" in a for a in statement["Action"]), statement


def test_the_ecs_service_scales_on_the_queue_s_backlog_per_task_down_to_zero(template: dict[str, Any]) -> None:
    target = _props(template, "EcsScalableTarget")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, {"Ref": "EcsMaxTasks"})
    assert target["ResourceId"] == {"Fn::Sub": "service/${EcsCluster}/${EcsService.Name}"}
    assert (target["ServiceNamespace"], target["ScalableDimension"]) == ("ecs", "ecs:service:DesiredCount")
    assert _props(template, "EcsService")["DesiredCount"] == 0

    policy = _props(template, "EcsBacklogScaling")
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert policy["ScalingTargetId"] == {"Ref": "EcsScalableTarget"}
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == {"Ref": "EcsBacklogPerTask"}
    metrics = {m["Id"]: m for m in config["CustomizedMetricSpecification"]["Metrics"]}
    queue = [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["EcsBatchQueue", "QueueName"]}}]
    assert metrics["waiting"]["MetricStat"]["Metric"] == {
        "Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible", "Dimensions": queue}
    assert metrics["working"]["MetricStat"]["Metric"] == {
        "Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesNotVisible", "Dimensions": queue}
    service = [{"Name": "ClusterName", "Value": {"Ref": "EcsCluster"}},
               {"Name": "ServiceName", "Value": {"Fn::GetAtt": ["EcsService", "Name"]}}]
    assert metrics["tasks"]["MetricStat"]["Metric"] == {
        "Namespace": "ECS/ContainerInsights", "MetricName": "RunningTaskCount", "Dimensions": service}
    assert [m["Id"] for m in metrics.values() if m["ReturnData"]] == ["backlog_per_task"]
    assert metrics["backlog_per_task"]["Expression"] == "IF(FILL(tasks, 0) > 0, (waiting + working) / tasks, 0)"
    # Container Insights publishes RunningTaskCount.
    assert _props(template, "EcsCluster")["ClusterSettings"] == [{"Name": "containerInsights", "Value": "enabled"}]

    # From zero: a backlog with no task running sets one task.
    alarm = _props(template, "EcsWakeUpAlarm")
    assert alarm["AlarmActions"] == [{"Ref": "EcsWakeUpScaling"}]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    (expression,) = [m["Expression"] for m in alarm["Metrics"] if m["ReturnData"]]
    assert expression == "IF(FILL(tasks, 0) < 1, FILL(waiting, 0), 0)"
    wake = _props(template, "EcsWakeUpScaling")["StepScalingPolicyConfiguration"]
    assert wake["AdjustmentType"] == "ExactCapacity"
    assert wake["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]


def test_capacity_is_fargate_for_cpu_and_gpu_instances_for_gpu(template: dict[str, Any]) -> None:
    capacity = _props(template, "EcsClusterCapacity")
    assert capacity["CapacityProviders"] == {"Fn::If": [
        "EcsOnGpu", [{"Ref": "EcsGpuCapacityProvider"}], ["FARGATE"]]}
    strategy = {"Fn::If": ["EcsOnGpu", {"Ref": "EcsGpuCapacityProvider"}, "FARGATE"]}
    assert [s["CapacityProvider"] for s in _props(template, "EcsService")["CapacityProviderStrategy"]] == [strategy]
    provider = _props(template, "EcsGpuCapacityProvider")["AutoScalingGroupProvider"]
    assert provider["AutoScalingGroupArn"] == {"Ref": "EcsGpuAutoScalingGroup"}
    assert provider["ManagedScaling"]["Status"] == "ENABLED"
    group = _props(template, "EcsGpuAutoScalingGroup")
    assert (group["MinSize"], group["MaxSize"]) == ("0", {"Ref": "EcsMaxTasks"})
    data = _props(template, "EcsGpuLaunchTemplate")["LaunchTemplateData"]
    assert data["ImageId"] == "{{resolve:ssm:/aws/service/ecs/optimized-ami/amazon-linux-2/gpu/recommended/image_id}}"
    assert data["InstanceType"] == {"Ref": "EcsGpuInstanceType"}
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    user_data = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert "ECS_CLUSTER=${EcsCluster}" in user_data and "ECS_ENABLE_GPU_SUPPORT=true" in user_data


def test_the_ecs_task_s_size_reaches_submit_as_the_functions_and_clients_read_it(template: dict[str, Any]) -> None:
    """Globals' PARALLELRUN_ECS_TASK (the planner's, for drop folders) and the EcsTask output (the
    clients') say the same, in the form core.compute.EcsTask reads."""
    from parallelrun.core import compute
    variable = template["Globals"]["Function"]["Environment"]["Variables"]["PARALLELRUN_ECS_TASK"]
    condition, value, off = variable["Fn::If"]
    assert (condition, off) == ("EcsOn", "") and template["Outputs"]["EcsTask"]["Value"] == value
    form, names = value["Fn::Sub"]
    assert names == {"Gpus": {"Fn::If": ["EcsOnGpu", {"Ref": "EcsTaskGpus"}, 0]}}
    rendered = form.replace("${Gpus}", "1")
    for name in ("EcsTaskCpu", "EcsTaskMemory", "EcsWorkerImage"):
        rendered = rendered.replace("${%s}" % name, str(template["Parameters"][name]["Default"] or "repo/w:1"))
    assert compute.EcsTask.from_text(rendered) == compute.EcsTask(1024, 4096, 1, "repo/w:1")
    assert template["Outputs"]["EcsTask"]["Condition"] == "EcsOn"


def test_sam_translates_the_template_with_ecs_workers_on() -> None:
    """The SAM transform keeps the ECS resources and gives every function the !If of Globals."""
    from parallelrun.local import template as local_template
    for mode in ("cpu", "gpu"):
        read = local_template.read_template(TEMPLATE, {"EcsWorkers": mode})
        local_template.point_code_at_bucket(read, ROOT, "bootstrap")
        translated = local_template.translate(read, {"EcsWorkers": mode}, "us-east-1")
        assert {k: v["Type"] for k, v in translated["Resources"].items() if k in ECS_RESOURCES} == {
            k: t for k, (t, _) in ECS_RESOURCES.items()}
        variables = translated["Resources"]["PlannerFunction"]["Properties"]["Environment"]["Variables"]
        assert variables["PARALLELRUN_ECS_TASK"]["Fn::If"][0] == "EcsOn"
