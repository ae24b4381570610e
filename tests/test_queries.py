"""local.queries: a Query of a table's key reads one partition, with the same pages as moto's
own; a Query of an index still sees the whole table (in-process moto)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws
from moto.dynamodb.models.table import Table

from parallelrun.local import queries

TABLE = f"queries-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    queries.install()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                            AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in ("pk", "sk", "g")],
                            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                            GlobalSecondaryIndexes=[{"IndexName": "by-g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                                     "Projection": {"ProjectionType": "ALL"}}])
        for pk in ("a", "b", "c"):
            for n in range(30):
                client.put_item(TableName=TABLE, Item={"pk": {"S": pk}, "sk": {"S": f"{n:03d}"}, "g": {"S": f"g{n % 2}"}})
        try:
            yield client
        finally:  # a mock of the whole session may be active around this one
            client.delete_table(TableName=TABLE)


def _pages(client, **kwargs) -> list[list[str]]:
    pages, start = [], {}
    while True:
        page = client.query(TableName=TABLE, Limit=7, **start, **kwargs)
        pages.append([f"{i['pk']['S']}/{i['sk']['S']}" for i in page["Items"]])
        if "LastEvaluatedKey" not in page:
            return pages
        start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}


def test_a_query_reads_only_its_partition_with_moto_pages(dynamodb, monkeypatch: pytest.MonkeyPatch):
    asked = dict(KeyConditionExpression="pk = :p AND sk BETWEEN :lo AND :hi",
                 ExpressionAttributeValues={":p": {"S": "b"}, ":lo": {"S": "004"}, ":hi": {"S": "025"}},
                 ScanIndexForward=False)
    ours = _pages(dynamodb, **asked)
    seen: list[str] = []
    real = Table.all_items

    def spying(table):
        items = real(table)
        seen.extend({item.hash_key.value for item in items})
        return items

    monkeypatch.setattr(Table, "all_items", spying)
    assert _pages(dynamodb, **asked) == ours
    assert set(seen) == {"b"}  # the other partitions were never looked at
    assert ours == [  # DynamoDB's pages: descending, 7 a page, the last one short
        [f"b/{n:03d}" for n in range(25, 18, -1)], [f"b/{n:03d}" for n in range(18, 11, -1)],
        [f"b/{n:03d}" for n in range(11, 4, -1)], ["b/004"]]


def test_a_query_of_an_index_sees_every_partition(dynamodb):
    rows = [row for page in _pages(dynamodb, IndexName="by-g", KeyConditionExpression="g = :g",
                                   ExpressionAttributeValues={":g": {"S": "g1"}}) for row in page]
    assert sorted(rows) == sorted(f"{pk}/{n:03d}" for pk in "abc" for n in range(1, 30, 2))
