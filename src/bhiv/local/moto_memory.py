"""moto's items, cheaper to hold and to load, and a consistent copy of the tables without a long lock.

* **No instance tracking for items and stream records**: every moto model (`BaseModel`) appends
  each instance it creates to a class-wide list, for moto server's `/moto-api/data.json`
  dashboard, and never lets go of it. For DynamoDB that is every item ever stored, every item a
  put replaced, every copy moto makes for a Query answer or before an UpdateItem, every stream
  record and every shard iterator: memory that only grows, whatever is deleted or trimmed. Those
  four classes are no longer tracked (the dashboard does not list them); nothing else reads the
  lists.

* **Loading**: `make_item` builds a moto `Item` straight from its DynamoDB JSON without
  `DynamoType.__init__`'s generic path for the scalar types (S, N, BOOL, NULL); the result is the
  object moto's own constructor makes (same `type`, same `value`).
* **Compact stream records**: a record unread by some consumer is held as one flat tuple and
  rebuilt (equal dict, same key order) whenever it is read: 0.6 KB instead of about 4 KB.
* **Slots**: moto's `DynamoType` (one per attribute of every item: about 30 per stored event) keeps
  its two fields in a per-object dict; `install` replaces the class, before anything is stored, by
  the same class with `__slots__ = ("type", "value")`: 48 bytes instead of 88, same methods,
  rebound in every module that imported it. Nothing in moto sets other fields on one. The same for
  `Item` (`hash_key`, `range_key`, `attrs` and a weak-reference slot; 64 bytes instead of 96; its
  base `BaseModel` is left out: it has no slots and only tracks instances, which items no longer
  are) and the `attrs` dict class `LimitedSizeDict` (only a weak-reference slot: 16 bytes less).
* **Sharing**: attribute names, and scalar attributes that repeat (event types, requester ids,
  feed names, marker partitions, a timestamp held twice in one item), are one object shared by the
  items that hold them. moto never changes a scalar `DynamoType` in place (an update replaces the
  attribute; only map and list values are changed in place, and those are never shared), so
  sharing one changes no answer.
* **Unused moto services stay unloaded**: moto's Lambda (with ECR and IAM, about 28 MB), imported by
  every stream record for moto's own event source mappings, which the stack has none of; and
  moto's IAM models (17 MB), imported by every request's setup, until IAM is used.
* **Copy on write for compactions** (`TableCopy`): a compaction takes references to every item
  under the write lock (milliseconds), then serialises them without it. moto replaces an item on a
  put and deletes by dropping the reference, so both leave the referenced object as it was; only
  UpdateItem changes an item in place, and while a copy is open it first records the item as it
  was. The copy therefore reads the tables exactly as they were at the cut.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

from bhiv import fastjson

_PATCHED = False
_COPY_LOCK = threading.Lock()
_OPEN_COPIES: list[TableCopy] = []

# Scalars up to this length are looked up in the shared table; longer ones (payloads, composite
# keys) rarely repeat and would only grow the table.
SHARE_MAX_LEN = 40
SHARE_TABLE_MAX = 50_000  # per type; cleared when full: a bound, not a cache policy
_SCALARS = frozenset({"S", "N", "BOOL", "NULL"})
_shared: dict[str, dict[Any, Any]] = {kind: {} for kind in _SCALARS}


def shared_scalar(kind: str, value: Any) -> Any:
    """The shared DynamoType for a short scalar, or None (too long, or not a scalar)."""
    table = _shared.get(kind)
    if table is None or (isinstance(value, str) and len(value) > SHARE_MAX_LEN):
        return None
    found = table.get(value)
    if found is None:
        from moto.dynamodb.models.dynamo_type import DynamoType

        if len(table) >= _share_limit:
            table.clear()
        found = DynamoType.__new__(DynamoType)
        found.type = kind
        found.value = sys.intern(value) if isinstance(value, str) else value
        table[found.value] = found
    return found


_share_limit = SHARE_TABLE_MAX


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """While a snapshot or journal is loaded the shared table is not bounded (an event and its
    marker, far apart in the file, then share their event id); afterwards it is emptied: what is
    shared stays shared, the table's own memory (mostly unique values) is given back."""
    global _share_limit
    _share_limit = sys.maxsize
    try:
        yield
    finally:
        _share_limit = SHARE_TABLE_MAX
        for table in _shared.values():
            table.clear()


