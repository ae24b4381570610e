"""Least privilege, proved both ways on the local stack with IAM enforced.

Every function process runs with credentials of its own template role and the server enforces
IAM (parallelrun.local.iam), so a permission the template lacks fails a job here as on AWS. The
test collects every (action, resource) each role's principal asked for during a partitioned file
job, a tabular job, a scheduled job and a dead-lettered mini-batch, and checks both directions:
nothing asked for was refused, and every (action, resource) the role grants was used. Then a
scoring script tries to reach beyond its deployment and is refused, while its own job works.
"""

from __future__ import annotations

import collections
import fnmatch
import json
import pickle
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parallelrun import aws
from parallelrun.aws.config import StackConfig
from parallelrun.client.api import Client
from parallelrun.local import destinations, iam, rules
from parallelrun.local.runtime import LocalStack
from parallelrun.pipeline import planner, scheduling
from parallelrun.store import jobs, plan, schedules
from tests.conftest import marker_event

# Granted but not called by any run here, each with the reason it is granted all the same.
UNUSED_ON_PURPOSE = {
    ("*", "logs:*", "*"): "Lambda's runtime writes the function's logs with its role; no code of ours calls CloudWatch Logs",
    ("PlannerRole", "sqs:SendMessage", "*PlannerFailureQueue*"):
        "Lambda sends an asynchronous invocation's failure record with the function's role; only a marker the planner "
        "fails on every try does that (the local stack plays it in parallelrun.local.destinations)",
    ("AggregatorRole", "s3:AbortMultipartUpload", "*"): "only when collating fails midway",
    ("PlannerRole", "sqs:SendMessage", "*EcsBatchQueue*"): "only a job of a `compute: ecs` deployment",
    ("AggregatorRole", "sqs:SendMessage", "*PlannerQueue*"): "only a schedule run waiting for this one (overlap=wait), "
        "or a pipeline step's hand-on to the next step (parallelrun.pipeline.chaining)",
    ("FailureRecorderRole", "sqs:SendMessage", "*PlannerQueue*"):
        "only when a scheduled job it ends hands its schedule to a run waiting (overlap=wait)",
    ("PlannerRole", "sqs:SendMessage", "*-Worker-[*]"): "a deployment's own worker's queue, made on a deployed stack "
        "only (parallelrun.aws.workers; the local stack's workers serve such a deployment)",
    ("WorkerRole", "sqs:*", "*-Worker-[*]"): "the same queue, read by that deployment's own worker on AWS",
    ("WorkerRole", "sqs:*", "*EcsBatchQueue*"): "read by long-running workers (`parallelrun worker`), which this "
        "test does not run (tests/test_longrun.py does, under this role)",
}

ECHO = """
import os
def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""
# The first attempt of each mini-batch fails: the worker brings it back sooner (ChangeMessageVisibility).
FLAKY = """
def run(mini_batch, mini_batch_context):
    if mini_batch_context.attempt == 1:
        raise RuntimeError("first attempt")
    return ["ok" for _ in mini_batch]
"""
# Slow enough that its mini-batch is dead-lettered (by the test, see dead_letters) while it runs.
SLEEPER = """
import os, time
def run(mini_batch):
    time.sleep(8)
    return [os.path.basename(p) for p in mini_batch]
"""
TABLE = """
def run(mini_batch):
    return [f"{row.id}:{row.value * 2}" for row in mini_batch.itertuples()]
"""
# The attack: what a script tries beyond its deployment, and its own model and side input.
ATTACK = """
import os
import boto3
from botocore.exceptions import ClientError

def attempt(call):
    try:
        call()
        return "allowed"
    except ClientError as error:  # each service words a refusal its own way; all answer 403
        return "refused" if error.response["ResponseMetadata"]["HTTPStatusCode"] == 403 else str(error)

