"""AgentCredential status: what the operator observed and did, as typed models."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .schema import Model, SourceKind


class Condition(Model):
    """A Kubernetes-style condition: every one carries a reason and a message."""

    type: Annotated[str, StringConstraints(max_length=64)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, StringConstraints(max_length=128)]
    message: Annotated[str, StringConstraints(max_length=4096)]
    last_transition_time: dt.datetime
    observed_generation: int | None = None


class RevocationOutcome(Model):
    """The last emergency revoke (`agentcred revoke`) the operator carried out."""

    id: Annotated[str, StringConstraints(max_length=64)]
    at: dt.datetime
    pod: Annotated[str, StringConstraints(max_length=253)] | None = None
    revoked: int
    reason: Annotated[str, StringConstraints(max_length=256)] | None = None


class RenewalOutcome(Model):
    """The last `agentcred renew` the operator carried out."""

    id: Annotated[str, StringConstraints(max_length=64)]
    at: dt.datetime
    renewed: int


class Compromise(Model):
    """A static value reported leaked: no pod gets it again until the upstream Secret changes."""

    fingerprint: Annotated[str, StringConstraints(max_length=128)] = Field(
        description="Keyed fingerprint of the leaked value (never the value)."
    )
    upstream_version: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None,
        description="resourceVersion of the upstream Secret when reported: once the fingerprint's key "
        "is retired and gone, any change of the Secret ends the compromise.",
    )
    reported_at: dt.datetime = Field(description="When the leak was reported.")


class AgentCredentialStatus(Model):
    """What the operator observed and did: conditions, live projections, counts, expiry."""

    observed_generation: int | None = None
    conditions: Annotated[
        list[Condition],
        Field(
            max_length=16, json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
        ),
    ] = []
    source_kind: SourceKind | None = None
    active_projections: int | None = None
    issued_total: int | None = None
    renewed_total: int | None = None
    revoked_total: int | None = None
    last_issued: dt.datetime | None = None
    next_expiry: dt.datetime | None = None
    review_due: dt.date | None = None
    review_overdue: bool | None = None
    exception_expired: bool | None = None
    last_revocation: RevocationOutcome | None = None
    last_renewal: RenewalOutcome | None = None
    compromised: Annotated[list[Compromise], Field(max_length=16)] | None = Field(
        default=None, description="Static values reported leaked and not yet rotated upstream (condition Compromised)."
    )
