"""The DynamoDB edge: every request the store makes to its table goes through here.

One place for what every record module needs and would otherwise write again: reading all the
pages of a Query or Scan, telling a conditional write that lost (someone else did the work
first) from a failure, turning Python values into DynamoDB's and back, and a transaction that
is made again when a concurrent one cancelled it. Each function takes the table's name and
uses the process's shared Table resource (:func:`parallelrun.aws.table`); a test passes its own
``table`` (or ``client`` for transactions) instead, so the store's logic runs without moto.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeSerializer

from parallelrun import aws

# A transaction cancelled by a concurrent transaction on one of its items is made again this
# many times, after a full-jitter exponential back-off from TRANSACT_BACKOFF up to
# TRANSACT_BACKOFF_CAP seconds: a conflicting transaction lasts tens of milliseconds, so ten
# tries outlast any burst short of a broken table, and the mini-batch never runs again for it.
TRANSACT_TRIES = 10
TRANSACT_BACKOFF, TRANSACT_BACKOFF_CAP = 0.02, 1.0
BATCH_GET_LIMIT = 100  # keys per BatchGetItem, DynamoDB's limit
_serializer = TypeSerializer()


# --- values in and out


def decimal(value: Any, places: int = 4) -> Any:
    """A float as DynamoDB takes it (a Decimal, rounded: binary floats have no exact decimal
    form); any other value as it is."""
    return Decimal(str(round(value, places))) if isinstance(value, float) else value


def plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; callers want int or float (in maps too)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    """An item (or a key, or expression values) in DynamoDB JSON, for the client's transactions."""
    return {k: _serializer.serialize(decimal(v)) for k, v in item.items()}


# --- errors


def is_conditional_failure(error: Exception) -> bool:
    """True when a DynamoDB write lost its condition (someone else already did the work)."""
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    if code == "ConditionalCheckFailedException":
        return True
    if code == "TransactionCanceledException":
        reasons = getattr(error, "response", {}).get("CancellationReasons", [])
        return any(r.get("Code") == "ConditionalCheckFailed" for r in reasons)
    return False


def is_transaction_conflict(error: Exception) -> bool:
    """True when a transaction was cancelled only because another was in progress on one of its
    items (CancellationReasons code ``TransactionConflict``, "Transaction is ongoing for the item"),
    or its ClientRequestToken's first try is still running (``TransactionInProgressException``,
    which botocore retries, but only up to its attempts): nothing was written, and trying again is
    the fix. A failed condition among the reasons is not a conflict: trying again cannot succeed.
    https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html"""
    response = getattr(error, "response", {})
    code = response.get("Error", {}).get("Code", "")
    if code == "TransactionInProgressException":
        return True
    reasons = [r.get("Code") for r in response.get("CancellationReasons", [])]
    return (code == "TransactionCanceledException" and "TransactionConflict" in reasons
            and "ConditionalCheckFailed" not in reasons)


def succeeds(write: Callable[[], Any]) -> bool:
    """Make a conditional write; False when its condition failed (someone else did it first).
    Every other error is raised."""
    try:
        write()
        return True
    except Exception as error:
        if is_conditional_failure(error):
            return False
        raise


# --- single items


def get(name: str, key: dict[str, Any], consistent: bool = False, *, table: Any = None) -> dict[str, Any] | None:
    """The item at ``key``, or None."""
    return _table(name, table).get_item(Key=key, **({"ConsistentRead": True} if consistent else {})).get("Item")


def put(name: str, item: dict[str, Any], *, table: Any = None) -> None:
    _table(name, table).put_item(Item=item)


def put_new(name: str, item: dict[str, Any], *, table: Any = None) -> bool:
    """Put ``item`` only where no item is yet; False if one was (a second create of one name)."""
    return succeeds(lambda: _table(name, table).put_item(Item=item, ConditionExpression="attribute_not_exists(pk)"))


def update(name: str, key: dict[str, Any], expression: str, values: dict[str, Any] | None = None, *,
           names: dict[str, str] | None = None, condition: str | None = None, returns: str | None = None,
           table: Any = None) -> dict[str, Any]:
    """An UpdateItem; the attributes ``returns`` asks for ({} if none). A failed ``condition``
    raises: :func:`update_if` is the write that may lose."""
    extra: dict[str, Any] = {}
    if values:
        extra["ExpressionAttributeValues"] = values
    if names:
        extra["ExpressionAttributeNames"] = names
    if condition:
        extra["ConditionExpression"] = condition
    if returns:
        extra["ReturnValues"] = returns
    return _table(name, table).update_item(Key=key, UpdateExpression=expression, **extra).get("Attributes", {})