def make_item(hash_attr: str, range_attr: str | None, flat: list[Any]) -> Any:
    """A moto Item from [name, type, value, name, type, value, ...] (the types and values of the
    item's DynamoDB JSON), as `Item(hash, range, attrs)` would build it, without its size check
    (the item passed it when it was written)."""
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict

    new = DynamoType.__new__
    shared = _shared
    attrs = LimitedSizeDict()
    put = dict.__setitem__
    for position in range(0, len(flat), 3):
        name, kind, value = flat[position], flat[position + 1], flat[position + 2]
        by_value = shared.get(kind)
        attribute = by_value.get(value) if by_value is not None else None
        if attribute is None:
            attribute = shared_scalar(kind, value)
            if attribute is None:
                if kind in _SCALARS:
                    attribute = new(DynamoType)
                    attribute.type = kind
                    attribute.value = value
                else:
                    attribute = DynamoType({kind: value})
        put(attrs, sys.intern(name), attribute)
    item = Item.__new__(Item)
    item.attrs = attrs
    item.hash_key = attrs[hash_attr]
    item.range_key = attrs[range_attr] if range_attr else None
    return item


class _OneAttribute:
    """What moto's Item.to_json reads of an item (its attrs): one attribute of a real one."""

    __slots__ = ("attrs",)

    def __init__(self, name: str, attribute: Any) -> None:
        self.attrs = {name: attribute}


def flat_attributes(item: Any) -> list[Any]:
    """An item as [name, type, value, ...]: its DynamoDB JSON (moto's Item.to_json), flattened.
    A compaction encodes every item: a scalar is its type and value as they are (what to_json
    gives), only maps and lists go through moto's conversion."""
    flat: list[Any] = []
    to_json = type(item).to_json
    for name, attribute in item.attrs.items():
        value = attribute.value
        if isinstance(value, dict | list):
            for kind, inner in to_json(_OneAttribute(name, attribute))["Attributes"][name].items():
                flat += (name, kind, inner)
        else:
            flat += (name, attribute.type, value)
    return flat


def share_scalars(item: Any) -> None:
    """Replace an item's short scalar attributes by the shared ones, and intern its attribute names
    (equal values, so the same answers)."""
    attrs = item.attrs
    for name, attribute in list(attrs.items()):
        shared = shared_scalar(attribute.type, attribute.value)
        interned = sys.intern(name)
        if interned is not name:
            dict.pop(attrs, name)
            dict.__setitem__(attrs, interned, shared or attribute)
        elif shared is not None and shared is not attribute:
            dict.__setitem__(attrs, name, shared)


