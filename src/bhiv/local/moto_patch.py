"""Fixes to moto for a long-running local stack: a faster TransactWriteItems, bounded memory,
and Query that reads only the requested partition (moto sorts the whole table on every call).

moto 5.2 deep-copies a whole table for every item of a transaction so it can roll back; with a
growing table each transaction gets slower (8 items/s at 1,000 items, measured). This version
checks every condition first and writes only when all hold, under one lock, so nothing ever needs
rolling back. Semantics kept: all-or-nothing, per-item cancellation reasons, ALL_OLD on failure.
"""

from __future__ import annotations

import copy
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from typing import Any

import orjson

_LOCK = threading.RLock()
_PATCHED = False


def install() -> None:
    global _PATCHED
    if _PATCHED:
        return
    from bhiv.local import moto_memory

    moto_memory.install()  # first: it replaces moto's DynamoType class, which the patches below capture
    _cheaper_items_and_conditions()
    _reads_that_iterate_tolerate_writes()
    _attribute_keys_kept()
    _faster_json_and_key_checks()
    _string_values_compare_as_they_are()
    from moto.dynamodb.comparisons import get_filter_expression as get_condition
    from moto.dynamodb.exceptions import (
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )
    from moto.dynamodb.models import DynamoDBBackend

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        if len(transact_items) > 100:
            raise TooManyTransactionsException()
        with _LOCK:
            seen: set[tuple[str, str]] = set()
            plan: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
            errors: list[tuple[str | None, str | None, dict[str, Any] | None]] = []
            for entry in transact_items:
                if len(entry) > 1:
                    raise TransactWriteSingleOpException
                op_type, op = next(iter(entry.items()))
                table = self.get_table(op["TableName"])
                if op_type == "Put":
                    attrs = op["Item"]
                    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                    if table.range_key_attr is not None:
                        key[table.range_key_attr] = attrs[table.range_key_attr]
                else:
                    key = op["Key"]
                marker = (str(op["TableName"]), str(dict(sorted(key.items()))))
                if marker in seen:
                    raise MultipleTransactionsException()
                seen.add(marker)
                current = self.get_item(op["TableName"], key)
                condition = op.get("ConditionExpression")
                if condition is not None and not get_condition(
                    condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
                ).expr(current):
                    old = None
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        old = current.to_json()["Attributes"]
                    errors.append(("ConditionalCheckFailed", "The conditional request failed", old))
                else:
                    errors.append((None, None, None))
                plan.append((op_type, op, key))
            if any(code is not None for code, _, _ in errors):
                raise TransactionCanceledException(errors)
            for op_type, op, key in plan:
                names = op.get("ExpressionAttributeNames")
                values = op.get("ExpressionAttributeValues")
                if op_type == "Put":
                    # its condition was checked above, under the same lock: not parsed again
                    self.put_item(op["TableName"], op["Item"], overwrite=True)
                elif op_type == "Delete":
                    self.delete_item(
                        op["TableName"], key, expression_attribute_names=names, expression_attribute_values=values
                    )
                elif op_type == "Update":
                    self.update_item(
                        op["TableName"],
                        key,
                        update_expression=op["UpdateExpression"],
                        expression_attribute_names=names,
                        expression_attribute_values=values,
                    )

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    _forget_used_shard_iterators()
    _patch_query()
    _PATCHED = True