def update_if(name: str, key: dict[str, Any], expression: str, condition: str, values: dict[str, Any] | None = None,
              *, names: dict[str, str] | None = None, table: Any = None) -> bool:
    """An UpdateItem made only if ``condition`` holds; False when it did not (a race lost)."""
    return succeeds(lambda: update(name, key, expression, values, names=names, condition=condition, table=table))


def delete(name: str, key: dict[str, Any], *, table: Any = None) -> None:
    _table(name, table).delete_item(Key=key)


# --- many items


def pages(request: Callable[..., dict[str, Any]], **kwargs: Any) -> Iterator[dict[str, Any]]:
    """The items of a Query or Scan (``request`` is the table's ``query`` or ``scan``) over all
    its pages, fetched as they are consumed: a big result is never held whole."""
    while True:
        page = request(**kwargs)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        kwargs = {**kwargs, "ExclusiveStartKey": page["LastEvaluatedKey"]}


def query(name: str, *, table: Any = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item of a Query (``kwargs`` are its parameters), page by page."""
    return pages(_table(name, table).query, **kwargs)


def query_prefix(name: str, pk: str, prefix: str, *, consistent: bool = False, limit: int | None = None,
                 table: Any = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item of partition key ``pk`` whose sort key starts with ``prefix``, in sort-key
    order (``ScanIndexForward=False`` in ``kwargs`` for the reverse), at most ``limit`` a page."""
    options = {**({"ConsistentRead": True} if consistent else {}), **({"Limit": limit} if limit else {}), **kwargs}
    return query(name, table=table, KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                 ExpressionAttributeValues={":pk": pk, ":prefix": prefix}, **options)


def scan(name: str, *, table: Any = None, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item of a Scan, page by page: for listings, never a hot path."""
    return pages(_table(name, table).scan, **kwargs)


def batch_get(name: str, keys: Iterable[dict[str, Any]], consistent: bool = False, *,
              table: Any = None) -> Iterator[dict[str, Any]]:
    """The items found at ``keys`` (absent ones are left out), BATCH_GET_LIMIT keys a request,
    asking again for any DynamoDB left unprocessed; strongly consistent reads if ``consistent``
    (BatchGetItem takes ConsistentRead per table,
    https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchGetItem.html)."""
    client = _table(name, table).meta.client  # the resource's client speaks plain Python values
    wanted = list(keys)
    read = {"ConsistentRead": True} if consistent else {}
    for start in range(0, len(wanted), BATCH_GET_LIMIT):
        request: dict[str, Any] | None = {name: {"Keys": wanted[start:start + BATCH_GET_LIMIT], **read}}
        while request:
            response = client.batch_get_item(RequestItems=request)
            yield from response.get("Responses", {}).get(name, [])
            request = response.get("UnprocessedKeys") or None


def writer(name: str, overwrite_by_pkeys: list[str] | None = None, *, table: Any = None) -> AbstractContextManager[Any]:
    """A batch writer: puts and deletes sent 25 a request, unprocessed ones sent again."""
    options = {"overwrite_by_pkeys": overwrite_by_pkeys} if overwrite_by_pkeys else {}
    return _table(name, table).batch_writer(**options)


# --- transactions


def transact(items: list[dict[str, Any]], *, client: Any = None) -> None:
    """One TransactWriteItems (``items`` in DynamoDB JSON, see :func:`serialize`), made again
    after a cancellation by a concurrent transaction on one of its items: nothing of a cancelled
    transaction was written, so trying again is safe, and botocore does not (DESIGN §6). Any
    other error, a failed condition included, is raised."""
    for tried in range(1, TRANSACT_TRIES + 1):
        try:
            (client or aws.client("dynamodb")).transact_write_items(TransactItems=items)
            return
        except Exception as error:
            if tried == TRANSACT_TRIES or not is_transaction_conflict(error):
                raise
        _back_off(tried)


def put_new_where_absent(name: str, item: dict[str, Any], absent: dict[str, Any]) -> bool:
    """Put ``item`` only where no item is yet, and only while no item is at the key ``absent``
    (one transaction: two such writes that check each other's keys cannot both succeed); False
    if either was there."""
    new = "attribute_not_exists(pk)"
    try:
        transact([{"Put": {"TableName": name, "Item": serialize(item), "ConditionExpression": new}},
                  {"ConditionCheck": {"TableName": name, "Key": serialize(absent), "ConditionExpression": new}}])
    except Exception as error:
        if not is_conditional_failure(error):
            raise
        return False
    return True


def _back_off(tried: int) -> None:
    """Full jitter: writers that collided must not collide again in step.
    https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/"""
    time.sleep(random.uniform(0, min(TRANSACT_BACKOFF_CAP, TRANSACT_BACKOFF * 2 ** tried)))


def _table(name: str, table: Any) -> Any:
    return table if table is not None else aws.table(name)
