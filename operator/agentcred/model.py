"""The AgentCredential resource: its spec and status as typed models.

These models are the single source of the CRD's OpenAPI schema (see `crd.py`): every
constraint here reaches the API server, which refuses invalid objects itself.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from .durations import DURATION_PATTERN, parse_duration

GROUP = "agentcred.dev"
VERSION = "v1alpha1"
KIND = "AgentCredential"
PLURAL = "agentcredentials"
SINGULAR = "agentcredential"
SHORT_NAMES = ["acred"]
API_VERSION = f"{GROUP}/{VERSION}"
POLICY_KIND = "AgentCredentialPolicy"
POLICY_PLURAL = "agentcredentialpolicies"
POLICY_SINGULAR = "agentcredentialpolicy"
POLICY_SHORT_NAMES = ["acredpol"]

Category = Literal["model", "tool", "retrieval", "deployment"]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]
SourceKind = Literal["jwt", "secretRef", "webhook"]
JwtAlgorithm = Literal["EdDSA", "ES256"]

# Task durations (ttl, renewBefore, maxLifetime) use the units the API server's CEL
# `duration()` understands (s, m, h), so the schema can compare them; review cadences
# are calendar-scale and may also use days.
TASK_DURATION_PATTERN = r"^([0-9]{1,6}[smh])+$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# Absolute, no "." or ".." segments, no hidden names, nothing the kubelet would reject.
MOUNT_PATH = r"^(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+$"
ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
HTTPS_URL = r"^https://[^\s]+$"

TaskDuration = Annotated[str, StringConstraints(pattern=TASK_DURATION_PATTERN, max_length=32)]
CalendarDuration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=32)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Pattern = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; fieldPath makes the error name the field."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Subjects(Model):
    """The workload identities allowed to receive the credential."""

    service_accounts: Annotated[
        list[Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=253)]],
        Field(min_length=1, max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ] = Field(description="ServiceAccount names in the credential's namespace.")


class JwtSource(Model):
    """A token minted and signed by the operator."""

    audiences: Annotated[list[Pattern], Field(min_length=1, max_length=16)] = Field(
        description="The `aud` claim: who the token is for."
    )
    algorithm: JwtAlgorithm | None = Field(
        default=None, description="Signing algorithm; the operator's default when unset."
    )


class SecretRefSource(Model):
    """A static value copied from a Secret in the credential's namespace."""

    name: Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=253)]
    key: Annotated[str, StringConstraints(pattern=SECRET_KEY, max_length=253)]


MAX_MINTING_TIMEOUT = "30s"


class WebhookSource(Model):
    """An external minting service called over HTTPS."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"!has(self.timeout) || duration(self.timeout) <= duration('{MAX_MINTING_TIMEOUT}')",
                    f"timeout must be at most {MAX_MINTING_TIMEOUT}: a slow minting service must not hold "
                    "the operator's renewals",
                    ".timeout",
                )
            ]
        }
    )

    url: Annotated[str, StringConstraints(pattern=HTTPS_URL, max_length=2048)]
    ca_bundle: str | None = Field(default=None, description="PEM CA bundle for the service.")
    timeout: TaskDuration | None = Field(default=None, description=f"Per-call timeout (default 5s, at most "
                                                                    f"{MAX_MINTING_TIMEOUT}).")

    @model_validator(mode="after")
    def _short_timeout(self) -> "WebhookSource":
        if self.timeout is not None and parse_duration(self.timeout) > parse_duration(MAX_MINTING_TIMEOUT):
            raise ValueError(f"timeout must be at most {MAX_MINTING_TIMEOUT}")
        return self


class Source(Model):
    """Where values come from: exactly one of jwt, secretRef, webhook."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "[has(self.jwt), has(self.secretRef), has(self.webhook)]"
                    ".filter(x, x).size() == 1",
                    "source must set exactly one of jwt, secretRef, webhook",
                )
            ]
        }
    )

    jwt: JwtSource | None = None
    secret_ref: SecretRefSource | None = None
    webhook: WebhookSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Source":
        if sum(s is not None for s in (self.jwt, self.secret_ref, self.webhook)) != 1:
            raise ValueError("source must set exactly one of jwt, secretRef, webhook")
        return self

    @property
    def kind(self) -> SourceKind:
        if self.jwt is not None:
            return "jwt"
        if self.secret_ref is not None:
            return "secretRef"
        return "webhook"


