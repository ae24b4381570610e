"""local.transactions: a transaction costs what its items cost, not what its table holds, and a
cancelled one still leaves every item as it was (in-process moto)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.models.table import Table

from parallelrun.local import transactions


TABLE = f"transactions-{uuid.uuid4().hex[:8]}"  # its own table, whichever mock is active around it


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                                  {"AttributeName": "sk", "AttributeType": "S"}],
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                       {"AttributeName": "sk", "KeyType": "RANGE"}])
        transactions.install()
        try:
            yield client
        finally:
            client.delete_table(TableName=TABLE)


def _put(pk: str, sk: str, n: int) -> dict:
    return {"Put": {"TableName": TABLE, "Item": {"pk": {"S": pk}, "sk": {"S": sk}, "n": {"N": str(n)}}}}


def _items(client) -> dict[tuple[str, str], str]:
    return {(i["pk"]["S"], i["sk"]["S"]): i["n"]["N"] for i in client.scan(TableName=TABLE)["Items"]}


def test_a_transaction_copies_no_table(dynamodb, monkeypatch: pytest.MonkeyPatch):
    dynamodb.batch_write_item(RequestItems={TABLE: [{"PutRequest": {"Item": {"pk": {"S": "job"}, "sk": {"S": f"{i:04d}"},
                                                                           "n": {"N": "0"}}}} for i in range(25)]})
    copied: list[object] = []
    real = copy.deepcopy

    def counting(value, memo=None):
        if isinstance(value, Table):
            copied.append(value)
        return real(value, memo)

    monkeypatch.setattr(copy, "deepcopy", counting)
    dynamodb.transact_write_items(TransactItems=[_put("job", "0001", 1), _put("job", "new", 2)])
    assert copied == []
    assert _items(dynamodb)[("job", "0001")] == "1" and _items(dynamodb)[("job", "new")] == "2"


def test_a_cancelled_transaction_leaves_every_item_as_it_was(dynamodb):
    dynamodb.transact_write_items(TransactItems=[_put("job", "a", 1), _put("job", "b", 1)])
    before = _items(dynamodb)
    with pytest.raises(ClientError) as raised:
        dynamodb.transact_write_items(TransactItems=[
            _put("job", "a", 2),  # applied, then undone
            _put("job", "fresh", 2),  # created, then removed
            {"Update": {"TableName": TABLE, "Key": {"pk": {"S": "job"}, "sk": {"S": "b"}},
                        "UpdateExpression": "SET n = :two", "ConditionExpression": "n = :zero",
                        "ExpressionAttributeValues": {":two": {"N": "2"}, ":zero": {"N": "0"}}}},  # fails
        ])
    assert raised.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert _items(dynamodb) == before


def test_moto_still_refuses_a_malformed_transaction(dynamodb):
    with pytest.raises(ClientError, match="ResourceNotFound|Requested resource not found"):
        dynamodb.transact_write_items(TransactItems=[
            {"Put": {"TableName": "missing", "Item": {"pk": {"S": "x"}, "sk": {"S": "y"}}}}])
