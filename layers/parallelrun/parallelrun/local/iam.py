"""IAM on the local server: moto's enforcement, completed where moto is more lenient than AWS.

moto authenticates and authorizes every request once ``INITIAL_NO_AUTH_ACTION_COUNT`` requests
have been served (``moto.settings``; 0 here, once the stack is provisioned), but (moto 5.2.5):

- it names the action after the API operation, where IAM names some after another one
  (SendMessageBatch is authorized as sqs:SendMessage, HeadBucket as s3:ListBucket, each item of a
  TransactWriteItems as its PutItem/UpdateItem/DeleteItem/ConditionCheckItem);
- it checks every DynamoDB request against the resource ``*``, where IAM checks the table's ARN;
- it ignores a session policy passed to AssumeRole;
- its trust-policy check fails a role that trusts another role's ARN (it compares the caller's
  assumed-role session ARN with the role ARN) and cannot read a service principal.

:func:`enable` replaces moto's check with one that computes each request's (action, resource)
pairs as IAM does, evaluates them with moto's own policy matcher, and reports each decision to
the listeners (the IAM audit test collects them). The administrator of the local stack is whoever
holds the credentials it was started with (``testing``/``testing`` unless the environment says
otherwise): the CLI, the SDK and the tests keep working unchanged.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam import access_control
from moto.iam.access_control import AssumedRoleAccessKey, IAMPolicy, IAMRequestBase, PermissionResult
from moto.iam.models import iam_backends
from moto.sts.models import sts_backends

ACCOUNT = "123456789012"  # moto's default account, which every local principal belongs to
PARTITION = "aws"
ADMIN_USER = "local-admin"
_ADMIN_POLICY = json.dumps({"Version": "2012-10-17",
                            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


@dataclass(frozen=True)
class Call:
    """One authorization decision: who asked for which action on which resource."""

    principal: str  # an IAM user's ARN or an assumed-role session's ARN
    action: str
    resource: str
    allowed: bool


Listener = Callable[[Call], None]
_listeners: list[Listener] = []
_moto_check = IAMRequestBase.check_action_permitted
_moto_threshold = settings.INITIAL_NO_AUTH_ACTION_COUNT

# IAM's name for an action moto names after its API operation. Batch actions: "setting
# permissions for SendMessage, DeleteMessage, or ChangeMessageVisibility sets permissions for the
# corresponding batch versions" (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/
# SQSDeveloperGuide/sqs-batch-api-actions.html). HeadBucket needs s3:ListBucket
# (https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadBucket.html).
_IAM_ACTION = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "s3:HeadBucket": "s3:ListBucket",
}
# "Permissions for Put, Update, Delete, and Get actions are governed by the permissions used for
# the underlying PutItem, UpdateItem, DeleteItem, and GetItem operations. For the ConditionCheck
# action, you can use the dynamodb:ConditionCheckItem permission"
# (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis-iam.html).
_TRANSACT_ITEM_ACTION = {"Put": "dynamodb:PutItem", "Update": "dynamodb:UpdateItem",
                         "Delete": "dynamodb:DeleteItem", "ConditionCheck": "dynamodb:ConditionCheckItem",
                         "Get": "dynamodb:GetItem"}


_enabled = 0  # local stacks running in this process that enforce IAM


def enable(admin_key_id: str, admin_secret: str) -> None:
    """Enforce IAM on every request from now on; ``admin_key_id`` may do anything."""
    global _enabled
    backend = iam_backends[ACCOUNT][PARTITION]
    if ADMIN_USER not in backend.users:
        backend.create_user(region_name="us-east-1", user_name=ADMIN_USER, path="/", tags=[])
        backend.put_user_policy(ADMIN_USER, "AdministratorAccess", _ADMIN_POLICY)
        key = backend.create_access_key(ADMIN_USER)
        key.access_key_id, key.secret_access_key = admin_key_id, admin_secret
    _enabled += 1
    IAMRequestBase.check_action_permitted = _check_action_permitted  # type: ignore[method-assign]
    ActionAuthenticatorMixin.request_count = 0
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0


def disable() -> None:
    """Undo one :func:`enable`; moto as it was once none is left (in-process ``mock_aws`` tests
    share these settings)."""
    global _enabled
    _enabled -= 1
    if _enabled <= 0:
        _enabled = 0
        settings.INITIAL_NO_AUTH_ACTION_COUNT = _moto_threshold
        IAMRequestBase.check_action_permitted = _moto_check  # type: ignore[method-assign]


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """No enforcement meanwhile: provisioning a second stack while another enforces. moto
    recomputes some control-plane signatures wrongly (Lambda's ListEventSourceMappings fails
    with SignatureDoesNotMatch), and provisioning is the administrator's anyway."""
    settings.INITIAL_NO_AUTH_ACTION_COUNT = _moto_threshold
    try:
        yield
    finally:
        if _enabled:
            ActionAuthenticatorMixin.request_count = 0
            settings.INITIAL_NO_AUTH_ACTION_COUNT = 0


