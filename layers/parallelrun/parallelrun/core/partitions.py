"""Partitions (many-models): every mini-batch holds inputs of one partition only.

File inputs take their partition from folder names through ``partition_format``, a path pattern
below the input folder such as ``{store}/{date}/*.png`` (FileDataset's ``partition_format``);
tabular inputs take it from the values of the ``partition_keys`` columns. Everything here is
pure: the planner and the worker call it with what they listed or read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from parallelrun.core.datasets import InputFile, relative_name

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
Partition = dict[str, str]


@dataclass(frozen=True)
class PathPattern:
    """``{store}/{date}/*.png``: ``{name}`` is one folder or file-name part, ``*`` any characters
    but ``/``, ``**`` any number of folders, ``?`` one character."""

    text: str

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(_FIELD.findall(self.text))

    @property
    def regex(self) -> re.Pattern[str]:
        parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\}|\*\*/|\*\*|\*|\?)", self.text.strip("/"))
        out = []
        for part in parts:
            field = _FIELD.fullmatch(part)
            if field:
                out.append(f"(?P<{field.group(1)}>[^/]+)")
            elif part == "**/":
                out.append("(?:.*/)?")
            else:
                out.append({"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part)))
        return re.compile("".join(out))

    def match(self, relative_path: str) -> Partition | None:
        found = self.regex.fullmatch(relative_path)
        return dict(found.groupdict()) if found else None


def check_pattern(text: str) -> PathPattern:
    """A pattern with at least one field, each named once; raises ValueError otherwise."""
    pattern = PathPattern(text.strip())
    fields = pattern.fields
    stray_brace = set("{}") & set(_FIELD.sub("", pattern.text))
    if not fields or len(set(fields)) != len(fields) or stray_brace:
        raise ValueError(text)
    pattern.regex  # noqa: B018 - compiles, or raises re.error (a ValueError)
    return pattern


# The mini-batches still filling, by partition (see file_batches), in the order they were opened.
OpenBatches = dict[tuple[str, ...] | None, tuple[list[InputFile], Partition | None]]


def group_of(partition: Partition | None) -> tuple[str, ...] | None:
    """The key :data:`OpenBatches` holds a partition's open mini-batch under."""
    return tuple(partition.values()) if partition is not None else None


def file_batches(files: Iterable[InputFile], prefix: str, pattern: PathPattern | None, keys: tuple[str, ...],
                 size: int, open_batches: OpenBatches | None = None,
                 ) -> Iterator[tuple[list[InputFile], Partition | None]]:
    """Mini-batches of at most ``size`` files of one partition each (without a pattern, all of
    the partition ``None``), in the order they fill up, so memory holds one open mini-batch per
    partition, never the listing. Files the pattern does not match gather under the partition
    ``None``: the worker fails them, saying why.

    When ``files`` ends, the mini-batches still filling follow in the order they were opened;
    given ``open_batches``, they stay there instead, for more files to join: the planner hands
    them from one invocation to the next, and :func:`remainder` ends them once the listing is
    complete, which gives the very mini-batches one pass over the whole listing gives."""
    filling: OpenBatches = {} if open_batches is None else open_batches
    for item in files:
        partition = None
        if pattern is not None:
            found = pattern.match(relative_name(item.key, prefix))
            partition = {key: found[key] for key in keys} if found is not None else None
        group = group_of(partition)
        entry = filling.setdefault(group, ([], partition))
        entry[0].append(item)
        if len(entry[0]) == size:
            yield entry
            del filling[group]
    if open_batches is None:
        yield from remainder(filling)


def remainder(open_batches: OpenBatches) -> Iterator[tuple[list[InputFile], Partition | None]]:
    """The mini-batches still filling, in the order they were opened; they leave ``open_batches``."""
    while open_batches:
        yield open_batches.pop(next(iter(open_batches)))


def frame_groups(frame: Any, keys: tuple[str, ...]) -> list[tuple[Partition, Any]]:
    """A DataFrame's rows by partition, in the order partitions first appear, each group's rows
    in their original order (its index keeps their positions). A missing column raises KeyError."""
    missing = [key for key in keys if key not in frame.columns]
    if missing:
        raise KeyError(f"partition_keys column(s) {missing} not in the input's columns {list(frame.columns)}")
    if frame.empty:
        return []
    positioned = frame.reset_index(drop=True)
    groups = positioned.groupby(list(keys), sort=False, dropna=False)
    out = []
    for values, rows in groups:
        values = values if isinstance(values, tuple) else (values,)
        out.append(({key: _plain(value) for key, value in zip(keys, values)}, rows))
    return out


def _plain(value: Any) -> Any:
    """numpy scalars as plain Python values, so a partition reads and prints as the user wrote it."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:  # NaN: a row with no value in the key column
        return None
    return value


def fill(template: str, partition: Partition | None) -> str:
    """``sales-{store}`` with the partition's values; KeyError names a field the partition lacks."""
    values = partition or {}
    return _FIELD.sub(lambda m: str(values[m.group(1)]), template)


def template_fields(template: str) -> tuple[str, ...]:
    return tuple(_FIELD.findall(template))