def run(mini_batch):
    s3 = boto3.client("s3")
    artifacts, inputs = os.environ["PARALLELRUN_ARTIFACTS_BUCKET"], os.environ["PARALLELRUN_INPUT_BUCKET"]
    table = boto3.resource("dynamodb").Table(os.environ["PARALLELRUN_TABLE"])
    outcomes = {
        "worker_credentials_visible": str(any(k in os.environ for k in ("AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"))),
        "own_model": attempt(lambda: s3.get_object(Bucket=artifacts, Key="models/attack-model/1/attack.pkl")),
        "own_side_input_listed": attempt(lambda: s3.list_objects_v2(Bucket=inputs, Prefix="attack/side/")),
        "own_side_input_read": attempt(lambda: s3.get_object(Bucket=inputs, Key="attack/side/labels.txt")),
        "other_model": attempt(lambda: s3.get_object(Bucket=artifacts, Key="models/other-model/1/other.pkl")),
        "other_input": attempt(lambda: s3.get_object(Bucket=inputs, Key="stores/files/a/0.txt")),
        "other_job_folder": attempt(lambda: s3.put_object(Bucket=artifacts, Key=os.environ["VICTIM_KEY"], Body=b"x")),
        "table": attempt(lambda: table.put_item(Item={"pk": "ATTACK", "sk": "ATTACK"})),
    }
    return [f"{name}={outcome}" for name, outcome in sorted(outcomes.items())][:len(mini_batch)]
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory):
    """A local stack whose every authorization decision is collected; the calls, the stack."""
    patch = pytest.MonkeyPatch()
    patch.setenv("PARALLELRUN_HOME", str(tmp_path_factory.mktemp("home")))
    calls: list[iam.Call] = []
    stop_listening = iam.listen(calls.append)
    victim = "jobs/some-other-job/output/parallel_run_step.txt"
    # A window of 2 mini-batches makes the planner send itself continuation messages.
    # A stack name of its own: moto's state is per process, shared with the other modules' stacks.
    # Ranges of two mini-batches: a job of more is collated in ranges and joined, so the
    # aggregator's grants for that (its own queue, its scratch) are used and audited too.
    # Listings of three inputs an invocation: the planner's continuations and carries are audited.
    with LocalStack(workers=2, parameters={"MaxInflightBatches": "2", "AggregateBatchesPerInvocation": "2",
                                           "PlannerInputsPerInvocation": "3"},
                    stack_name="iam-audit", write_state=False,
                    worker_env={"PARALLELRUN_CACHE": str(tmp_path_factory.mktemp("cache")),
                                "VICTIM_KEY": victim}) as stack:
        yield calls, stack, victim
    stop_listening()
    patch.undo()


@pytest.fixture(scope="module")
def client(audited) -> Client:
    return Client(StackConfig.from_outputs(audited[1].outputs))


def endpoint(client: Client, tmp_path: Path, name: str, source: str, settings: dict[str, str],
             models: tuple[str, ...] = ("model",), model_ref: str = "") -> None:
    code = tmp_path / f"code-{name}"
    code.mkdir()
    (code / "score.py").write_text(source)
    (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps(1))
    for model in models:
        client.register_model(tmp_path / f"{name}.pkl", f"{name}-{model}")
    client.create_endpoint(name, code, "score.py", model_ref or f"{name}-model", settings)


def drop(client: Client, folder: str, files: dict[str, bytes], marker: bytes = b"") -> jobs.JobRecord:
    s3 = aws.client("s3")
    for name, body in files.items():
        s3.put_object(Bucket=client.cfg.input_bucket, Key=folder + name, Body=body)
    s3.put_object(Bucket=client.cfg.input_bucket, Key=folder + "_READY", Body=marker)
    uri = f"s3://{client.cfg.input_bucket}/{folder}"
    deadline = time.time() + 30
    while (job := client.find_job(uri)) is None and time.time() < deadline:
        time.sleep(0.2)
    assert job is not None, f"the marker in {uri} started no job"
    return client.wait(job.job_id, poll_seconds=0.3, timeout=120)


