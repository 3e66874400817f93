"""Request and response models of the Bucket's HTTP API (mirrors contracts/ and openapi/bucket.yaml)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

EventId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
RequesterId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class EventData(BaseModel):
    """The producer's payload. Known fields are typed; everything else is kept as sent."""

    model_config = ConfigDict(extra="allow", strict=True)

    event_type: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
    trace_id: ShortText | None = None
    user_id: ShortText | None = None
    agent_id: ShortText | None = None


class WriteEventRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    requester_id: RequesterId
    event_data: EventData
    event_id: EventId | None = None


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    event_data: dict[str, Any]
    event_id: Any = None


class WriteEventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    requester_id: RequesterId
    events: Annotated[list[BatchItem], Field(min_length=1, max_length=100)]
