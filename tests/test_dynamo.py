"""The DynamoDB edge (parallelrun.aws.dynamo) without moto: a fake table records the requests
and answers them page by page, a fake client cancels transactions as DynamoDB does."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError

from parallelrun.aws import dynamo


def _error(code: str, reasons: list[str] | None = None) -> ClientError:
    response: dict[str, Any] = {"Error": {"Code": code, "Message": code}}
    if reasons is not None:
        response["CancellationReasons"] = [{"Code": reason} for reason in reasons]
    return ClientError(response, "Op")


CONDITION_FAILED = _error("ConditionalCheckFailedException")
CONFLICT = _error("TransactionCanceledException", ["None", "TransactionConflict"])


class FakeTable:
    """Pages of ``items`` two at a time; every request's parameters in ``calls``; a write
    raises ``fail`` when it is set."""

    def __init__(self, items: list[dict[str, Any]] | None = None, fail: Exception | None = None) -> None:
        self.items = items or []
        self.fail = fail
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _page(self, op: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((op, kwargs))
        start = kwargs.get("ExclusiveStartKey", {}).get("at", 0)
        page: dict[str, Any] = {"Items": self.items[start:start + 2]}
        if start + 2 < len(self.items):
            page["LastEvaluatedKey"] = {"at": start + 2}
        return page

    def query(self, **kwargs: Any) -> dict[str, Any]:
        return self._page("query", kwargs)

    def scan(self, **kwargs: Any) -> dict[str, Any]:
        return self._page("scan", kwargs)

    def _write(self, op: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((op, kwargs))
        if self.fail is not None:
            raise self.fail
        return {"Attributes": {"latest": 3}} if kwargs.get("ReturnValues") else {}

    def put_item(self, **kwargs: Any) -> dict[str, Any]:
        return self._write("put_item", kwargs)

    def update_item(self, **kwargs: Any) -> dict[str, Any]:
        return self._write("update_item", kwargs)

    def get_item(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("get_item", kwargs))
        return {"Item": self.items[0]} if self.items else {}


def test_a_query_reads_every_page_lazily_and_keeps_its_parameters():
    table = FakeTable([{"n": i} for i in range(5)])
    found = dynamo.query("t", table=table, KeyConditionExpression="pk = :pk", ConsistentRead=True)
    assert table.calls == []  # nothing asked before the first item is wanted
    assert [item["n"] for item in found] == [0, 1, 2, 3, 4]
    assert [kwargs.get("ExclusiveStartKey") for _, kwargs in table.calls] == [None, {"at": 2}, {"at": 4}]
    assert all(kwargs["ConsistentRead"] and kwargs["KeyConditionExpression"] == "pk = :pk"
               for _, kwargs in table.calls)


def test_a_scan_of_nothing_is_one_request():
    table = FakeTable([])
    assert list(dynamo.scan("t", table=table, FilterExpression="x")) == []
    assert table.calls == [("scan", {"FilterExpression": "x"})]


def test_a_conditional_write_that_lost_is_false_and_any_other_error_raises():
    assert dynamo.put_new("t", {"pk": "a"}, table=FakeTable())
    assert not dynamo.put_new("t", {"pk": "a"}, table=FakeTable(fail=CONDITION_FAILED))
    assert not dynamo.update_if("t", {"pk": "a"}, "SET x = :x", "x < :x", {":x": 1}, table=FakeTable(fail=CONDITION_FAILED))
    with pytest.raises(ClientError):
        dynamo.put_new("t", {"pk": "a"}, table=FakeTable(fail=_error("ProvisionedThroughputExceededException")))
    # A transaction whose condition failed lost too; one cancelled by a conflict did not.
    assert not dynamo.succeeds(lambda: (_ for _ in ()).throw(_error("TransactionCanceledException",
                                                                       ["ConditionalCheckFailed", "None"])))
    with pytest.raises(ClientError):
        dynamo.succeeds(lambda: (_ for _ in ()).throw(CONFLICT))


def test_the_writes_send_what_they_are_given():
    table = FakeTable()
    assert dynamo.put_new("t", {"pk": "a"}, table=table)
    assert table.calls[-1] == ("put_item", {"Item": {"pk": "a"}, "ConditionExpression": "attribute_not_exists(pk)"})
    assert dynamo.update("t", {"pk": "a"}, "ADD n :one", {":one": 1}, returns="UPDATED_NEW", table=table) == {"latest": 3}
    assert table.calls[-1] == ("update_item", {"Key": {"pk": "a"}, "UpdateExpression": "ADD n :one",
                                               "ExpressionAttributeValues": {":one": 1}, "ReturnValues": "UPDATED_NEW"})
    assert dynamo.update_if("t", {"pk": "a"}, "SET #s = :s", "#s = :e", {":s": 1, ":e": 0}, names={"#s": "state"},
                            table=table)
    assert table.calls[-1][1]["ConditionExpression"] == "#s = :e"
    assert table.calls[-1][1]["ExpressionAttributeNames"] == {"#s": "state"}


def test_a_read_is_strongly_consistent_only_when_asked():
    table = FakeTable([{"pk": "a"}])
    assert dynamo.get("t", {"pk": "a"}, table=table) == {"pk": "a"}
    assert dynamo.get("t", {"pk": "a"}, consistent=True, table=table) == {"pk": "a"}
    assert [kwargs for _, kwargs in table.calls] == [{"Key": {"pk": "a"}}, {"Key": {"pk": "a"}, "ConsistentRead": True}]
    assert dynamo.get("t", {"pk": "b"}, table=FakeTable()) is None


def test_values_go_in_as_decimals_and_come_back_plain():
    assert dynamo.decimal(1.23456) == Decimal("1.2346") and dynamo.decimal(1.23456, 3) == Decimal("1.235")
    assert dynamo.decimal(7) == 7 and dynamo.decimal("x") == "x"
    assert dynamo.plain({"a": Decimal("2"), "b": {"c": Decimal("0.5")}, "d": "s"}) == {"a": 2, "b": {"c": 0.5}, "d": "s"}
    assert isinstance(dynamo.plain(Decimal("2")), int)
    assert dynamo.serialize({"pk": "a", "n": 2, "f": 0.5, "m": {"k": 1}}) == {
        "pk": {"S": "a"}, "n": {"N": "2"}, "f": {"N": "0.5"}, "m": {"M": {"k": {"N": "1"}}}}


class FakeClient:
    """Cancels the first ``conflicts`` transactions with ``error``."""

    def __init__(self, conflicts: int, error: Exception = CONFLICT) -> None:
        self.conflicts, self.error, self.tries = conflicts, error, 0

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> None:  # noqa: N803 (boto3's name)
        self.tries += 1
        if self.tries <= self.conflicts:
            raise self.error


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(dynamo.time, "sleep", slept.append)
    return slept


def test_a_transaction_cancelled_by_a_conflict_is_made_again_with_a_growing_back_off(no_sleep):
    client = FakeClient(conflicts=3)
    dynamo.transact([{"Put": {}}], client=client)
    assert client.tries == 4 and len(no_sleep) == 3
    assert all(0 <= pause <= min(dynamo.TRANSACT_BACKOFF_CAP, dynamo.TRANSACT_BACKOFF * 2 ** tried)
               for tried, pause in enumerate(no_sleep, start=1))


def test_a_transaction_gives_up_after_its_tries_and_never_retries_a_failed_condition(no_sleep):
    endless = FakeClient(conflicts=10 ** 6)
    with pytest.raises(ClientError):
        dynamo.transact([{"Put": {}}], client=endless)
    assert endless.tries == dynamo.TRANSACT_TRIES
    lost = FakeClient(conflicts=1, error=_error("TransactionCanceledException", ["ConditionalCheckFailed"]))
    with pytest.raises(ClientError):
        dynamo.transact([{"Put": {}}], client=lost)
    assert lost.tries == 1


def test_a_conflict_is_told_from_a_failed_condition():
    assert dynamo.is_transaction_conflict(CONFLICT) and not dynamo.is_conditional_failure(CONFLICT)
    assert dynamo.is_transaction_conflict(_error("TransactionInProgressException"))
    both = _error("TransactionCanceledException", ["TransactionConflict", "ConditionalCheckFailed"])
    assert not dynamo.is_transaction_conflict(both) and dynamo.is_conditional_failure(both)
    assert not dynamo.is_conditional_failure(ValueError("not an AWS error"))


def test_batch_get_asks_in_hundreds_and_again_for_what_was_unprocessed():
    class Client:
        def __init__(self) -> None:
            self.requests: list[int] = []

        def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
            keys = RequestItems["t"]["Keys"]
            self.requests.append(len(keys))
            # The first request of each hundred leaves its last key unprocessed.
            served, left = (keys[:-1], keys[-1:]) if len(keys) > 1 else (keys, [])
            return {"Responses": {"t": served}, **({"UnprocessedKeys": {"t": {"Keys": left}}} if left else {})}

    client = Client()
    table = type("T", (), {"meta": type("M", (), {"client": client})()})()
    keys = [{"pk": str(i)} for i in range(150)]
    assert sorted(item["pk"] for item in dynamo.batch_get("t", keys, table=table)) == sorted(str(i) for i in range(150))
    assert client.requests == [100, 1, 50, 1]
