"""local.serialization: DynamoDB's item answers written with json.dumps are the answers moto's
serializer writes, for every item operation and attribute type the stack uses; binary values and
table operations still go through the serializer (in-process moto)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from moto.core.responses import ActionResult

from parallelrun.local import serialization

TABLE = f"serialization-{uuid.uuid4().hex[:8]}"
ITEM = {"pk": {"S": "job"}, "sk": {"S": "a"}, "n": {"N": "12.5"}, "flag": {"BOOL": True}, "none": {"NULL": True},
        "m": {"M": {"inner": {"L": [{"S": "x"}, {"N": "1"}, {"M": {}}]}}}, "ss": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]},
        "empty": {"S": ""}}


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[object, list[tuple[str, bool]]]]:
    """A DynamoDB client whose every answer is also written by moto's serializer and compared."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    serialization.install()
    installed = ActionResult.execute_result
    answers: list[tuple[str, bool]] = []

    def both(action, context):
        ours = installed(action, context)
        moto = installed.moto(action, context)
        assert ours[0] == moto[0] and ours[1]["Content-Type"] == moto[1]["Content-Type"]
        assert json.loads(ours[2] or "{}") == json.loads(moto[2] or "{}"), context.operation_model.name
        operation = context.operation_model
        fast = operation.name in serialization.ITEM_OPERATIONS and serialization.plain_body(
            action.result, operation.output_shape.members) is not None
        answers.append((operation.name, fast))
        return ours

    monkeypatch.setattr(ActionResult, "execute_result", both)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk")],
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
        try:
            yield client, answers
        finally:  # a mock of the whole session may be active around this one
            client.delete_table(TableName=TABLE)


def test_every_item_answer_is_the_serializers(compared):
    client, answers = compared
    key = {"pk": ITEM["pk"], "sk": ITEM["sk"]}
    client.put_item(TableName=TABLE, Item=ITEM, ReturnValues="ALL_OLD")
    client.put_item(TableName=TABLE, Item={**ITEM, "sk": {"S": "b"}}, ReturnValues="ALL_OLD", ReturnConsumedCapacity="TOTAL")
    assert client.get_item(TableName=TABLE, Key=key)["Item"]["m"] == ITEM["m"]
    client.get_item(TableName=TABLE, Key={"pk": {"S": "none"}, "sk": {"S": "x"}})
    client.update_item(TableName=TABLE, Key=key, UpdateExpression="ADD n :one", ExpressionAttributeValues={":one": {"N": "1"}},
                       ReturnValues="ALL_NEW")
    page = client.query(TableName=TABLE, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": ITEM["pk"]}, Limit=1)
    client.query(TableName=TABLE, KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": ITEM["pk"]},
                 ExclusiveStartKey=page["LastEvaluatedKey"], ProjectionExpression="sk, n")
    client.scan(TableName=TABLE, Select="COUNT")
    client.batch_get_item(RequestItems={TABLE: {"Keys": [key, {"pk": {"S": "none"}, "sk": {"S": "x"}}]}})
    client.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": {**ITEM, "sk": {"S": "c"}}}}]})
    client.transact_write_items(TransactItems=[{"Update": {"TableName": TABLE, "Key": key, "UpdateExpression": "SET flag = :f",
                                                           "ExpressionAttributeValues": {":f": {"BOOL": False}}}}])
    client.transact_get_items(TransactItems=[{"Get": {"TableName": TABLE, "Key": key}}])
    client.delete_item(TableName=TABLE, Key=key, ReturnValues="ALL_OLD")
    written = {name for name, fast in answers if fast}
    assert written == set(serialization.ITEM_OPERATIONS)


def test_binary_values_and_tables_keep_the_serializer(compared):
    client, answers = compared
    client.put_item(TableName=TABLE, Item={"pk": {"S": "bin"}, "sk": {"S": "a"}, "b": {"B": b"\x00\xff"}})
    assert client.get_item(TableName=TABLE, Key={"pk": {"S": "bin"}, "sk": {"S": "a"}})["Item"]["b"]["B"] == b"\x00\xff"
    client.describe_table(TableName=TABLE)
    assert [fast for name, fast in answers if name in ("GetItem", "DescribeTable")] == [False, False]
