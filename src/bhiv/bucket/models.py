"""Request and response models of the Bucket's HTTP API (mirrors contracts/ and openapi/bucket.yaml).

tests/contract/test_contracts.py runs every example under contracts/examples/ through these models
and the JSON Schemas and fails when they disagree. Where the contract says a property may be
absent but, when present, must be a string, the model refuses an explicit null.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

EventId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
RequesterId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]

_RFC3339 = re.compile(
    r"(\d{4})-(0[1-9]|1[0-2])-(\d{2})T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)


def _rfc3339(value: str) -> str:
    """JSON Schema's `format: date-time`: RFC 3339, offset required, a real calendar date."""
    match = _RFC3339.fullmatch(value.upper())
    if match is None:
        raise ValueError("must be an RFC 3339 date-time with an offset")
    try:
        date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise ValueError("must be an RFC 3339 date-time (no such date)") from None
    return value


DateTime = Annotated[str, AfterValidator(_rfc3339)]


def _present_means_not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("may be left out, but not null")
    return value


class EventData(BaseModel):
    """The producer's payload. Known fields are typed; everything else is kept as sent."""

    model_config = ConfigDict(extra="allow", strict=True)

    event_type: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
    trace_id: ShortText | None = None
    user_id: ShortText | None = None
    agent_id: ShortText | None = None

    _not_null = field_validator("trace_id", "user_id", "agent_id", mode="before")(_present_means_not_null)


class WriteEventRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    requester_id: RequesterId
    event_data: EventData
    event_id: EventId | None = None

    _not_null = field_validator("event_id", mode="before")(_present_means_not_null)


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    event_data: dict[str, Any]
    event_id: EventId | None = None

    _not_null = field_validator("event_id", mode="before")(_present_means_not_null)


class WriteEventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    requester_id: RequesterId
    events: Annotated[list[BatchItem], Field(min_length=1, max_length=100)]


class StoredEvent(BaseModel):
    """An event as the Bucket returns it (contracts/stored_event.schema.json): the server-owned
    fields below, plus every event_data field copied to the top level."""

    model_config = ConfigDict(extra="allow", strict=True)

    event_id: NonEmpty
    event_type: NonEmpty
    trace_id: str | None
    user_id: str | None = None
    requester_id: NonEmpty
    timestamp: DateTime
    received_at: DateTime
    event_data: dict[str, Any]

    @field_validator("event_data")
    @classmethod
    def _has_event_type(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "event_type" not in value:
            raise ValueError("event_data needs an event_type")
        return value