def _cheaper_items_and_conditions() -> None:
    """Two costs of every moto write that grow with nothing useful: the same condition expression
    is tokenised and parsed again for every item, and an item's types are checked by a recursive
    walk that, for plain strings and numbers, only ever checks the numbers. (Items themselves are
    built in one pass: bhiv.local.moto_memory.) Same checks, same errors."""
    import moto.dynamodb.models as models_module
    import moto.dynamodb.responses as responses_module
    from moto.dynamodb import comparisons
    from moto.dynamodb.models import table as table_module

    validate_types = table_module.Table._validate_item_types

    def validate_item_types(self: Any, item_attrs: dict[str, Any], attr: str | None = None) -> None:
        # moto's walk checks each top-level attribute on its own; for a value {"S": text} or
        # {"N": text} that is only the number's text. Other values take moto's walk, in order.
        if attr is not None:
            validate_types(self, item_attrs, attr)
            return
        for name, value in item_attrs.items():
            if type(value) is dict and len(value) == 1:
                ((kind, inner),) = value.items()
                if type(inner) is str and kind == "S":
                    continue
                if type(inner) is str and kind == "N":
                    self._validate_number_type(inner)
                    continue
            validate_types(self, {name: value})

    validate_item_types.__wrapped__ = validate_types  # type: ignore[attr-defined]  # for the tests
    table_module.Table._validate_item_types = validate_item_types  # type: ignore[method-assign]

    create_parser = comparisons.create_condition_expression_parser
    parsed: dict[bytes, _ParsedCondition] = {}

    templates: dict[bytes, _ConditionTemplate | None] = {}

    def parse(expr: str | None, names: Any, values: Any) -> _ParsedCondition:
        parser = create_parser(expr, names, values)
        op = parser.parse()  # raises for a bad expression: nothing cached
        return _ParsedCondition(op, parser.expr_attr_names_found, parser.expr_attr_values_found)

    def create_condition_expression_parser(expr: str | None, names: Any, values: Any) -> Any:
        # Conditions with values (e.g. `version = :v`) change value on every write: parsed once per
        # shape, with each value bound into a copy of the tree (bhiv.local.moto_patch._ConditionTemplate).
        shape = _value_shape(values)
        if shape is not None:
            try:
                key = orjson.dumps([expr, names, shape], option=orjson.OPT_SORT_KEYS)
            except (TypeError, ValueError):
                return create_parser(expr, names, values)
            if key not in templates:
                real = parse(expr, names, values)
                if len(templates) >= 4096:
                    templates.clear()
                templates[key] = _ConditionTemplate.build(lambda fake: parse(expr, names, fake), values, real)
                return real
            template = templates[key]
            if template is None:
                return parse(expr, names, values)
            return template.bind(values)
        try:
            key = orjson.dumps([expr, names, values], option=orjson.OPT_SORT_KEYS)
        except (TypeError, ValueError):
            return create_parser(expr, names, values)
        hit = parsed.get(key)
        if hit is None:
            hit = parse(expr, names, values)
            if len(parsed) >= 4096:
                parsed.clear()
            parsed[key] = hit
        return hit

    def get_filter_expression(expr: str | None, names: Any, values: Any) -> Any:
        return create_condition_expression_parser(expr, names, values).parse()

    for module in (comparisons, table_module, models_module, responses_module):
        if hasattr(module, "get_filter_expression"):
            module.get_filter_expression = get_filter_expression  # type: ignore[attr-defined]
        if hasattr(module, "create_condition_expression_parser"):
            module.create_condition_expression_parser = create_condition_expression_parser  # type: ignore[attr-defined]


_PLAIN_SCALARS = frozenset({"S", "N", "B", "BOOL", "NULL"})


def _reads_that_iterate_tolerate_writes() -> None:
    """moto counts a table's items (DescribeTable) and lists them (Scan) by looping over its dicts
    in Python while other threads write, so a put that adds a partition meanwhile fails the read
    with "dictionary changed size during iteration": a 500 from the Bucket's health check under
    load. These take each dict's values in one C-level copy (no other thread runs during it) and
    then loop over the copy: the same answers, taken at an instant."""
    from moto.dynamodb.models.table import Table

    def partitions(table: Any) -> list[Any]:
        return list(table.items.values())

    def table_len(self: Any) -> int:
        if self.has_range_key:
            return sum(len(partition) for partition in partitions(self))
        return len(partitions(self))

    def all_items(self: Any) -> list[Any]:
        items: list[Any] = []
        for partition in partitions(self):
            if self.range_key_attr:
                items.extend(list(partition.values()))
            else:
                items.append(partition)
        return sorted(items, key=lambda x: (x.hash_key, x.range_key) if x.range_key else x.hash_key)

    def has_idx_items(self: Any, index_name: str) -> list[Any]:
        index_attrs = {i["AttributeName"] for i in self.get_index(index_name).schema}
        items: list[Any] = []
        for partition in partitions(self):
            for item in list(partition.values()) if self.range_key_attr else [partition]:
                if index_attrs.issubset(set(item.attrs)):
                    items.append(item)
        return items

    Table.__len__ = table_len  # type: ignore[method-assign]
    Table.all_items = all_items  # type: ignore[method-assign]
    Table.has_idx_items = has_idx_items  # type: ignore[method-assign]