class ScopeRules(Model):
    """Glob patterns an intent is matched against."""

    tools: Annotated[list[Pattern], Field(max_length=64)] = []
    resources: Annotated[list[Pattern], Field(max_length=64)] = []
    actions: Annotated[list[Pattern], Field(max_length=64)] = []


class Scope(ScopeRules):
    """What the credential may be used for; `deny` wins over the allow lists."""

    deny: ScopeRules | None = None


class Projection(Model):
    """How the value appears inside the pod."""

    mount_path: Annotated[str, StringConstraints(pattern=MOUNT_PATH, max_length=512)] = Field(
        description="Directory the credential's files are mounted at (read-only)."
    )
    env_var: Annotated[str, StringConstraints(pattern=ENV_VAR_NAME, max_length=128)] | None = (
        Field(default=None, description="Optional env var carrying the value file's path.")
    )
    file_mode: Annotated[int, Field(ge=0o400, le=0o444)] | None = Field(
        default=None, description="File mode of the projected files (default 0444)."
    )


class ExceptionApproval(Model):
    """Why a long-lived static value is allowed, who approved it, and until when."""

    reason: NonEmpty
    approved_by: NonEmpty
    expires: dt.date


class Review(Model):
    """The accountable review cadence of the credential."""

    cadence: CalendarDuration = "90d"
    last_reviewed: dt.date | None = None
    escalation: NonEmpty | None = None


class AgentCredentialSpec(Model):
    """What the credential is, whose, who may receive it, where from, and for how long."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.source.secretRef) || has(self.exception)",
                    "exception is required when source is secretRef: a static value must say "
                    "why, who approved it and until when",
                    ".exception",
                ),
                cel(
                    "!has(self.exception) || has(self.source.secretRef)",
                    "exception applies only to static (secretRef) sources",
                    ".exception",
                ),
                cel(
                    "duration(self.ttl) <= duration('24h')",
                    "ttl must be at most 24h: values are short-lived, renewal keeps long tasks going",
                    ".ttl",
                ),
                cel(
                    "duration(self.ttl) <= duration(self.maxLifetime)",
                    "ttl must not exceed maxLifetime",
                    ".ttl",
                ),
                cel(
                    "!has(self.renewBefore) || duration(self.renewBefore) < duration(self.ttl)",
                    "renewBefore must be shorter than ttl",
                    ".renewBefore",
                ),
            ]
        }
    )

    owner: NonEmpty = Field(description="The accountable owner (a team or person contact).")
    category: Category
    subjects: Subjects
    source: Source
    scope: Scope | None = None
    ttl: TaskDuration = Field(default="15m", description="Lifetime of one issued value.")
    renew_before: TaskDuration | None = Field(
        default=None, description="Renew this long before expiry (default: a third of ttl)."
    )
    max_lifetime: TaskDuration = Field(
        default="8h", description="Cap on renewals within one task."
    )
    projection: Projection
    exception: ExceptionApproval | None = None
    review: Review | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "AgentCredentialSpec":
        # The same rules as the CRD's CEL validations, for anyone validating offline.
        if self.source.secret_ref is not None and self.exception is None:
            raise ValueError("exception is required when source is secretRef")
        if self.exception is not None and self.source.secret_ref is None:
            raise ValueError("exception applies only to static (secretRef) sources")
        if self.ttl_delta > dt.timedelta(hours=24):
            raise ValueError("ttl must be at most 24h")
        if self.ttl_delta > self.max_lifetime_delta:
            raise ValueError("ttl must not exceed maxLifetime")
        if self.renew_before is not None and parse_duration(self.renew_before) >= self.ttl_delta:
            raise ValueError("renewBefore must be shorter than ttl")
        return self

    @property
    def ttl_delta(self) -> dt.timedelta:
        return parse_duration(self.ttl)

    @property
    def max_lifetime_delta(self) -> dt.timedelta:
        return parse_duration(self.max_lifetime)

    @property
    def renew_before_delta(self) -> dt.timedelta:
        if self.renew_before is not None:
            return parse_duration(self.renew_before)
        return self.ttl_delta / 3


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


class AgentCredentialStatus(Model):
    """What the operator observed and did: conditions, live projections, counts, expiry."""

    observed_generation: int | None = None
    conditions: Annotated[
        list[Condition],
        Field(
            max_length=16,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
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


class AgentCredentialRoot(Model):
    """A short-lived, task-bound credential for AI agents: minted or copied per pod,
    renewed while the task runs, revoked when it ends."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.metadata.name.size() <= 63",
                    "metadata.name must be at most 63 characters (it becomes a label key)",
                )
            ]
        }
    )

    api_version: str | None = None
    kind: str | None = None
    metadata: dict[str, Any] | None = None
    spec: AgentCredentialSpec
    status: AgentCredentialStatus | None = None


