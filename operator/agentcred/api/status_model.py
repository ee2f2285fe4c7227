"""AgentCredential status: what the operator observed and did, as typed models."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .schema import Model, SourceKind

MAX_MESSAGE = 4096  # a condition's message, as the CRD allows it
CUT_TO_FIT = "... (cut to fit)"


class Condition(Model):
    """A Kubernetes-style condition: every one carries a reason and a message."""

    type: Annotated[str, StringConstraints(max_length=64)] = Field(
        description="Ready (pods are admitted for it) or SourceAvailable (its source answers)."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: Annotated[str, StringConstraints(max_length=128)] = Field(
        description="A one-word reason, e.g. Valid, NoPolicy, UpstreamNotShared, MintingServiceUnhealthy."
    )
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE)] = Field(
        description="What is wrong and what to do, in words."
    )
    last_transition_time: dt.datetime = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="The generation the condition was judged at.")


class RevocationOutcome(Model):
    """The last emergency revoke (`agentcred revoke`) the operator carried out."""

    id: Annotated[str, StringConstraints(max_length=64)] = Field(description="The request's id.")
    at: dt.datetime = Field(description="When it was carried out (RFC 3339).")
    pod: Annotated[str, StringConstraints(max_length=253)] | None = Field(
        default=None, description="The one pod it was limited to (every pod when unset)."
    )
    revoked: int = Field(description="How many live values were revoked.")
    reason: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="The reason the person gave (`agentcred revoke --reason`)."
    )


class RenewalOutcome(Model):
    """The last `agentcred renew` the operator carried out."""

    id: Annotated[str, StringConstraints(max_length=64)] = Field(description="The request's id.")
    at: dt.datetime = Field(description="When it was carried out (RFC 3339).")
    renewed: int = Field(description="How many live values were replaced.")


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

    observed_generation: int | None = Field(default=None, description="The generation last judged.")
    conditions: Annotated[
        list[Condition],
        Field(
            max_length=16, json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
        ),
    ] = Field(default=[], description="Ready and SourceAvailable, each with a reason and a message.")
    source_kind: SourceKind | None = Field(default=None, description="jwt, secretRef or webhook.")
    active_projections: int | None = Field(default=None, description="Live values held by pods now.")
    issued_total: int | None = Field(default=None, description="Values issued to pods, ever (first issue in a task).")
    renewed_total: int | None = Field(default=None, description="Values renewed in place, ever.")
    revoked_total: int | None = Field(default=None, description="Values revoked, ever.")
    last_issued: dt.datetime | None = Field(default=None, description="When a value was last issued (RFC 3339).")
    next_expiry: dt.datetime | None = Field(
        default=None, description="When the soonest live value expires unless renewed (RFC 3339)."
    )
    review_due: dt.date | None = Field(default=None, description="When the next review is due (YYYY-MM-DD).")
    review_overdue: bool | None = Field(default=None, description="The review is past due.")
    exception_expired: bool | None = Field(default=None, description="The static-value exception has expired.")
    last_revocation: RevocationOutcome | None = Field(
        default=None, description="The last emergency revoke (`agentcred revoke`) carried out."
    )
    last_renewal: RenewalOutcome | None = Field(default=None, description="The last `agentcred renew` carried out.")
    compromised: Annotated[list[Compromise], Field(max_length=16)] | None = Field(
        default=None, description="Static values reported leaked and not yet rotated upstream (condition Compromised)."
    )