def _attribute_keys_kept() -> None:
    """moto's `Table.attribute_keys` (every key attribute of the table and its indexes) builds a new
    list from every index's schema on each read, and a put reads it once per attribute of the item
    (validate_put_has_empty_attrs): a twelfth of a single write's CPU on the events table. The list
    is kept with the index objects it came from, and built again whenever they differ (an
    UpdateTable that adds or drops an index replaces them). Every caller only reads it."""
    from moto.dynamodb.models.table import Table

    compute = Table.attribute_keys.fget

    def attribute_keys(self: Any) -> list[str]:
        indexes = (*self.indexes, *self.global_indexes)
        kept = self.__dict__.get("_bhiv_attribute_keys")
        if (
            kept is not None
            and len(kept[0]) == len(indexes)
            and all(a is b for a, b in zip(kept[0], indexes, strict=True))
            and kept[1] == self.table_key_attrs
        ):
            return kept[2]  # type: ignore[no-any-return]
        keys = compute(self)
        self._bhiv_attribute_keys = (indexes, list(self.table_key_attrs), keys)
        return keys  # type: ignore[no-any-return]

    Table.attribute_keys = property(attribute_keys)  # type: ignore[assignment,method-assign]

    # moto's empty-key check of every put builds the list of empty string attributes and of every
    # index's key names; it can only refuse an item holding an empty value, so the others skip it.
    import moto.dynamodb.responses as responses_module

    check_empty_keys = responses_module.validate_put_has_empty_keys

    def validate_put_has_empty_keys(field_updates: Any, table: Any, custom_error_msg: str | None = None) -> None:
        for value in field_updates.values():
            if not isinstance(value, dict) or len(value) != 1 or "" in value.values():
                check_empty_keys(field_updates, table, custom_error_msg)
                return

    validate_put_has_empty_keys.__wrapped__ = check_empty_keys  # type: ignore[attr-defined]  # for the tests
    responses_module.validate_put_has_empty_keys = validate_put_has_empty_keys  # type: ignore[assignment]

    # Its empty-set check reads attribute_keys once per attribute and walks every value; only a
    # set, map or list can hold an empty set, so items of plain scalars skip it.
    check_empty_sets = responses_module.validate_put_has_empty_attrs

    def validate_put_has_empty_attrs(field_updates: Any, table: Any) -> None:
        for value in field_updates.values():
            if not isinstance(value, dict) or len(value) != 1:
                check_empty_sets(field_updates, table)
                return
            for kind, inner in value.items():
                if kind not in _PLAIN_SCALARS or isinstance(inner, dict | list):
                    check_empty_sets(field_updates, table)
                    return

    validate_put_has_empty_attrs.__wrapped__ = check_empty_sets  # type: ignore[attr-defined]
    responses_module.validate_put_has_empty_attrs = validate_put_has_empty_attrs  # type: ignore[assignment]


def _faster_json_and_key_checks() -> None:
    """moto writes every answer, error and stream record size with the standard library's JSON
    encoder, and checks a key's size by building a DynamoType for it on every put: about a tenth
    of a local write. Same JSON (orjson, bhiv.local.fastjson), same limits and errors."""
    import moto.dynamodb.exceptions as exceptions_module
    import moto.dynamodb.responses as responses_module
    from moto.dynamodb.exceptions import HashKeyTooLong, RangeKeyTooLong
    from moto.dynamodb.limits import HASH_KEY_MAX_LENGTH, RANGE_KEY_MAX_LENGTH
    from moto.dynamodb.models import table as table_module
    from moto.dynamodb.models import utilities
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.utilities import bytesize

    from bhiv import fastjson

    default = utilities.DynamoJsonEncoder().default  # what moto's encoder makes of its objects

    def dynamo_json_dump(dynamo_object: Any) -> str:
        return fastjson.dumps(dynamo_object, default=default)

    for module in (utilities, responses_module, table_module, exceptions_module):
        module.dynamo_json_dump = dynamo_json_dump  # type: ignore[attr-defined]

    def key_size(value: Any) -> int:
        if isinstance(value, dict) and len(value) == 1:
            if isinstance(value.get("S"), str):
                return int(bytesize(value["S"]))
            if isinstance(value.get("N"), str):
                return len(value["N"])  # DynamoType.size of a number: the length of its text
        return int(DynamoType(value).size())

    def validate_key_sizes(self: Any, item_attrs: dict[str, Any]) -> None:
        for hash_name in self.hash_key_names:
            hash_value = item_attrs.get(hash_name)
            if hash_value and key_size(hash_value) > HASH_KEY_MAX_LENGTH:
                raise HashKeyTooLong
        for range_name in self.range_key_names:
            range_value = item_attrs.get(range_name)
            if range_value and key_size(range_value) > RANGE_KEY_MAX_LENGTH:
                raise RangeKeyTooLong

    table_module.Table._validate_key_sizes = validate_key_sizes  # type: ignore[method-assign]


