"""The control-plane calls (:mod:`parallelrun.aws.control`) with stand-in clients, the scoring
credentials built on AssumeRole's answer, and a client made with other credentials
(:func:`parallelrun.aws.client_as`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from parallelrun import aws
from parallelrun.aws import control
from parallelrun.scoring import credentials


class Fake:
    """A stand-in client: each call is recorded, and answered by ``answers[name]`` (called with the
    call's arguments if it is a function)."""

    class exceptions:  # noqa: N801 - as boto3 clients name it
        class ResourceNotFoundException(Exception):
            pass

    def __init__(self, **answers: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answers = answers

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            answer = self.answers.get(name)
            return answer(*args, **kwargs) if callable(answer) else answer
        return call


def test_a_missing_stack_is_none_and_other_errors_raise() -> None:
    def missing(**kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "ValidationError", "Message": "Stack with id s does not exist"}},
                          "DescribeStacks")

    def throttled(**kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "DescribeStacks")

    stack = {"StackName": "s", "StackStatus": "CREATE_COMPLETE"}
    assert control.describe_stack("s", Fake(describe_stacks={"Stacks": [stack]})) == stack
    assert control.describe_stack("s", Fake(describe_stacks=missing)) is None
    with pytest.raises(ClientError, match="Rate exceeded"):
        control.describe_stack("s", Fake(describe_stacks=throttled))


def test_stack_resources_are_physical_ids_by_logical_id() -> None:
    fake = Fake(describe_stack_resources={"StackResources": [
        {"LogicalResourceId": "WorkerFunction", "PhysicalResourceId": "s-Worker-1"},
        {"LogicalResourceId": "Table", "PhysicalResourceId": "s-Table-2"},
        {"LogicalResourceId": "NotCreated", "ResourceStatus": "CREATE_FAILED"}]})
    assert control.stack_resources("s", fake) == {"WorkerFunction": "s-Worker-1", "Table": "s-Table-2"}
    assert fake.calls == [("describe_stack_resources", {"StackName": "s"})]


def test_a_function_s_role_is_read_from_its_configuration() -> None:
    fake = Fake(get_function_configuration={"Role": "arn:aws:iam::1:role/worker", "Timeout": 900})
    assert control.function_role("s-Worker-1", fake) == "arn:aws:iam::1:role/worker"


def test_a_rule_is_put_enabled_before_its_targets() -> None:
    fake = Fake()
    targets = [{"Id": "planner", "Arn": "arn:aws:sqs:us-east-1:1:planner"}]
    control.put_rule("r", "rate(1 hour)", "nightly", targets, fake)
    assert fake.calls == [
        ("put_rule", {"Name": "r", "ScheduleExpression": "rate(1 hour)", "State": "ENABLED", "Description": "nightly"}),
        ("put_targets", {"Rule": "r", "Targets": targets})]


def test_a_rule_loses_its_targets_before_it_is_deleted_and_a_gone_one_is_no_error() -> None:
    fake = Fake()
    assert control.delete_rule("r", ["planner"], fake)
    assert fake.calls == [("remove_targets", {"Rule": "r", "Ids": ["planner"]}), ("delete_rule", {"Name": "r"})]

    def gone(**kwargs: Any) -> None:
        raise Fake.exceptions.ResourceNotFoundException()

    fake = Fake(remove_targets=gone)
    assert not control.delete_rule("r", ["planner"], fake)
    assert [name for name, _ in fake.calls] == ["remove_targets"]


def test_only_enabled_scheduled_rules_are_listed_across_pages() -> None:
    pages = [{"Rules": [{"Name": "a", "ScheduleExpression": "rate(1 minute)", "State": "ENABLED"},
                        {"Name": "b", "EventPattern": "{}", "State": "ENABLED"}]},
             {"Rules": [{"Name": "c", "ScheduleExpression": "rate(1 minute)", "State": "DISABLED"}]},
             {"Rules": [{"Name": "d", "ScheduleExpression": "cron(0 1 * * ? *)", "State": "ENABLED"}]}]
    fake = Fake(get_paginator=lambda name: Fake(paginate=lambda: iter(pages)) if name == "list_rules" else None)
    assert [r["Name"] for r in control.schedule_rules(fake)] == ["a", "d"]


def test_a_rule_s_targets() -> None:
    fake = Fake(list_targets_by_rule={"Targets": [{"Id": "planner"}]})
    assert control.rule_targets("r", fake) == [{"Id": "planner"}]
    assert fake.calls == [("list_targets_by_rule", {"Rule": "r"})]


def test_assume_role_passes_the_session_policy_and_gives_the_credentials() -> None:
    credentials = {"AccessKeyId": "AK", "SecretAccessKey": "SK", "SessionToken": "T", "Expiration": "later"}
    fake = Fake(assume_role={"Credentials": credentials, "AssumedRoleUser": {}})
    assert control.assume_role("arn:aws:iam::1:role/scoring", "scoring-1", 3600, '{"Version":"2012-10-17"}',
                               fake) == credentials
    assert fake.calls == [("assume_role", {"RoleArn": "arn:aws:iam::1:role/scoring", "RoleSessionName": "scoring-1",
                                           "DurationSeconds": 3600, "Policy": '{"Version":"2012-10-17"}'})]


def test_a_client_with_other_credentials_is_its_own_in_the_process_s_region() -> None:
    made = aws.client_as("sqs", "AKOTHER", "secret")
    assert made.meta.region_name == aws.region()
    assert made._request_signer._credentials.access_key == "AKOTHER"
    assert made is not aws.client("sqs") and made is not aws.client_as("sqs", "AKOTHER", "secret")
    assert made._request_signer._credentials.access_key != aws.client("sqs")._request_signer._credentials.access_key


def test_the_scoring_credentials_are_assumed_narrowed_in_credential_process_format(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(credentials.ROLE_VARIABLE, "arn:aws:iam::1:role/scoring")
    asked = []

    def assume_role(role_arn: str, session_name: str, duration: int, policy: str) -> dict[str, Any]:
        asked.append((role_arn, session_name, duration, policy))
        return {"AccessKeyId": "AK", "SecretAccessKey": "SK", "SessionToken": "T",
                "Expiration": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)}

    found = credentials.assume(assume_role, {"Version": "2012-10-17", "Statement": []}, "s" * 70)
    assert found == {"Version": 1, "AccessKeyId": "AK", "SecretAccessKey": "SK", "SessionToken": "T",
                     "Expiration": "2030-01-02T03:04:05Z"}
    assert asked == [("arn:aws:iam::1:role/scoring", "s" * 64, credentials.DURATION,
                      '{"Version":"2012-10-17","Statement":[]}')]
