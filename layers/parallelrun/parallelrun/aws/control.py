"""The control-plane calls: CloudFormation (a stack and its resources), Lambda (a function's
configuration), EventBridge (the schedules' rules and their targets) and STS (the scoring
process's narrowed credentials).

None of them is on a mini-batch's path: clients read a stack, create and delete rules; the local
runtime reads roles and fires rules; a worker assumes the scoring role once per scoring process.
Each call takes an optional ``client`` (the shared one by default), so a test passes a stand-in.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from parallelrun import aws

# --- CloudFormation


def describe_stack(name: str, client: Any = None) -> dict[str, Any] | None:
    """The stack as DescribeStacks gives it (status, outputs), None if there is no such stack."""
    try:
        (stack,) = (client or aws.client("cloudformation")).describe_stacks(StackName=name)["Stacks"]
    except ClientError as error:
        if "does not exist" not in str(error):
            raise
        return None
    return stack


def stack_resources(name: str, client: Any = None) -> dict[str, str]:
    """The stack's resources that exist: physical id by logical id (one not created, such as a
    resource of a false condition on moto, has no physical id)."""
    resources = (client or aws.client("cloudformation")).describe_stack_resources(StackName=name)["StackResources"]
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources
            if r.get("LogicalResourceId") and r.get("PhysicalResourceId")}


# --- Lambda


def function_role(name: str, client: Any = None) -> str:
    """The ARN of a function's execution role."""
    return (client or aws.client("lambda")).get_function_configuration(FunctionName=name)["Role"]


def function_environment(name: str, client: Any = None) -> dict[str, str]:
    """A function's environment variables, as its configuration sets them."""
    found = (client or aws.client("lambda")).get_function_configuration(FunctionName=name)
    return dict((found.get("Environment") or {}).get("Variables") or {})


# --- EventBridge


def put_rule(name: str, schedule_expression: str, description: str, targets: list[dict[str, Any]],
             client: Any = None) -> None:
    """Create (or replace) an enabled schedule rule, then its targets."""
    events = client or aws.client("events")
    events.put_rule(Name=name, ScheduleExpression=schedule_expression, State="ENABLED", Description=description)
    events.put_targets(Rule=name, Targets=targets)


def delete_rule(name: str, target_ids: list[str], client: Any = None) -> bool:
    """Remove the rule's targets, then the rule (EventBridge refuses to delete a rule that has
    targets); False if the rule was not there."""
    events = client or aws.client("events")
    try:
        events.remove_targets(Rule=name, Ids=target_ids)
        events.delete_rule(Name=name)
    except events.exceptions.ResourceNotFoundException:
        return False
    return True


def schedule_rules(client: Any = None) -> list[dict[str, Any]]:
    """Every enabled rule that has a schedule expression, as ListRules describes it."""
    rules = []
    for page in (client or aws.client("events")).get_paginator("list_rules").paginate():
        rules += [r for r in page.get("Rules", []) if r.get("ScheduleExpression") and r.get("State") == "ENABLED"]
    return rules


def rule_targets(name: str, client: Any = None) -> list[dict[str, Any]]:
    return (client or aws.client("events")).list_targets_by_rule(Rule=name)["Targets"]


# --- STS


def assume_role(role_arn: str, session_name: str, duration: int, policy: str, client: Any = None) -> dict[str, Any]:
    """Temporary credentials of ``role_arn`` narrowed by the session ``policy`` (a JSON document):
    AssumeRole's ``Credentials`` (AccessKeyId, SecretAccessKey, SessionToken, Expiration)."""
    return (client or aws.client("sts")).assume_role(RoleArn=role_arn, RoleSessionName=session_name,
                                                     DurationSeconds=duration, Policy=policy)["Credentials"]