def _string_values_compare_as_they_are() -> None:
    """moto hashes and compares a DynamoType through `cast_value`, which tests the type against
    five others before it returns a string as it is: six hashes per item written (three key
    lookups). Same value for every type; strings (every key here) answered first."""
    from moto.dynamodb.models import dynamo_type

    cls = dynamo_type.DynamoType  # bhiv.local.moto_memory's slotted class, when installed
    original = cls.cast_value.fget
    if getattr(original, "_bhiv_fast", False):
        return

    def cast_value(self: Any) -> Any:
        if self.type == "S":
            return self.value
        return original(self)

    cast_value._bhiv_fast = True  # type: ignore[attr-defined]
    cls.cast_value = property(cast_value)

    # Every put and key lookup builds DynamoTypes of its keys (six per transaction item) through
    # a generic path (two lists, two type tests); a plain string or number is set directly.
    init = cls.__init__

    def __init__(self: Any, type_as_dict: Any) -> None:
        if type(type_as_dict) is dict and len(type_as_dict) == 1:
            ((kind, value),) = type_as_dict.items()
            if (kind == "S" or kind == "N") and type(value) is str:
                self.type = kind
                self.value = value
                return
        init(self, type_as_dict)

    __init__.__wrapped__ = init  # type: ignore[attr-defined]  # for the tests
    cls.__init__ = __init__


_PLACEHOLDER = "\x00bhiv-value:"


def _value_shape(values: Any) -> list[list[str]] | None:
    """[[placeholder, type]] when every value is a string or a number (the ones a template can
    stand in for), else None."""
    if not values or not isinstance(values, dict):
        return None
    shape = []
    for name, value in values.items():
        if not isinstance(value, dict) or len(value) != 1:
            return None
        kind, raw = next(iter(value.items()))
        if kind not in ("S", "N") or not isinstance(raw, str):
            return None
        shape.append([str(name), kind])
    return sorted(shape)


class _ConditionTemplate:
    """A condition parsed once with stand-ins for its values; each use binds the real values into
    a copy of the tree (moto's parser only stores a value in an AttributeValue node; it reads it
    when the condition is evaluated). Trusted only when binding the first real values gives the
    tree a real parse gave (same repr), so a parser that looks at values is never short-cut."""

    def __init__(self, parsed: _ParsedCondition) -> None:
        self._parsed = parsed

    @classmethod
    def build(
        cls, parse: Callable[[dict[str, Any]], _ParsedCondition], values: dict[str, Any], real: _ParsedCondition
    ) -> _ConditionTemplate | None:
        fake = {name: {next(iter(value)): _PLACEHOLDER + name} for name, value in values.items()}
        try:
            template = cls(parse(fake))
        except Exception:
            return None
        bound = template.bind(values)
        same = (
            repr(bound.parse()) == repr(real.parse())
            and bound.expr_attr_names_found == real.expr_attr_names_found
            and bound.expr_attr_values_found == real.expr_attr_values_found
        )
        return template if same else None

    def bind(self, values: dict[str, Any]) -> _ParsedCondition:
        op = _bind(self._parsed.parse(), values, {})
        return _ParsedCondition(op, self._parsed.expr_attr_names_found, self._parsed.expr_attr_values_found)


def _bind(node: Any, values: dict[str, Any], memo: dict[int, Any]) -> Any:
    from moto.dynamodb.comparisons import AttributeValue, Func, Op

    if id(node) in memo:
        return memo[id(node)]
    bound: Any = node
    if isinstance(node, AttributeValue):
        if isinstance(node.value, str) and node.value.startswith(_PLACEHOLDER):
            bound = AttributeValue(values[node.value[len(_PLACEHOLDER) :]])
    elif isinstance(node, Op | Func):
        bound = copy.copy(node)
        for name, value in vars(node).items():
            if isinstance(value, Op | Func | AttributeValue | tuple | list):
                setattr(bound, name, _bind(value, values, memo))
    elif isinstance(node, tuple | list):
        bound = type(node)(_bind(item, values, memo) for item in node)
    memo[id(node)] = bound
    return bound


