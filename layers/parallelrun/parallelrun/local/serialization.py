"""DynamoDB's item answers at JSON's cost: moto writes every response through a serializer that
walks the operation's output shape and, for each attribute value, tries each of the ten members
an AttributeValue may have, so a Query of a job's 101 items (its record and counter shards)
takes about 40 ms of the server's time here, 90 % of it in the serializer (measured with
cProfile). moto's results for item operations are already DynamoDB JSON: plain dicts, lists,
strings, numbers and booleans, in the shape the response has.

Installed, such a result is written with ``json.dumps``: the same body (the output shape's
members, ``None`` left out), the same status and content type. A result holding anything else
(binary values, which the serializer encodes, or an object) still goes through the serializer.
"""

from __future__ import annotations

import json
from typing import Any

from moto.core.responses import ActionResult
from moto.dynamodb.responses import DynamoResult

# Operations whose output is items, keys and counts; the table operations (timestamps, objects)
# keep moto's serializer.
ITEM_OPERATIONS = frozenset({
    "GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "BatchGetItem", "BatchWriteItem",
    "TransactGetItems", "TransactWriteItems"})
CONTENT_TYPE = "application/x-amz-json-1.0"


class _NotPlain(Exception):
    pass


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        if "B" in value or "BS" in value:
            raise _NotPlain
        return {key: _plain(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise _NotPlain


def plain_body(result: Any, members: Any) -> str | None:
    """``result`` as the JSON body of a response whose output shape has ``members``, or None if
    it holds anything but plain DynamoDB JSON."""
    if not isinstance(result, dict):
        return None
    try:
        return json.dumps({key: _plain(value) for key, value in result.items() if key in members and value is not None})
    except _NotPlain:
        return None


def install() -> None:
    """Write DynamoDB's plain item answers with ``json.dumps``, in this process. Once is enough and
    it is never undone: what DynamoDB answers is unchanged, only what it costs."""
    if getattr(ActionResult.execute_result, "_plain_json", False):
        return
    original = ActionResult.execute_result

    def execute_result(action: ActionResult, context: Any) -> Any:
        operation = context.operation_model
        if (type(action) in (ActionResult, DynamoResult) and context.service_model.service_name == "dynamodb"
                and operation.name in ITEM_OPERATIONS and operation.output_shape is not None):
            body = plain_body(action.result, operation.output_shape.members)
            if body is not None:
                return 200, {"Content-Type": CONTENT_TYPE}, body
        return original(action, context)

    execute_result._plain_json = True  # type: ignore[attr-defined]
    execute_result.moto = original  # type: ignore[attr-defined]  # the tests compare the two
    ActionResult.execute_result = execute_result  # type: ignore[method-assign]