def listen(listener: Listener) -> Callable[[], None]:
    """Call ``listener`` with every decision; returns the function that stops it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def assume_role(role_arn: str, session_name: str, region: str, policy: str | None = None) -> dict[str, str]:
    """Credentials of ``role_arn`` as a service assumes it for a function (Lambda for its
    execution role): straight from moto's STS, as no principal of the account makes that call."""
    role = sts_backends[ACCOUNT][PARTITION].assume_role(
        region_name=region, role_session_name=session_name, role_arn=role_arn, policy=policy,
        duration=43200, external_id=None)
    return {"AWS_ACCESS_KEY_ID": role.access_key_id, "AWS_SECRET_ACCESS_KEY": role.secret_access_key,
            "AWS_SESSION_TOKEN": role.session_token}


def role_policies(role_name: str) -> list[dict[str, Any]]:
    """The policy documents of a role, inline and attached, as the server evaluates them."""
    backend = iam_backends[ACCOUNT][PARTITION]
    role = backend.get_role(role_name)
    documents = [_document(d) for d in role.policies.values()]
    documents += [_document(p) for p in role.managed_policies.values()]
    return documents


def _document(policy: Any) -> dict[str, Any]:
    """A policy in any of the forms moto keeps one: a document, its JSON, or a managed policy."""
    if isinstance(policy, dict):
        return policy
    if isinstance(policy, str):
        return json.loads(policy)
    return json.loads(next(v.document for v in policy.versions if v.is_default))


def requested(request: IAMRequestBase, resource: str) -> list[tuple[str, str]]:
    """The (action, resource) pairs IAM authorizes for this request (moto's action and resource
    where they are already IAM's)."""
    action = _IAM_ACTION.get(request._action, request._action)
    service = action.partition(":")[0]
    if service == "dynamodb":
        return _dynamodb(request, action)
    if service == "sqs" and resource == "*" and "QueueName" in _json(request):
        resource = _arn("sqs", request._region, _json(request)["QueueName"])
    pairs = [(action, resource)]
    copy_source = request._headers.get("x-amz-copy-source")
    if service == "s3" and copy_source:
        # CopyObject and UploadPartCopy read their source: "you must have read access to the
        # source object" (https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html).
        source = urllib.parse.unquote(copy_source.partition("?")[0].lstrip("/"))
        pairs.append(("s3:GetObject", f"arn:{PARTITION}:s3:::{source}"))
    return pairs


def _dynamodb(request: IAMRequestBase, action: str) -> list[tuple[str, str]]:
    body = _json(request)
    table = lambda name: _arn("dynamodb", request._region, f"table/{name}")  # noqa: E731
    if "TransactItems" in body:
        pairs = []
        for item in body["TransactItems"]:
            ((kind, operation),) = item.items()
            pairs.append((_TRANSACT_ITEM_ACTION[kind], table(operation["TableName"])))
        return pairs
    if "RequestItems" in body:  # BatchWriteItem, BatchGetItem: the action, on each table
        return [(action, table(name)) for name in body["RequestItems"]]
    if "TableName" in body:
        name = body["TableName"]
        return [(action, table(name) + (f"/index/{body['IndexName']}" if body.get("IndexName") else ""))]
    return [(action, "*")]  # ListTables and the like