class _ParsedCondition:
    """A parsed condition expression, reused: what moto's callers read from a fresh parser."""

    def __init__(self, op: Any, names_found: list[str], values_found: list[str]) -> None:
        self._op = op
        self._names = list(names_found)
        self._values = list(values_found)

    def parse(self) -> Any:
        return self._op

    @property
    def expr_attr_names_found(self) -> list[str]:
        return list(self._names)  # callers extend it

    @property
    def expr_attr_values_found(self) -> list[str]:
        return list(self._values)


def _forget_used_shard_iterators() -> None:
    """moto keeps every shard iterator forever (~1.6 KiB per get_records, ~5 GB a day for two idle
    pollers). An iterator is single-use for our poller, so drop it once it has been read."""
    from moto.dynamodbstreams.models import DynamoDBStreamsBackend

    original = DynamoDBStreamsBackend.get_records

    def get_records(self: Any, iterator_arn: str, limit: int) -> Any:
        result = original(self, iterator_arn, limit)
        self.shard_iterators.pop(iterator_arn, None)
        return result

    DynamoDBStreamsBackend.get_records = get_records  # type: ignore[method-assign]


# --- Query: read the requested partition only, in key order ----------------------------------

_ORIGINAL_QUERY: Any = None
_INDEX_ATTR = "_bhiv_key_indexes"


class _Unsupported(Exception):
    """A key shape the fast path does not cover; moto's own Query answers instead."""


def _sortable(value: Any) -> Any:
    """The value moto compares key attributes by (DynamoType.cast_value), for S and N keys."""
    if value.type not in ("S", "N"):
        raise _Unsupported(value.type)
    return value.cast_value


class _KeyIndex:
    """The items of one table or index, partition by partition, each partition kept sorted the way
    moto orders a Query's results: (range key, then the table's keys for an index).

    Only the items are stored (8 bytes a row); a row's sort key is read from the item itself when a
    search needs it. So an item must not change its key attributes while it is in the index: the
    writes below take an item out before UpdateItem changes it in place and put it back after."""

    def __init__(self, hash_attr: str, range_attr: str, tie_attrs: list[str], table: Any = None) -> None:
        self.hash_attr = hash_attr
        self.range_attr = range_attr
        self.tie_attrs = tie_attrs
        # The table's own key index (`table` given) is built partition by partition, on the first
        # Query of each, from moto's items of that hash key: a partition nobody reads (the stats
        # and Karma markers) costs no memory and no upkeep on writes.
        self.table = table
        self.partitions: dict[Any, list[Any]] = {}  # the items, sorted by sort_key

        def value(attribute: Any) -> Any:
            return attribute.value if attribute.type == "S" else _sortable(attribute)

        if not tie_attrs:

            def sort_key(item: Any) -> tuple[Any, ...]:
                return (value(item.attrs[range_attr]),)

        elif len(tie_attrs) == 1:
            tie = tie_attrs[0]

            def sort_key(item: Any) -> tuple[Any, ...]:
                attrs = item.attrs
                return (value(attrs[range_attr]), value(attrs[tie]))

        else:
            names = [range_attr, *tie_attrs]

            def sort_key(item: Any) -> tuple[Any, ...]:
                attrs = item.attrs
                return tuple([value(attrs[name]) for name in names])

        def range_key(item: Any) -> Any:
            return value(item.attrs[range_attr])

        self.sort_key = sort_key
        self.range_key = range_key

    def entry(self, item: Any) -> tuple[Any, tuple[Any, ...]] | None:
        attrs = item.attrs
        hash_value = attrs.get(self.hash_attr)
        range_value = attrs.get(self.range_attr)
        if hash_value is None or range_value is None:
            return None  # not in this index (DynamoDB indexes only items with all key attributes)
        key = [_sortable(range_value)]
        for attr in self.tie_attrs:
            key.append(_sortable(attrs[attr]))
        return (hash_value.type, _sortable(hash_value)), tuple(key)

    def add(self, item: Any) -> None:
        found = self.entry(item)
        if found is None:
            return
        partition, key = found
        if self.table is not None and partition not in self.partitions:
            return  # not built: it will be, from the table, when it is first read
        rows = self.partitions.setdefault(partition, [])
        if not rows or self.sort_key(rows[-1]) < key:
            rows.append(item)  # the usual case: keys that grow with time
            return
        position = bisect_left(rows, key, key=self.sort_key)
        if position < len(rows) and self.sort_key(rows[position]) == key:
            rows[position] = item
        else:
            rows.insert(position, item)

    def build(self, items: Iterable[Any]) -> None:
        """Index these items (an empty index; their keys unique, as a table's are)."""
        for item in items:
            found = self.entry(item)
            if found is not None:
                self.partitions.setdefault(found[0], []).append(item)
        for rows in self.partitions.values():
            rows.sort(key=self.sort_key)

    def remove(self, item: Any) -> None:
        found = self.entry(item)
        if found is not None:
            self.drop(found[0], found[1], item)

    def rows(self, partition: Any, hash_key: Any) -> list[Any]:
        """A partition's items in key order (built now if it is not)."""
        if self.table is not None and partition not in self.partitions:
            stored = self.table.items.get(hash_key)
            rows = [item for item in (stored or {}).values() if self.entry(item) is not None]
            if rows:
                rows.sort(key=self.sort_key)
                self.partitions[partition] = rows
        return self.partitions.get(partition, [])

    def drop(self, partition: Any, key: tuple[Any, ...], item: Any) -> None:
        """Remove the row `key` of `partition` if it still holds `item`."""
        rows = self.partitions.get(partition)
        if rows is None:
            return
        position = bisect_left(rows, key, key=self.sort_key)
        if position == len(rows) or rows[position] is not item:
            return
        del rows[position]
        if not rows:
            del self.partitions[partition]