@pytest.fixture(scope="module")
def ran(audited, client: Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, jobs.JobRecord]:
    """The jobs every role's calls are collected from."""
    tmp = tmp_path_factory.mktemp("jobs")
    endpoint(client, tmp, "echo", ECHO, {"mini_batch_size": "2"})
    # A model per partition, resolved by name when each mini-batch runs (the worker queries it).
    endpoint(client, tmp, "stores", ECHO, {"mini_batch_size": "2"}, models=("a", "b"), model_ref="stores-{store}")
    endpoint(client, tmp, "table", TABLE, {"input_type": "tabular"})
    done = {
        "partitioned": drop(client, "stores/files/", {f"{store}/{i}.txt": b"x" for store in "ab" for i in range(3)},
                            b'{"partition_format": "{store}/*.txt", "partition_keys": "store"}'),
        "tabular": drop(client, "table/csv/", {"values.csv": b"id,value\n" + b"".join(b"%d,%d\n" % (i, i)
                                                                                    for i in range(20))}),
    }
    # A model per partition found by its tags: the worker scans the registry for them.
    for store in "ab":
        client.register_model(tmp / "stores.pkl", f"tagged-{store}", tags={"store": store, "kind": "iam"})
    endpoint(client, tmp, "tagged", ECHO, {"mini_batch_size": "2"}, models=(), model_ref="tags:store={store},kind=iam")
    done |= {
        "tagged": drop(client, "tagged/files/", {f"{store}/{i}.txt": b"x" for store in "ab" for i in range(2)},
                       b'{"partition_format": "{store}/*.txt", "partition_keys": "store"}'),
    }
    aws.client("s3").put_object(Bucket=client.cfg.input_bucket, Key="echo/incoming/0.txt", Body=b"x")
    scheduling.create(client.cfg, "nightly", "echo", "rate(1 hour)", f"s3://{client.cfg.input_bucket}/echo/incoming/",
                     {"mini_batch_size": "2"})
    when = "2026-01-01T00:00:00+00:00"
    rules.deliver(aws.client("events").describe_rule(Name=client.cfg.schedule_rule_prefix + "nightly"),
                  datetime.fromisoformat(when).astimezone(UTC))
    endpoint(client, tmp, "flaky", FLAKY, {"mini_batch_size": "2"})
    done["retried"] = drop(client, "flaky/files/", {f"{i}.txt": b"x" for i in range(2)})
    done["attack"] = attack(audited, client, tmp)
    done["dead-lettered"] = dead_letters(audited, client, tmp, done["tabular"])
    run = schedules.run_job_id("nightly", when)
    deadline = time.time() + 30
    while not any(j.job_id == run for j in client.jobs()) and time.time() < deadline:
        time.sleep(0.2)  # the planner starts the run from the rule's message
    done["scheduled"] = client.wait(run, poll_seconds=0.3, timeout=120)
    return done


def test_the_jobs_succeed_with_every_function_as_its_own_role(ran, client: Client):
    for kind, job in ran.items():
        assert job.state == jobs.SUCCEEDED, (kind, job.reason)
    assert ran["partitioned"].items_succeeded == 6 and ran["tabular"].items_succeeded == 20
    assert ran["tagged"].items_succeeded == 4
    assert ran["retried"].retries >= 1
    assert client.job(ran["tabular"].job_id).state == jobs.SUCCEEDED  # its dead-lettered messages changed nothing
    assert ran["dead-lettered"].items_failed == 4
    failures = b"".join(client.read_output(ran["dead-lettered"].job_id, "failures.jsonl")).decode()
    assert failures.count('"WorkerLost"') == 4
    failed = client.find_job(f"s3://{client.cfg.input_bucket}/echo/never-planned/")
    assert failed is not None and failed.state == jobs.FAILED and "failed on all 3 tries" in failed.reason


def dead_letters(audited, client: Client, tmp_path: Path, ended: jobs.JobRecord) -> jobs.JobRecord:
    """Every dead-letter queue's message, for the failure recorder's calls. A worker that dies on
    every delivery takes the visibility timeout each time before SQS moves its message to the
    dead-letter queue; the test moves it at once, as SQS's redrive would (the same body): a
    mini-batch of a running job, a planner and an aggregator message of an ended job (left as it
    is), and Lambda's record of a marker the planner failed on every try."""
    _, stack, _ = audited
    sqs = aws.client("sqs")
    queues = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in aws.client("cloudformation")
              .describe_stack_resources(StackName=stack.stack_name)["StackResources"]
              if r.get("ResourceType") == "AWS::SQS::Queue"}
    endpoint(client, tmp_path, "sleeper", SLEEPER, {"mini_batch_size": "4"})
    for i in range(4):
        aws.client("s3").put_object(Bucket=client.cfg.input_bucket, Key=f"sleeper/files/{i}.txt", Body=b"x")
    job = client.submit("sleeper", f"s3://{client.cfg.input_bucket}/sleeper/files/")
    deadline = time.time() + 30
    while not jobs.get(client.cfg, job.job_id).cursor and time.time() < deadline:
        time.sleep(0.2)  # until its mini-batch is sent
    [(index, items, partition)] = plan.read(client.cfg, job.job_id, 0, 1)
    message = planner.batch_message(jobs.get(client.cfg, job.job_id), index, items, partition)
    sqs.send_message(QueueUrl=queues["BatchDeadLetterQueue"], MessageBody=message.body())
    sqs.send_message(QueueUrl=queues["PlannerDeadLetterQueue"], MessageBody=json.dumps(
        {"action": "tick", "job_id": ended.job_id, "tick": 0, "token": "start", "since": 0}))
    sqs.send_message(QueueUrl=queues["FinalizeDeadLetterQueue"], MessageBody=json.dumps({"job_id": ended.job_id}))
    marker = marker_event(client.cfg.input_bucket, "echo/never-planned/_READY", "0A1")
    record = destinations.failure_record(stack.stack.functions["PlannerFunction"], marker, RuntimeError("planner down"),
                                         "request-1", 3)
    sqs.send_message(QueueUrl=queues["PlannerFailureQueue"], MessageBody=json.dumps(record))
    return client.wait(job.job_id, poll_seconds=0.3, timeout=120)


