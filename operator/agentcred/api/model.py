"""The AgentCredential resource: its spec and status as typed models.

These models are the single source of the CRD's OpenAPI schema (see `crd.py`): every
constraint here reaches the API server, which refuses invalid objects itself.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from .durations import parse_duration
from .schema import (
    CATEGORIES,
    DNS_SUBDOMAIN,
    ENV_VAR_NAME,
    HTTPS_URL,
    MOUNT_PATH,
    SECRET_KEY,
    CalendarDuration,
    Category,
    Date,
    JwtAlgorithm,
    Model,
    NonEmpty,
    OnLeak,
    Pattern,
    SourceKind,
    TaskDuration,
    cel,
)
from .status_model import AgentCredentialStatus

__all__ = ["CATEGORIES", "Category", "Model", "SourceKind", "TaskDuration", "cel"]

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
    timeout: TaskDuration | None = Field(
        default=None, description=f"Per-call timeout (default 5s, at most {MAX_MINTING_TIMEOUT})."
    )

    @model_validator(mode="after")
    def _short_timeout(self) -> WebhookSource:
        if self.timeout is not None and parse_duration(self.timeout) > parse_duration(MAX_MINTING_TIMEOUT):
            raise ValueError(f"timeout must be at most {MAX_MINTING_TIMEOUT}")
        return self


class Source(Model):
    """Where values come from: exactly one of jwt, secretRef, webhook."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "[has(self.jwt), has(self.secretRef), has(self.webhook)].filter(x, x).size() == 1",
                    "source must set exactly one of jwt, secretRef, webhook",
                )
            ]
        }
    )

    jwt: JwtSource | None = None
    secret_ref: SecretRefSource | None = None
    webhook: WebhookSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
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
    env_var: Annotated[str, StringConstraints(pattern=ENV_VAR_NAME, max_length=128)] | None = Field(
        default=None, description="Optional env var carrying the value file's path."
    )
    file_mode: Annotated[int, Field(ge=0o400, le=0o444)] | None = Field(
        default=None, description="File mode of the projected files (default 0444)."
    )


class ExceptionApproval(Model):
    """Why a long-lived static value is allowed, who approved it, and until when."""

    reason: NonEmpty
    approved_by: NonEmpty
    expires: Date


class Review(Model):
    """The accountable review cadence of the credential."""

    cadence: CalendarDuration = "90d"
    last_reviewed: Date | None = None
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
                cel("duration(self.ttl) <= duration(self.maxLifetime)", "ttl must not exceed maxLifetime", ".ttl"),
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
    max_lifetime: TaskDuration = Field(default="8h", description="Cap on renewals within one task.")
    projection: Projection
    exception: ExceptionApproval | None = None
    review: Review | None = None
    on_leak: OnLeak = Field(
        default="reissue",
        description="What a pod gets after its value is reported leaked (the value is revoked either way): "
        "reissue (a fresh value in the still-running pod; for secretRef sources only once the upstream "
        "Secret holds a different value) or quarantine (nothing more; the pod is labelled "
        "agentcred.dev/quarantined=true for a NetworkPolicy to select).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> AgentCredentialSpec:
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
