"""Judge an AgentCredential from its spec alone: is it usable, is it due for review?

Pure functions: the Kopf handlers feed them the object and write back what they return.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..api.durations import parse_duration
from ..api.model import AgentCredentialSpec, SourceKind, parse_spec
from ..api.reasons import ReadyReason


@dataclass(frozen=True)
class Verdict:
    """The outcome for the Ready condition and the spec-derived status fields."""

    ready: bool
    reason: ReadyReason
    message: str
    spec: AgentCredentialSpec | None = None
    review_due: dt.date | None = None
    review_overdue: bool | None = None
    exception_expired: bool | None = None

    @property
    def source_kind(self) -> SourceKind | None:
        return self.spec.source.kind if self.spec else None


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field as people write it (`spec.ttl`): a problem
    of the whole spec is `spec`, and pydantic's own wording ("Value error, ") is left out."""
    lines = []
    for problem in error.errors():
        where = ".".join(["spec", *(str(part) for part in problem["loc"])])
        message = str(problem["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def review_due(spec: AgentCredentialSpec, created: dt.date) -> dt.date | None:
    if spec.review is None:
        return None
    last = spec.review.last_reviewed or created
    # date + timedelta counts whole days only, which is the resolution reviews have.
    return last + parse_duration(spec.review.cadence)


def evaluate(raw_spec: dict[str, Any], created: dt.date, today: dt.date) -> Verdict:
    try:
        spec = parse_spec(raw_spec)
    except ValidationError as error:
        return Verdict(False, "InvalidSpec", describe_validation_error(error))
    return judge(spec, created, today)


def judge(spec: AgentCredentialSpec, created: dt.date, today: dt.date) -> Verdict:
    """The verdict on an already parsed spec; it changes with the date (reviews, exceptions)."""
    due = review_due(spec, created)
    overdue = due is not None and due < today
    expired = None
    if spec.exception is not None:
        expired = spec.exception.expires < today
        if expired:
            return Verdict(
                False,
                "ExceptionExpired",
                f"the static-value exception approved by {spec.exception.approved_by} expired on "
                f"{spec.exception.expires.isoformat()}: renew the exception or move to a minted source",
                spec,
                due,
                overdue,
                expired,
            )
    return Verdict(
        True,
        "Valid",
        f"{spec.category} credential from a {spec.source.kind} source, ttl {spec.ttl}, "
        f"for ServiceAccounts {', '.join(spec.subjects.service_accounts)}",
        spec,
        due,
        overdue,
        expired,
    )
