"""RFC 3339 `date-time` (what OpenAPI's `format: date-time` means), exactly.

`datetime.fromisoformat` takes much more: no offset ("2099-01-31T09:00:00", a local time of an
unknown zone), a space for the `T`, no seconds, week dates. A client reading the spec cannot
know how those are read, so they are refused.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z", re.ASCII
)


def parse(text: str) -> datetime | None:
    """A timezone-aware datetime for an RFC 3339 date-time, else None."""
    match = _DATE_TIME.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7)
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    if match.group(8):
        zone = UTC
    else:
        off_h, off_m = int(match.group(10)), int(match.group(11))
        if off_h > 23 or off_m > 59:
            return None
        offset = timedelta(hours=off_h, minutes=off_m)
        zone = timezone(-offset if match.group(9) == "-" else offset)
    leap = second == 60  # RFC 3339 allows a leap second; datetime does not hold one
    try:
        moment = datetime(year, month, day, hour, minute, 59 if leap else second, micro, tzinfo=zone)
    except ValueError:
        return None
    return moment + timedelta(seconds=1) if leap else moment