class _TableIndexes:
    """Key indexes of one moto table, built on its first Query and kept current by its writes."""

    def __init__(self, table: Any) -> None:
        self.lock = threading.RLock()
        self.table = table
        self.by_name: dict[str | None, _KeyIndex | None] = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None  # a copied table (a backup) builds its own indexes when queried

    def get(self, index_name: str | None) -> _KeyIndex | None:
        if index_name in self.by_name:
            return self.by_name[index_name]
        table = self.table
        index: _KeyIndex | None = None
        if index_name is None:
            if table.range_key_attr is not None:
                self.by_name[index_name] = _KeyIndex(table.hash_key_attr, table.range_key_attr, [], table)
                return self.by_name[index_name]
        else:
            definition = next((i for i in table.all_indexes() if i.name == index_name), None)
            schema = definition.schema if definition is not None else []
            hashes = [k["AttributeName"] for k in schema if k["KeyType"] == "HASH"]
            ranges = [k["AttributeName"] for k in schema if k["KeyType"] == "RANGE"]
            if len(hashes) == 1 and len(ranges) == 1:
                ties = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
                index = _KeyIndex(hashes[0], ranges[0], ties)
        if index is not None:
            try:
                index.build(
                    item
                    for partition in table.items.values()  # not all_items(): tests count its calls
                    for item in (partition.values() if table.range_key_attr else [partition])
                )
            except _Unsupported:
                index = None
        self.by_name[index_name] = index
        return index

    def replace(self, old: Any, new: Any) -> None:
        with self.lock:
            for name, index in list(self.by_name.items()):
                if index is None:
                    continue
                try:
                    if old is not None:
                        index.remove(old)
                    if new is not None:
                        index.add(new)
                except _Unsupported:
                    self.by_name[name] = None

    def take_out(self, item: Any) -> None:
        """Before an in-place update: drop the rows the item has (it is indexed again after)."""
        with self.lock:
            for index, partition, key in self.entries(item):
                index.drop(partition, key, item)

    def entries(self, item: Any) -> list[tuple[_KeyIndex, Any, tuple[Any, ...]]]:
        found = []
        with self.lock:
            for index in self.by_name.values():
                if index is None or item is None:
                    continue
                try:
                    entry = index.entry(item)
                except _Unsupported:
                    continue
                if entry is not None:
                    found.append((index, *entry))
        return found


def _indexes(table: Any, create: bool = False) -> _TableIndexes | None:
    state: _TableIndexes | None = table.__dict__.get(_INDEX_ATTR)
    if state is None and create:
        state = _TableIndexes(table)
        setattr(table, _INDEX_ATTR, state)
    return state


_COMPARISONS = {"=": "EQ", "<": "LT", "<=": "LE", ">": "GT", ">=": "GE"}


