"""Queries at DynamoDB's cost, not the table's size: moto answers a Query of a table's own key by
sorting every item of the table and keeping those of the queried partition, so reading a job
(its item and counter shards) or a page of its batch records costs as much as the table holds,
and a large local job's time grows with the square of its mini-batches. DynamoDB reads only the
queried partition.

Installed, a Query of a table's own key sees only that partition's items: the same results in
the same order (moto still sorts them by range key, filters and pages them), without the rest
of the table. A Query of an index still looks at every item, as an index is kept apart on AWS
but not in moto.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table

_partition = threading.local()


def install() -> None:
    """Make moto's Query of a table's key read one partition, in this process. Once is enough and
    it is never undone: what a Query answers is unchanged, only what it costs."""
    if getattr(Table.query, "_one_partition", False):
        return
    original_query, original_all_items = Table.query, Table.all_items
    signature = inspect.signature(original_query)

    def query(table: Table, hash_key: DynamoType | None, *args: Any, **kwargs: Any) -> Any:
        index_name = signature.bind(table, hash_key, *args, **kwargs).arguments.get("index_name")
        if index_name or hash_key is None or not table.range_key_attr:
            return original_query(table, hash_key, *args, **kwargs)
        _partition.key = hash_key
        try:
            return original_query(table, hash_key, *args, **kwargs)
        finally:
            _partition.key = None

    def all_items(table: Table) -> list[Item]:
        key = getattr(_partition, "key", None)
        if key is None:
            return original_all_items(table)
        return list(table.items.get(key, {}).values())

    query._one_partition = True  # type: ignore[attr-defined]
    Table.query = query  # type: ignore[method-assign]
    Table.all_items = all_items  # type: ignore[method-assign]