def _untracked_models() -> None:
    """Items, stream records and shard iterators are not kept in moto's instance lists (above)."""
    from moto.core.common_models import BaseModel
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.models.table import StreamRecord
    from moto.dynamodbstreams.models import ShardIterator

    untracked = (Item, StreamRecord, ShardIterator)
    tracked_new = BaseModel.__new__

    def __new__(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if issubclass(cls, untracked):
            return object.__new__(cls)
        return tracked_new(cls, *args, **kwargs)

    BaseModel.__new__ = staticmethod(__new__)  # type: ignore[assignment,method-assign]
    for model in untracked:
        model.instances_tracked = []


_RECORD_KEYS = ("eventID", "eventName", "eventSource", "eventVersion", "awsRegion", "dynamodb")
_CHANGE_KEYS = ("StreamViewType", "ApproximateCreationDateTime", "SequenceNumber", "SizeBytes", "Keys")
_IMAGES = ("NewImage", "OldImage")


def _flat_image(image: dict[str, Any]) -> tuple[Any, ...] | None:
    flat: list[Any] = []
    for name, typed in image.items():
        if not isinstance(typed, dict) or len(typed) != 1:
            return None
        for kind, value in typed.items():
            flat += (name, kind, value)
    return tuple(flat)


def pack_record(record: dict[str, Any]) -> tuple[Any, ...] | None:
    """A stream record as one flat tuple (None: a shape this does not cover; keep the dict)."""
    change = record.get("dynamodb")
    if tuple(record) != _RECORD_KEYS or not isinstance(change, dict):
        return None
    if tuple(change)[: len(_CHANGE_KEYS)] != _CHANGE_KEYS:
        return None
    images = tuple(change)[len(_CHANGE_KEYS) :]
    if images not in ((), ("NewImage",), ("OldImage",), ("NewImage", "OldImage")):
        return None
    packed: list[Any] = [record[k] for k in _RECORD_KEYS[:-1]]
    packed += [change[k] for k in _CHANGE_KEYS[:-1]]
    for part in ("Keys", *_IMAGES):
        if part in change:
            flat = _flat_image(change[part])
            if flat is None:
                return None
            packed.append(flat)
        else:
            packed.append(None)
    return tuple(packed)


def _image(flat: tuple[Any, ...]) -> dict[str, Any]:
    return {flat[i]: {flat[i + 1]: flat[i + 2]} for i in range(0, len(flat), 3)}


def unpack_record(packed: tuple[Any, ...]) -> dict[str, Any]:
    """The record pack_record was given: equal, keys in the same order, a new dict every call."""
    change = dict(zip(_CHANGE_KEYS[:-1], packed[5:9], strict=True))
    change["Keys"] = _image(packed[9])
    for name, flat in zip(_IMAGES, packed[10:12], strict=True):
        if flat is not None:
            change[name] = _image(flat)
    record = dict(zip(_RECORD_KEYS[:-1], packed[:5], strict=True))
    record["dynamodb"] = change
    return record


class _PackedRecord:
    """`record` of a compact stream record: the instance's own dict while moto's constructor builds
    it, then unpacked on each read (a non-data descriptor, so the instance value wins while set)."""

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return instance.to_json()


def _compact_stream_records() -> None:
    """moto's stream record holds its images as nested dicts: about 4 KB for an event, for as long
    as some consumer has not read it (a backlog of tens of thousands while Karma catches up). This
    subclass builds the record exactly as moto does, then keeps it as one flat tuple (about 0.6 KB)
    and rebuilds the same dict, keys in the same order, whenever it is read."""
    from moto.dynamodb.models import table as table_module

    original = table_module.StreamRecord
    if getattr(original, "_bhiv_compact", False):
        return

    class StreamRecord(original):  # type: ignore[misc,valid-type]
        _bhiv_compact = True
        record = _PackedRecord()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            packed = pack_record(self.__dict__["record"])
            if packed is not None:
                del self.__dict__["record"]
                self._packed = packed

        def to_json(self) -> dict[str, Any]:
            packed = self.__dict__.get("_packed")
            if packed is None:
                return self.__dict__["record"]  # type: ignore[no-any-return]
            return unpack_record(packed)

    StreamRecord.__qualname__ = original.__qualname__
    StreamRecord.__module__ = original.__module__
    table_module.StreamRecord = StreamRecord


ORIGINAL_CLASSES: dict[str, type] = {}  # moto's own classes, replaced by their slotted versions (for tests)


def _slotted_dynamo_type() -> None:
    """moto's DynamoType with __slots__, rebound wherever the class was imported (see above)."""
    import moto.dynamodb.models.dynamo_type as module

    _slotted(module, "DynamoType", ("type", "value"))


def _slotted_items() -> None:
    """moto's Item and its attribute dict with __slots__ (see above): the same classes, without
    the per-object dict (32 bytes an Item, 16 a LimitedSizeDict)."""
    import moto.dynamodb.models.dynamo_type as module
    from moto.core.common_models import BaseModel

    # Item's only base besides object is BaseModel, which has no slots (so every subclass has a
    # dict) and only tracks instances (which items no longer are, see _untracked_models).
    # Both keep their weak-reference slot: moto's classes can be weakly referenced.
    _slotted(module, "Item", ("hash_key", "range_key", "attrs", "__weakref__"), drop_base=BaseModel)
    _slotted(module, "LimitedSizeDict", ("__weakref__",))


def _slotted(module: Any, name: str, slots: tuple[str, ...], drop_base: type | None = None) -> None:
    """Replace module.<name> by the same class with these __slots__ (its methods' zero-argument
    super() bound to the new class), in every loaded module that imported it."""
    old = getattr(module, name)
    if "__slots__" in vars(old):
        return
    ORIGINAL_CLASSES[name] = old
    bases = tuple(base for base in old.__bases__ if base is not drop_base) or (object,)
    namespace = {k: v for k, v in vars(old).items() if k not in ("__dict__", "__weakref__")}
    namespace["__slots__"] = slots
    new = type(old.__name__, bases, namespace)
    new.__qualname__ = old.__qualname__
    for key, value in namespace.items():
        code = getattr(value, "__code__", None)
        if code is not None and "__class__" in code.co_freevars:
            cells = tuple(
                types.CellType(new) if free == "__class__" else cell
                for free, cell in zip(code.co_freevars, value.__closure__, strict=True)
            )
            function = types.FunctionType(code, value.__globals__, value.__name__, value.__defaults__, cells)
            function.__kwdefaults__ = value.__kwdefaults__
            function.__qualname__ = value.__qualname__
            function.__doc__ = value.__doc__
            setattr(new, key, function)
    for loaded in list(sys.modules.values()):
        if getattr(loaded, name, None) is old:
            setattr(loaded, name, new)


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


def _one_boto_session() -> None:
    """moto lists each service's regions (once per backend) from a boto3 `Session()` of its own,
    which loads botocore's endpoint data (about 7 MB of Python objects) and the service's model a
    second time, next to the copies held by boto3's default session for the clients. moto's region
    discovery uses the default session instead: also a `Session()` without arguments (what
    `boto3.setup_default_session()` makes), so the same files and the same regions."""
    import boto3
    from moto.core.base_backend import AccountSpecificBackend

    def get_session(cls: Any) -> Any:
        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        return boto3.DEFAULT_SESSION

    AccountSpecificBackend.get_session = classmethod(get_session)  # type: ignore[method-assign,assignment]


def _streams_without_lambda() -> None:
    """Each stream record moto adds imports moto's Lambda (`moto.awslambda`, and through it ECR and
    IAM: about 28 MB of Python objects) to hand the stream to moto's own event source mappings.
    The local stack has none (bhiv.local.streams reads the stream): while a table has none, the
    record is added as moto adds it, without that import. A table with one takes moto's own path."""
    from moto.dynamodb.models import table as table_module

    add = table_module.StreamShard.add

    def add_record(self: Any, old: Any, new: Any) -> None:
        if self.table.lambda_event_source_mappings:
            add(self, old, new)
            return
        view_type = self.table.stream_specification["StreamViewType"]
        event_name = "INSERT" if old is None else "REMOVE" if new is None else "MODIFY"
        sequence = len(self.items) + self.starting_sequence_number
        self.items.append(table_module.StreamRecord(self.table, view_type, event_name, old, new, sequence))

    add_record.__wrapped__ = add  # type: ignore[attr-defined]  # for the tests
    table_module.StreamShard.add = add_record  # type: ignore[method-assign]


IAM_MODELS = "moto.iam.models"


def _iam_loaded_on_first_use() -> None:
    """moto's request setup records each caller's access key with IAM and reads the caller's
    account from IAM's keys, and its (disabled) request authentication imports IAM's access control:
    both load `moto.iam.models`, about 17 MB of Python objects (mostly AWS's managed policies), in a
    stack that never uses IAM. Until something does, those two calls answer as moto's IAM answers
    without access keys (nothing to record; the default account: keys exist only once IAM is used),
    and authentication is skipped exactly when moto skips it. Any other use of `moto.iam.models`
    loads moto's own module, and from then on both calls are moto's."""
    from moto import settings
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.authorization import ActionAuthenticatorMixin

    authenticate = ActionAuthenticatorMixin._authenticate_and_authorize_normal_action

    def _authenticate_and_authorize_normal_action(self: Any, resource: str = "*") -> None:
        if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
            ActionAuthenticatorMixin.request_count += 1  # what moto does when it does not authenticate
            return
        authenticate(self, resource)

    _authenticate_and_authorize_normal_action.__wrapped__ = authenticate  # type: ignore[attr-defined]
    ActionAuthenticatorMixin._authenticate_and_authorize_normal_action = _authenticate_and_authorize_normal_action  # type: ignore[method-assign]

    if IAM_MODELS in sys.modules:
        return  # loaded already: nothing to save
    stub = types.ModuleType(IAM_MODELS, "moto's IAM models, loaded on first use (bhiv.local.moto_memory)")
    loaded: list[Any] = []

    def real() -> Any:
        if not loaded:
            import importlib

            with _IAM_LOCK:
                if not loaded:
                    if sys.modules.get(IAM_MODELS) is stub:
                        del sys.modules[IAM_MODELS]
                    loaded.append(importlib.import_module(IAM_MODELS))
        return loaded[0]

    def mark_account_as_visited(account_id: str, access_key: str, service: str, region: str) -> None:
        if loaded:
            loaded[0].mark_account_as_visited(account_id, access_key, service, region)

    def get_account_id_from(access_key: str) -> str:
        return loaded[0].get_account_id_from(access_key) if loaded else DEFAULT_ACCOUNT_ID  # type: ignore[no-any-return]

    def __getattr__(name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):  # the import system asks for __path__, a module has none
            raise AttributeError(name)
        return getattr(real(), name)

    stub.mark_account_as_visited = mark_account_as_visited  # type: ignore[attr-defined]
    stub.get_account_id_from = get_account_id_from  # type: ignore[attr-defined]
    stub.__getattr__ = __getattr__  # type: ignore[method-assign]
    stub.load = real  # type: ignore[attr-defined]
    sys.modules[IAM_MODELS] = stub


_IAM_LOCK = threading.Lock()


def install() -> None:
    """Patch moto (idempotent; before bhiv.local.moto_patch, which calls it first): DynamoType
    with slots, UpdateItem records the item's prior image for open table copies, and items written
    through moto share their names and short scalars."""
    global _PATCHED
    if _PATCHED:
        return
    _slotted_dynamo_type()
    _slotted_items()
    _untracked_models()
    _one_boto_session()
    _iam_loaded_on_first_use()
    _compact_stream_records()
    _streams_without_lambda()
    from moto.dynamodb.models import DynamoDBBackend

    update_item = DynamoDBBackend.update_item

    def update_item_copy_aware(self: Any, table_name: str, key: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if _OPEN_COPIES:
            table = self.tables.get(table_name)
            if table is not None:
                _before_update(table, key)
        item = update_item(self, table_name, key, *args, **kwargs)
        if item is not None:
            share_scalars(item)
        return item

    DynamoDBBackend.update_item = update_item_copy_aware  # type: ignore[method-assign]
    _items_built_shared()
    _PATCHED = True


ITEM_SIZE_LIMIT = 405_000  # moto's limit on an item's summed attribute sizes


def _utf8_len(text: Any) -> int:
    if type(text) is str:
        return len(text) if text.isascii() else len(text.encode("utf-8"))
    from moto.dynamodb.models.utilities import bytesize

    return int(bytesize(text))


def _items_built_shared() -> None:
    """`Item(hash, range, attrs)` (every put, and moto's copies) builds each attribute once:
    a string or number straight into a shared (or new) slotted DynamoType, names interned, the
    item's size summed in the same pass and checked once. moto's own constructor re-sums the size
    on every attribute it sets (quadratic), and each put used to walk the item a second time to
    share its scalars. Other types are built by DynamoType as before. Same objects, same values,
    same limit and error."""
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict

    new = DynamoType.__new__
    intern = sys.intern
    shared = _shared

    def item_init(self: Any, hash_key: Any, range_key: Any, attrs: dict[str, Any]) -> None:
        self.hash_key = hash_key
        self.range_key = range_key
        built: dict[str, Any] = {}
        size = 0
        for name, value in attrs.items():
            if type(value) is dict and len(value) == 1 and type(name) is str:
                ((kind, inner),) = value.items()
                if (kind == "S" or kind == "N") and type(inner) is str:
                    # DynamoType.size: a number's text length, a string's UTF-8 length
                    size += len(name) if name.isascii() else len(name.encode("utf-8"))
                    size += len(inner) if kind == "N" or inner.isascii() else len(inner.encode("utf-8"))
                    attribute = shared[kind].get(inner)
                    if attribute is None:
                        attribute = shared_scalar(kind, inner)
                        if attribute is None:  # too long to share
                            attribute = new(DynamoType)
                            attribute.type = kind
                            attribute.value = inner
                    built[intern(name)] = attribute
                    continue
            attribute = DynamoType(value)
            size += _utf8_len(name) + attribute.size()
            if attribute.type in _SCALARS:
                attribute = shared_scalar(attribute.type, attribute.value) or attribute
            built[intern(name) if type(name) is str else name] = attribute
        if size > ITEM_SIZE_LIMIT:
            raise ItemSizeTooLarge  # moto's limit, checked once on the whole item
        self.attrs = LimitedSizeDict()
        dict.update(self.attrs, built)

    Item.__init__ = item_init  # type: ignore[method-assign]


def encode_item(item: Any) -> bytes:
    # a compaction encodes every item (about 3x the final state over a long fill): orjson, not json
    return fastjson.dumps_bytes(flat_attributes(item), default=_json_default)


def _json_default(value: Any) -> Any:
    from datetime import UTC, datetime

    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