def _window(rows: list[Any], first: Callable[[Any], Any], comparison: str | None, bounds: list[Any]) -> tuple[int, int]:
    """Positions [lo, hi) of a sorted partition (`first`: a row's range key) that can satisfy the
    range key condition."""
    if comparison is None:
        return 0, len(rows)
    comparison = _COMPARISONS.get(comparison.upper(), comparison.upper())
    values = [_sortable(b) for b in bounds]
    if comparison == "EQ":
        return bisect_left(rows, values[0], key=first), bisect_right(rows, values[0], key=first)
    if comparison == "LT":
        return 0, bisect_left(rows, values[0], key=first)
    if comparison == "LE":
        return 0, bisect_right(rows, values[0], key=first)
    if comparison == "GT":
        return bisect_right(rows, values[0], key=first), len(rows)
    if comparison == "GE":
        return bisect_left(rows, values[0], key=first), len(rows)
    if comparison == "BETWEEN":
        return bisect_left(rows, values[0], key=first), bisect_right(rows, values[1], key=first)
    if comparison == "BEGINS_WITH" and isinstance(values[0], str):
        prefix = values[0]

        def head(row: Any) -> Any:
            return first(row)[: len(prefix)]

        return bisect_left(rows, prefix, key=first), bisect_right(rows, prefix, key=head)
    raise _Unsupported(comparison)


def forget_key_indexes(table: Any) -> None:
    """For code that fills table.items directly: the Query indexes are rebuilt on the next query."""
    table.__dict__.pop(_INDEX_ATTR, None)


def _fast_query(
    table: Any,
    hash_key: Any,
    range_comparison: str | None,
    range_objs: list[Any],
    limit: int | None,
    exclusive_start_key: dict[str, Any] | None,
    scan_index_forward: bool,
    projection_expressions: list[list[str]] | None,
    index_name: str | None,
    consistent_read: bool,
    filter_expression: Any,
    hash_key_conditions: list[tuple[str, Any]] | None,
    range_key_conditions: list[tuple[str, str, list[Any]]] | None,
) -> tuple[list[Any], int, dict[str, Any] | None]:
    """moto's Query, same answers, reading only the requested partition's page (or raising
    _Unsupported for a shape it does not cover)."""
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import RESULT_SIZE_LIMIT, GlobalSecondaryIndex

    if hash_key is None:
        raise _Unsupported("no hash key")
    definition = None
    if index_name is not None:
        definition = next((i for i in table.all_indexes() if i.name == index_name), None)
        if definition is None or (consistent_read and isinstance(definition, GlobalSecondaryIndex)):
            raise _Unsupported("moto's own validation error")
    state = _indexes(table, create=True)
    assert state is not None
    with state.lock:
        index = state.get(index_name)
        if index is None:
            raise _Unsupported("key schema")
        if hash_key_conditions and [name for name, _ in hash_key_conditions] != [index.hash_attr]:
            raise _Unsupported("hash key conditions")
        if hash_key_conditions and hash_key_conditions[0][1] != hash_key:
            raise _Unsupported("hash key conditions")
        if range_key_conditions and (
            len(range_key_conditions) != 1
            or range_key_conditions[0][0] != index.range_attr
            or range_key_conditions[0][1] != range_comparison
        ):
            raise _Unsupported("range key conditions")
        partition = (hash_key.type, _sortable(hash_key))
        rows = index.rows(partition, hash_key)
        lo, hi = _window(rows, index.range_key, range_comparison, range_objs)
        start, end = 0, len(rows)
        if exclusive_start_key is not None:
            attrs = [index.range_attr, *index.tie_attrs]
            if index.hash_attr not in exclusive_start_key or any(a not in exclusive_start_key for a in attrs):
                raise _Unsupported("partial start key")
            if DynamoType(exclusive_start_key[index.hash_attr]) != hash_key:
                raise _Unsupported("start key from another partition")
            probe = tuple(_sortable(DynamoType(exclusive_start_key[a])) for a in attrs)
            if scan_index_forward:
                start = bisect_right(rows, probe, key=index.sort_key)
            else:
                end = bisect_left(rows, probe, key=index.sort_key)
        if scan_index_forward:
            window = range(max(lo, start), min(hi, end))
            remaining = range(max(hi, start), end)
        else:
            window = range(min(hi, end) - 1, max(lo, start) - 1, -1)
            remaining = range(min(lo, end) - 1, start - 1, -1)
        results: list[Any] = []
        result_size = 0
        last_evaluated_key = None
        for position in window:
            item = rows[position]
            if (limit is not None and len(results) == limit) or result_size + item.size() > RESULT_SIZE_LIMIT:
                last_evaluated_key = table._get_last_evaluated_key(results[-1], index_name)
                break
            if range_comparison and not item.attrs[index.range_attr].compare(range_comparison, range_objs):
                continue
            results.append(item)
            result_size += item.size()
        else:
            # moto reports a LastEvaluatedKey when the limit is reached and the partition goes on
            for position in remaining:
                item = rows[position]
                if (limit is not None and len(results) == limit) or result_size + item.size() > RESULT_SIZE_LIMIT:
                    last_evaluated_key = table._get_last_evaluated_key(results[-1], index_name)
                    break
                if result_size + 400_000 <= RESULT_SIZE_LIMIT:
                    break  # no item (at most 400 KB) can reach the size limit now
    scanned_count = len(results)
    results = copy.deepcopy(results)
    if definition is not None:
        results = [definition.project(r) for r in results]
    if filter_expression is not None:
        results = [item for item in results if filter_expression.expr(item)]
    if projection_expressions:
        results = [r.project(projection_expressions) for r in results]
    return results, scanned_count, last_evaluated_key


