"""Fixes to moto for a long-running local stack: a faster TransactWriteItems, bounded memory.

moto 5.2 deep-copies a whole table for every item of a transaction so it can roll back; with a
growing table each transaction gets slower (8 items/s at 1,000 items, measured). This version
checks every condition first and writes only when all hold, under one lock, so nothing ever needs
rolling back. Semantics kept: all-or-nothing, per-item cancellation reasons, ALL_OLD on failure.
"""

from __future__ import annotations

import threading
from typing import Any

_LOCK = threading.RLock()
_PATCHED = False


def install() -> None:
    global _PATCHED
    if _PATCHED:
        return
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
                    self.put_item(
                        op["TableName"],
                        op["Item"],
                        expression_attribute_names=names,
                        expression_attribute_values=values,
                    )
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
    _PATCHED = True


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
