"""Transactions at DynamoDB's cost, not the table's size: moto's TransactWriteItems copies each
whole table it touches before it starts (to put it back if an action fails), so every commit of
a job costs as much as the table holds and a local job's time grows with the square of its
mini-batches. DynamoDB's own cost does not depend on the table's size.

Installed, a transaction keeps a copy of only the items its actions name, and puts those back
when it is cancelled: the same all-or-nothing outcome (every item as it was before), without the
table copy. moto's rollback still runs, on the table it would have copied, and changes nothing.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from moto.dynamodb import models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table

_in_transaction = threading.local()

# One item's place: its table, and its hash and range keys.
Place = tuple[Table, DynamoType, DynamoType | None]


class _TableCopyAvoided:
    """Stands in for the ``copy`` module inside moto's DynamoDB backend: ``deepcopy`` of a whole
    table during a transaction hands back the table itself; everything else is the real copy."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    def deepcopy(self, value: Any, memo: dict[int, Any] | None = None) -> Any:
        if getattr(_in_transaction, "active", False) and isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)


def _place(backend: DynamoDBBackend, action: dict[str, Any]) -> Place:
    (kind, body), = action.items()
    table = backend.get_table(body["TableName"])
    key = body["Item"] if kind == "Put" else body["Key"]
    range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
    return table, DynamoType(key[table.hash_key_attr]), range_key


def _restore(place: Place, item: Item | None) -> None:
    table, hash_key, range_key = place
    if item is None:
        table.delete_item(hash_key, range_key)
    elif range_key is None:
        table.items[hash_key] = item
    else:
        table.items[hash_key][range_key] = item


def install() -> None:
    """Make moto's transactions keep only the items they name, in this process (the in-process
    mock and a server started here alike). Once is enough and it is never undone: what a
    transaction does is unchanged, only what it costs."""
    if isinstance(dynamodb_models.copy, _TableCopyAvoided):
        return
    original = DynamoDBBackend.transact_write_items

    def transact_write_items(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        try:
            places = [_place(backend, action) for action in transact_items]
        except Exception:  # an unknown table or a malformed action: moto's own path says what is wrong
            return original(backend, transact_items)
        before = [(place, copy.deepcopy(place[0].get_item(place[1], place[2]))) for place in places]
        _in_transaction.active = True
        try:
            original(backend, transact_items)
        except BaseException:
            for place, item in reversed(before):
                _restore(place, item)
            raise
        finally:
            _in_transaction.active = False

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    dynamodb_models.copy = _TableCopyAvoided()  # type: ignore[assignment]