def _json(request: IAMRequestBase) -> dict[str, Any]:
    raw = request._body or b""
    try:
        decoded = json.loads(raw)
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _arn(service: str, region: str, name: str) -> str:
    return f"arn:{PARTITION}:{service}:{region}:{ACCOUNT}:{name}"


def _check_action_permitted(self: IAMRequestBase, resource: str) -> None:
    """moto's check, with IAM's actions and resources and the session policy of the caller."""
    if self._action == "sts:GetCallerIdentity":  # always allowed, as on AWS
        return
    key = self._access_key
    identity = key.collect_policies()
    session = _session_policy(key)
    for action, target in requested(self, resource):
        allowed = _decide(identity, action, target) == PermissionResult.PERMITTED and (
            session is None or _decide([session], action, target) == PermissionResult.PERMITTED)
        if allowed and action == "sts:AssumeRole":
            allowed = _trusted(target, _principal_arn(key))
        call = Call(key.arn, action, target, allowed)
        for listener in list(_listeners):
            listener(call)
        if not allowed:
            self._raise_access_denied()


def _decide(policies: list[Any], action: str, resource: str) -> PermissionResult:
    """An explicit deny wins; otherwise some statement must allow (IAM's evaluation logic)."""
    result = PermissionResult.NEUTRAL
    for policy in policies:
        if isinstance(policy, dict) and "policy_document" not in policy:  # a role's inline policy from CloudFormation
            policy = json.dumps(policy)
        decision = IAMPolicy(policy).is_action_permitted(action, resource)
        if decision == PermissionResult.DENIED:
            return decision
        if decision == PermissionResult.PERMITTED:
            result = decision
    return result


def _session_policy(key: Any) -> str | None:
    """The session policy the caller's AssumeRole passed, if any. "The resulting session's
    permissions are the intersection of the role's identity-based policy and the session
    policies" (https://docs.aws.amazon.com/IAM/latest/UserGuide/
    id_credentials_temp_control-access_assumerole.html)."""
    if not isinstance(key, AssumedRoleAccessKey):
        return None
    role = sts_backends[ACCOUNT][PARTITION].get_assumed_role_from_access_key(key._access_key_id)
    return role.policy if role is not None else None


def _principal_arn(key: Any) -> str:
    """The ARN a trust policy names for the caller: a session is matched by its role's ARN
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_principal.html#principal-roles)."""
    if isinstance(key, AssumedRoleAccessKey):
        role = sts_backends[ACCOUNT][PARTITION].get_assumed_role_from_access_key(key._access_key_id)
        if role is not None:
            return role.role_arn
    return key.arn


def _trusted(role_arn: str, principal: str) -> bool:
    """Whether the role's trust policy lets ``principal`` assume it."""
    try:
        role = iam_backends[ACCOUNT][PARTITION].get_role_by_arn(role_arn)
    except access_control.NotFoundException:
        return False
    document = role.assume_role_policy_document
    statements = json.loads(document if isinstance(document, str) else json.dumps(document))["Statement"]
    for statement in statements if isinstance(statements, list) else [statements]:
        actions = statement.get("Action", [])
        trusted = (statement.get("Principal") or {}).get("AWS", []) if isinstance(statement.get("Principal"), dict) \
            else statement.get("Principal")
        trusted = [trusted] if isinstance(trusted, str) else trusted or []
        if statement.get("Effect") == "Allow" and "sts:AssumeRole" in (
                [actions] if isinstance(actions, str) else actions) and (principal in trusted or "*" in trusted):
            return True
    return False
