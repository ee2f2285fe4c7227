"""The AgentCredential status the operator wants, derived from the object and its counters."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..api import conditions
from .verdicts import Verdict


def spec_status(body: dict[str, Any], verdict: Verdict, now: dt.datetime) -> dict[str, Any]:
    """Status fields that follow from the spec: Ready, source kind, review and exception."""
    current = body.get("status") or {}
    generation = body.get("metadata", {}).get("generation")
    ready = conditions.set_condition(
        list(current.get("conditions") or []),
        type_=conditions.READY,
        status="True" if verdict.ready else "False",
        reason=verdict.reason,
        message=verdict.message,
        generation=generation,
        now=now,
    )
    return {
        "observedGeneration": generation,
        "conditions": ready,
        "sourceKind": verdict.source_kind,
        "reviewDue": verdict.review_due.isoformat() if verdict.review_due else None,
        "reviewOverdue": verdict.review_overdue,
        "exceptionExpired": verdict.exception_expired,
    }


def status_patch(current: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any]:
    """Only the fields that differ, so an unchanged object costs no API write."""
    current = current or {}
    return {key: value for key, value in desired.items() if current.get(key) != value}
