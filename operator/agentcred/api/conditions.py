"""Kubernetes-style conditions: set one, keep lastTransitionTime stable when nothing changed."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from .status_model import CUT_TO_FIT, MAX_MESSAGE
from .times import format_time

Status = Literal["True", "False", "Unknown"]

READY = "Ready"
SOURCE_AVAILABLE = "SourceAvailable"
COMPROMISED = "Compromised"  # a static value was reported leaked and is not rotated yet


def set_condition(
    conditions: list[dict[str, Any]],
    *,
    type_: str,
    status: Status,
    reason: str,
    message: str,
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """Return the conditions with `type_` set; the transition time moves only on a status change.
    A message longer than the CRD allows is cut to fit: the API server would refuse the whole
    status write, every time, and the condition would never be written at all."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - len(CUT_TO_FIT)] + CUT_TO_FIT
    previous = next((c for c in conditions if c.get("type") == type_), None)
    transition = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == status and previous.get("lastTransitionTime")
        else format_time(now)
    )
    updated = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": transition}
    if generation is not None:
        updated["observedGeneration"] = generation
    others = [c for c in conditions if c.get("type") != type_]
    return sorted([*others, updated], key=lambda c: c["type"])