def parse_spec(spec: dict[str, Any]) -> AgentCredentialSpec:
    """Validate a spec dict as the API server stored it."""
    return AgentCredentialSpec.model_validate(spec)


# -- AgentCredentialPolicy: what a cluster admin allows, per namespace -------------------

LabelValue = Annotated[str, StringConstraints(max_length=63)]
AllowPattern = Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class LabelSelectorRequirement(Model):
    """One requirement of a label selector, as in Kubernetes."""

    key: Annotated[str, StringConstraints(min_length=1, max_length=317)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: Annotated[list[LabelValue], Field(max_length=64)] = []


class LabelSelector(Model):
    """A Kubernetes label selector; empty selects every namespace."""

    match_labels: dict[str, LabelValue] = Field(default_factory=dict)
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=16)] = []


class ScopeBounds(Model):
    """The widest scope a credential may have: each of its patterns must lie within one of
    these (here only `*` is a wildcard). An absent dimension leaves it unbounded."""

    tools: Annotated[list[AllowPattern], Field(max_length=64)] | None = None
    resources: Annotated[list[AllowPattern], Field(max_length=64)] | None = None
    actions: Annotated[list[AllowPattern], Field(max_length=64)] | None = None


class AgentCredentialPolicySpec(Model):
    """Which namespaces may have which credentials. An AgentCredential is Ready only when a
    policy selecting its namespace allows every part of it; with no policy, nothing is."""

    namespace_selector: LabelSelector = Field(
        description="The namespaces this policy applies to (by their labels; {} is every namespace)."
    )
    sources: Annotated[list[SourceKind], Field(min_length=1, max_length=3,
                                              json_schema_extra={"x-kubernetes-list-type": "set"})] = Field(
        description="Source kinds allowed: jwt (minted here), webhook (a minting service), secretRef (a static copy)."
    )
    categories: Annotated[list[Category], Field(max_length=4, json_schema_extra={"x-kubernetes-list-type": "set"})] | None = Field(
        default=None, description="Categories allowed (all when unset).")
    audiences: Annotated[list[AllowPattern], Field(max_length=64)] = Field(
        default=[], description="Audiences minted tokens may carry; `*` matches any run of characters. "
                                "Empty: no jwt audience is allowed.")
    minting_services: Annotated[list[AllowPattern], Field(max_length=64)] = Field(
        default=[], description="URLs webhook sources may call (`*` matches any run of characters), so the "
                                "operator's network position serves only the services named here.")
    max_ttl: TaskDuration = Field(default="1h", alias="maxTTL", description="The longest ttl allowed.")
    max_lifetime: TaskDuration = Field(default="8h", description="The longest maxLifetime allowed.")
    scope: ScopeBounds | None = Field(default=None, description="The widest scope allowed (unbounded when unset).")


class AgentCredentialPolicyRoot(Model):
    """Cluster-scoped, owned by cluster admins: which namespaces may have AgentCredentials
    with which audiences, sources, minting services, lifetimes and scope."""

    api_version: str | None = None
    kind: str | None = None
    metadata: dict[str, Any] | None = None
    spec: AgentCredentialPolicySpec


def parse_policy_spec(spec: dict[str, Any]) -> AgentCredentialPolicySpec:
    return AgentCredentialPolicySpec.model_validate(spec)

