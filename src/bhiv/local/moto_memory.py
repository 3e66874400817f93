"""moto's items, cheaper to hold and to load, and a consistent copy of the tables without a long lock.

* **Loading**: `make_item` builds a moto `Item` straight from its DynamoDB JSON without
  `DynamoType.__init__`'s generic path for the scalar types (S, N, BOOL, NULL); the result is the
  object moto's own constructor makes (same `type`, same `value`).
* **Interning**: attribute names, and string values that repeat (event types, requester ids, feed
  names, marker partitions, timestamps held twice in one item), are shared between items instead
  of held once per item. Strings are immutable: sharing one changes no answer.
* **Copy on write for compactions** (`TableCopy`): a compaction takes references to every item
  under the write lock (milliseconds), then serialises them without it. moto replaces an item on a
  put and deletes by dropping the reference, so both leave the referenced object as it was; only
  UpdateItem changes an item in place, and while a copy is open it first records the item as it
  was. The copy therefore reads the tables exactly as they were at the cut.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

_PATCHED = False
_COPY_LOCK = threading.Lock()
_OPEN_COPIES: list[TableCopy] = []

# String values up to this length are looked up in the intern table; longer ones (payloads) rarely
# repeat and would only grow the table.
INTERN_MAX_LEN = 64
INTERN_TABLE_MAX = 200_000  # cleared when full: a bound, not a cache policy
_interned: dict[str, str] = {}
_SCALARS = frozenset({"S", "N", "BOOL", "NULL"})


def intern_value(value: str) -> str:
    if len(value) > INTERN_MAX_LEN:
        return value
    found = _interned.get(value)
    if found is None:
        if len(_interned) >= INTERN_TABLE_MAX:
            _interned.clear()
        _interned[value] = found = value
    return found


def make_item(hash_attr: str, range_attr: str | None, flat: list[Any]) -> Any:
    """A moto Item from [name, type, value, name, type, value, ...] (the types and values of the
    item's DynamoDB JSON), as `Item(hash, range, attrs)` would build it, without its size check
    (the item passed it when it was written)."""
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict

    new = DynamoType.__new__
    attrs = LimitedSizeDict()
    put = dict.__setitem__
    for position in range(0, len(flat), 3):
        name, kind, value = flat[position], flat[position + 1], flat[position + 2]
        if kind in _SCALARS:
            attribute = new(DynamoType)
            attribute.type = kind
            attribute.value = intern_value(value) if kind == "S" else value
        else:
            attribute = DynamoType({kind: value})
        put(attrs, sys.intern(name), attribute)
    item = Item.__new__(Item)
    item.attrs = attrs
    item.hash_key = attrs[hash_attr]
    item.range_key = attrs[range_attr] if range_attr else None
    return item


def flat_attributes(item: Any) -> list[Any]:
    """An item as [name, type, value, ...]: its DynamoDB JSON (moto's Item.to_json), flattened."""
    flat: list[Any] = []
    for name, typed in item.to_json()["Attributes"].items():
        for kind, value in typed.items():
            flat += (name, kind, value)
    return flat


def share_strings(item: Any) -> None:
    """Intern an item's attribute names and short string values in place (same values)."""
    attrs = item.attrs
    for name, attribute in list(attrs.items()):
        if attribute.type == "S" and isinstance(attribute.value, str):
            attribute.value = intern_value(attribute.value)
        interned = sys.intern(name)
        if interned is not name:
            value = dict.pop(attrs, name)
            dict.__setitem__(attrs, interned, value)


class TableCopy:
    """Every item of every table as it was when the copy was opened (under the write lock).

    `lines()` serialises without the lock; an item that UpdateItem changes meanwhile is served from
    the image recorded just before the change."""

    def __init__(self, tables: dict[str, Any], encode: Callable[[Any], bytes]) -> None:
        self.encode = encode
        self.refs: dict[str, list[Any]] = {}
        for name, table in tables.items():
            if table.range_key_attr:
                self.refs[name] = [item for partition in table.items.values() for item in partition.values()]
            else:
                self.refs[name] = list(table.items.values())
        self._before: dict[int, bytes] = {}
        with _COPY_LOCK:
            _OPEN_COPIES.append(self)

    def counts(self) -> dict[str, int]:
        return {name: len(items) for name, items in self.refs.items()}

    def _changing(self, item: Any) -> None:  # under _COPY_LOCK, before `item` changes in place
        if id(item) not in self._before:
            self._before[id(item)] = self.encode(item)

    def lines(self, table: str) -> Iterator[bytes]:
        for item in self.refs[table]:
            with _COPY_LOCK:
                line = self._before.get(id(item))
                if line is None:
                    line = self.encode(item)
            yield line

    def close(self) -> None:
        with _COPY_LOCK:
            if self in _OPEN_COPIES:
                _OPEN_COPIES.remove(self)
        self.refs.clear()
        self._before.clear()


def _before_update(table: Any, key: dict[str, Any]) -> None:
    from moto.dynamodb.models.dynamo_type import DynamoType

    try:
        hash_value = DynamoType(key[table.hash_key_attr])
        range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
        item = table.get_item(hash_value, range_value)
    except Exception:
        return  # moto raises its own error for this key
    if item is None:
        return  # created by the update: a new object, not in any copy
    with _COPY_LOCK:
        for copy in _OPEN_COPIES:
            copy._changing(item)


def install() -> None:
    """Patch moto (idempotent): UpdateItem records the item's prior image for open table copies,
    and items written through moto share their attribute names and short string values."""
    global _PATCHED
    if _PATCHED:
        return
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    update_item = DynamoDBBackend.update_item

    def update_item_copy_aware(self: Any, table_name: str, key: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if _OPEN_COPIES:
            table = self.tables.get(table_name)
            if table is not None:
                _before_update(table, key)
        item = update_item(self, table_name, key, *args, **kwargs)
        if item is not None:
            share_strings(item)
        return item

    DynamoDBBackend.update_item = update_item_copy_aware  # type: ignore[method-assign]

    put_item = Table.put_item

    def put_item_shared(self: Any, item_attrs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        item = put_item(self, item_attrs, *args, **kwargs)
        if item is not None:
            share_strings(item)
        return item

    Table.put_item = put_item_shared  # type: ignore[method-assign]
    _PATCHED = True


def encode_item(item: Any) -> bytes:
    return json.dumps(flat_attributes(item), separators=(",", ":"), default=_json_default).encode("utf-8")


def _json_default(value: Any) -> Any:
    from datetime import UTC, datetime

    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