def test_every_call_was_allowed_and_every_grant_was_used(audited, ran):
    calls, stack, _ = audited
    by_role = _calls_by_role(calls, stack)
    # The scoring role's refusals are the attack's, which the next test expects one by one.
    refused = {role: sorted({(c.action, c.resource) for c in made if not c.allowed})
               for role, made in by_role.items() if role != "ScoringRole"}
    assert not any(refused.values()), f"refused calls (missing from template.yaml): {refused}"
    unused = {}
    for role, grants in _grants(stack).items():
        used = {(c.action, c.resource) for c in by_role.get(role, [])}
        unused[role] = [(action, resource) for action, resource in grants
                        if not any(fnmatch.fnmatchcase(a, action) and fnmatch.fnmatchcase(r, resource) for a, r in used)
                        and not any(fnmatch.fnmatchcase(role, r) and fnmatch.fnmatchcase(action, a)
                                    and fnmatch.fnmatchcase(resource, p) for r, a, p in UNUSED_ON_PURPOSE)]
    assert not any(unused.values()), f"granted but never used (remove them, or say why in UNUSED_ON_PURPOSE): {unused}"


def attack(audited, client: Client, tmp_path: Path) -> jobs.JobRecord:
    """A job whose script tries to reach beyond its deployment (see ATTACK)."""
    _, _, victim = audited
    aws.client("s3").put_object(Bucket=client.cfg.artifacts_bucket, Key=victim, Body=b"someone's results")
    aws.client("s3").put_object(Bucket=client.cfg.input_bucket, Key="attack/side/labels.txt", Body=b"cat\ndog\n")
    (tmp_path / "other.pkl").write_bytes(pickle.dumps(2))
    client.register_model(tmp_path / "other.pkl", "other-model")
    endpoint(client, tmp_path, "attack", ATTACK,
             {"mini_batch_size": "8", "side_inputs": f"s3://{client.cfg.input_bucket}/attack/side/"})
    return drop(client, "attack/files/", {f"{i}.txt": b"x" for i in range(8)})


def test_a_scoring_script_gets_its_own_job_done_and_nothing_else(audited, client: Client, ran):
    _, _, victim = audited
    job = ran["attack"]
    assert job.state == jobs.SUCCEEDED, job.reason
    outcomes = dict(row.split("=") for row in b"".join(client.read_output(job.job_id)).decode().splitlines())
    assert outcomes == {
        "worker_credentials_visible": "False",
        "own_model": "allowed", "own_side_input_listed": "allowed", "own_side_input_read": "allowed",
        "other_model": "refused", "other_input": "refused", "other_job_folder": "refused", "table": "refused",
    }
    body = aws.client("s3").get_object(Bucket=client.cfg.artifacts_bucket, Key=victim)["Body"].read()
    assert body == b"someone's results"


def _calls_by_role(calls: list[iam.Call], stack: LocalStack) -> dict[str, list[iam.Call]]:
    """Each template role's calls, by the role's logical id (a session ARN names the role)."""
    names = _role_names(stack)
    by_role = collections.defaultdict(list)
    for call in calls:
        if ":assumed-role/" in call.principal:
            by_role[names.get(call.principal.split("/")[1], call.principal)].append(call)
    return by_role


def _role_names(stack: LocalStack) -> dict[str, str]:
    resources = aws.client("cloudformation").describe_stack_resources(StackName=stack.stack_name)["StackResources"]
    return {r["PhysicalResourceId"].rsplit("/", 1)[-1]: r["LogicalResourceId"]
            for r in resources if r.get("ResourceType") == "AWS::IAM::Role"}


def _grants(stack: LocalStack) -> dict[str, list[tuple[str, str]]]:
    """Every (action, resource pattern) each role's policies (as created from the template) allow."""
    grants: dict[str, list[tuple[str, str]]] = {}
    for name, logical_id in _role_names(stack).items():
        pairs = []
        for document in iam.role_policies(name):
            statements = document["Statement"]
            for statement in statements if isinstance(statements, list) else [statements]:
                actions, resources = statement["Action"], statement["Resource"]
                pairs += [(a, r) for a in ([actions] if isinstance(actions, str) else actions)
                          for r in ([resources] if isinstance(resources, str) else resources)]
        grants[logical_id] = pairs
    return grants