def original_query() -> Any:
    """moto's own Table.query (for tests that compare the two)."""
    return _ORIGINAL_QUERY


def _patch_query() -> None:
    global _ORIGINAL_QUERY
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    original = _ORIGINAL_QUERY = Table.query

    def query(
        self: Any,
        hash_key: Any,
        range_comparison: str | None,
        range_objs: list[Any],
        limit: int,
        exclusive_start_key: dict[str, Any],
        scan_index_forward: bool,
        projection_expressions: list[list[str]] | None,
        index_name: str | None = None,
        consistent_read: bool = False,
        filter_expression: Any = None,
        hash_key_conditions: list[tuple[str, Any]] | None = None,
        range_key_conditions: list[tuple[str, str, list[Any]]] | None = None,
        **filter_kwargs: Any,
    ) -> tuple[list[Any], int, dict[str, Any] | None]:
        if not filter_kwargs:
            try:
                return _fast_query(
                    self,
                    hash_key,
                    range_comparison,
                    range_objs,
                    limit,
                    exclusive_start_key,
                    scan_index_forward,
                    projection_expressions,
                    index_name,
                    consistent_read,
                    filter_expression,
                    hash_key_conditions,
                    range_key_conditions,
                )
            except _Unsupported:
                pass
        return original(  # type: ignore[no-any-return]
            self,
            hash_key,
            range_comparison,
            range_objs,
            limit,
            exclusive_start_key,
            scan_index_forward,
            projection_expressions,
            index_name,
            consistent_read,
            filter_expression,
            hash_key_conditions=hash_key_conditions,
            range_key_conditions=range_key_conditions,
            **filter_kwargs,
        )

    original_put = Table.put_item
    original_delete = Table.delete_item
    original_update = DynamoDBBackend.update_item

    def put_item(self: Any, item_attrs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        state = _indexes(self)
        if state is None:
            return original_put(self, item_attrs, *args, **kwargs)
        with state.lock:
            old = _current(self, item_attrs)
            new = original_put(self, item_attrs, *args, **kwargs)
            state.replace(old, new)
            return new

    def delete_item(self: Any, hash_key: Any, range_key: Any) -> Any:
        state = _indexes(self)
        if state is None:
            return original_delete(self, hash_key, range_key)
        with state.lock:
            item = original_delete(self, hash_key, range_key)
            state.replace(item, None)
            return item

    def update_item(self: Any, table_name: str, key: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        table = self.get_table(table_name)
        state = _indexes(table)
        if state is None:
            return original_update(self, table_name, key, *args, **kwargs)
        with state.lock:
            # The index reads a row's key from the item, which UpdateItem changes in place: out
            # first, back in with what it holds now (also when moto refuses the update).
            state.take_out(_current(table, key))
            try:
                return original_update(self, table_name, key, *args, **kwargs)
            finally:
                state.replace(None, _current(table, key))

    def _current(table: Any, attrs: dict[str, Any]) -> Any:
        try:
            hash_value = DynamoType(attrs[table.hash_key_attr])
            if table.range_key_attr is None:
                return table.get_item(hash_value)
            return table.get_item(hash_value, DynamoType(attrs[table.range_key_attr]))
        except Exception:
            return None

    Table.query = query  # type: ignore[method-assign]
    Table.put_item = put_item  # type: ignore[method-assign]
    Table.delete_item = delete_item  # type: ignore[method-assign]
    DynamoDBBackend.update_item = update_item  # type: ignore[method-assign]
