"""Time as agentcred writes and reads it: UTC, RFC 3339 with a `Z`, in one place."""

from __future__ import annotations

import datetime as dt
from typing import Literal

Precision = Literal["seconds", "milliseconds", "microseconds"]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def format_time(moment: dt.datetime, precision: Precision = "seconds") -> str:
    """RFC 3339 in UTC: `2026-11-28T12:00:00Z` (Kubernetes' own form), finer if asked."""
    return moment.astimezone(dt.timezone.utc).isoformat(timespec=precision).replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 time as written by us or the API server (ValueError otherwise)."""
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return moment


def next_midnight(now: dt.datetime) -> dt.datetime:
    """When the UTC date turns next (reviews and exceptions expire by the day)."""
    tomorrow = now.astimezone(dt.timezone.utc).date() + dt.timedelta(days=1)
    return dt.datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=dt.timezone.utc)
