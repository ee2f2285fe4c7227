"""The AgentCredential resource: its spec and status as typed models.

These models are the single source of the CRD's OpenAPI schema (see `crd.py`): every
constraint here reaches the API server, which refuses invalid objects itself.
"""

from __future__ import annotations

import datetime as dt
import re
import ssl
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .durations import cel_seconds, parse_duration
from .gateway_model import Delivery, GatewayUse
from .schema import (
    CATEGORIES,
    DNS_SUBDOMAIN,
    ENV_VAR_NAME,
    MOUNT_PATH,
    SECRET_KEY,
    Category,
    Date,
    DPoPMode,
    Duration,
    GlobPattern,
    HttpsUrl,
    JwtAlgorithm,
    Model,
    NonEmpty,
    OnLeak,
    Pattern,
    SourceKind,
    api_version_field,
    cel,
    kind_field,
)
from .status_model import AgentCredentialStatus

__all__ = ["CATEGORIES", "Category", "Duration", "Model", "SourceKind", "cel"]

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


MAX_TTL_SECONDS = 86400

# Read-only modes only: a credential file is never writable or executable.
READ_ONLY_MODES = (0o400, 0o440, 0o444, 0o404)
_OCTAL_MODE = re.compile(r"0?[0-7]{3}")


def _octal(value: Any) -> Any:
    """A mode written as text ("0400") is octal; a number is what YAML or JSON made of it."""
    if isinstance(value, str):
        if not _OCTAL_MODE.fullmatch(value):
            raise ValueError(f'fileMode {value!r} is not an octal mode such as "0400"')
        return int(value, 8)
    return value


def _read_only(value: int) -> int:
    if value not in READ_ONLY_MODES:
        shown = f"0{value:o} (octal; {value} in decimal)" if value >= 0 else str(value)
        raise ValueError(f"fileMode {shown} is not allowed: {FILE_MODE_HINT}")
    return value


FILE_MODE_HINT = (
    'use a read-only mode in octal, 0400, 0440, 0444 or 0404: write "0400" quoted, or 0400 unquoted '
    "(YAML reads it as octal)"
)
_MODES_AS_TEXT = [f"0{mode:o}" for mode in READ_ONLY_MODES] + [f"{mode:o}" for mode in READ_ONLY_MODES]
FileMode = Annotated[
    int,
    BeforeValidator(_octal),
    AfterValidator(_read_only),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": f"type(self) != int || self in {list(READ_ONLY_MODES)}",
                    # Said in octal, as modes are written (YAML turns 0600 into 384).
                    "messageExpression": f"'fileMode 0%o (octal; %d in decimal) is not allowed: {FILE_MODE_HINT}'"
                    ".format([self, self])",
                },
                cel(f"type(self) == int || self in {_MODES_AS_TEXT}", f"fileMode is not allowed: {FILE_MODE_HINT}"),
            ],
        }
    ),
]


class Subjects(Model):
    """The workload identities allowed to receive the credential."""

    service_accounts: Annotated[
        list[Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=253)]],
        Field(min_length=1, max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ] = Field(description="ServiceAccount names in the credential's namespace.")


class JwtSource(Model):
    """A token minted and signed by the operator."""

    audiences: Annotated[list[Pattern], Field(min_length=1, max_length=16)] = Field(
        description="The `aud` claim: the gateways or MCP servers the token is for. An "
        "AgentCredentialPolicy selecting the namespace must allow each one."
    )
    algorithm: JwtAlgorithm | None = Field(
        default=None, description="Signing algorithm; the operator's default when unset."
    )
    dpop: DPoPMode = Field(
        default="optional",
        description="Sender constraint (DPoP, RFC 9449). optional: a token is bound to a key (cnf.jkt) when "
        "its request carries a DPoP proof, a bearer token otherwise. required: every token is bound -- the "
        "token service refuses requests without a proof (invalid_dpop_proof), and each value written into a "
        "pod is bound to a key generated for that pod and value, written next to it (dpop.jwk).",
    )

    @property
    def dpop_required(self) -> bool:
        return self.dpop == "required"


class SecretRefSource(Model):
    """A static value copied from a Secret in the credential's namespace."""

    name: Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=253)] = Field(
        description="The upstream Secret, in the credential's namespace. Its owner shares it: label "
        "agentcred.dev/shared=true and annotation agentcred.dev/shared-with: <credential>/<key>."
    )
    key: Annotated[str, StringConstraints(pattern=SECRET_KEY, max_length=253)] = Field(
        description="The key of the upstream Secret whose value is copied into each pod."
    )


MAX_MINTING_TIMEOUT = "30s"
HEALTH_PATH = "/healthz"  # appended to the minting service's URL, as /revoke is


class WebhookSource(Model):
    """An external minting service called over HTTPS."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"!has(self.timeout) || {cel_seconds('self.timeout')} <= "
                    f"{parse_duration(MAX_MINTING_TIMEOUT).total_seconds():.0f}",
                    f"timeout must be at most {MAX_MINTING_TIMEOUT}: a slow minting service must not hold "
                    "the operator's renewals",
                    ".timeout",
                )
            ]
        }
    )

    url: HttpsUrl = Field(
        description="The minting service: POST <url> mints a value, POST <url>/revoke revokes one. https "
        "only, no userinfo, query or fragment; an AgentCredentialPolicy's mintingServices must allow it."
    )
    ca_bundle: str | None = Field(
        default=None, description="PEM CA bundle for the service (default: the operator's system CAs)."
    )
    timeout: Duration | None = Field(
        default=None,
        description=f"Per-call timeout, a duration (s, m, h, d; e.g. 5s). Default 5s, at most {MAX_MINTING_TIMEOUT}.",
    )
    health_check: bool | None = Field(
        default=None,
        description=f"Probe GET <url>{HEALTH_PATH} (any 2xx is healthy) when the credential changes and every "
        "30s: while it fails the credential is not Ready (reason MintingServiceUnhealthy) and no new pod is "
        "admitted for it; values already held stay until they expire or their task ends. Default false.",
    )

    @model_validator(mode="after")
    def _short_timeout(self) -> WebhookSource:
        if self.timeout is not None and parse_duration(self.timeout) > parse_duration(MAX_MINTING_TIMEOUT):
            raise ValueError(f"timeout must be at most {MAX_MINTING_TIMEOUT}")
        return self

    @field_validator("ca_bundle")
    @classmethod
    def _pem_bundle(cls, bundle: str | None) -> str | None:
        # Found here, the credential is not Ready and says why; found at the first call, every
        # pod would wait on an error no condition names.
        if bundle is not None:
            try:
                ssl.create_default_context(cadata=bundle)
            except (ssl.SSLError, ValueError):
                raise ValueError("not a PEM bundle of CA certificates") from None
        return bundle


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

    jwt: JwtSource | None = Field(default=None, description="A token minted and signed by the operator.")
    secret_ref: SecretRefSource | None = Field(
        default=None,
        description="A static value copied from a shared Secret in the credential's namespace (needs `exception`).",
    )
    webhook: WebhookSource | None = Field(default=None, description="An external minting service called over HTTPS.")

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


GLOB_RULES = (
    "Shell-style globs, case-sensitive: `*` any run of characters, `?` one, `[...]` a set. "
    'An empty or absent list allows nothing in this dimension; ["*"] allows everything.'
)


class ScopeRules(Model):
    """Glob patterns an intent (tool, action, resource) is matched against."""

    tools: Annotated[list[GlobPattern], Field(max_length=64)] = Field(
        default=[], description=f"Tools the credential may be used with, e.g. web-search. {GLOB_RULES}"
    )
    resources: Annotated[list[GlobPattern], Field(max_length=64)] = Field(
        default=[], description=f"Resources it may touch, e.g. repo:acme/*. {GLOB_RULES}"
    )
    actions: Annotated[list[GlobPattern], Field(max_length=64)] = Field(
        default=[], description=f"Actions it may take, e.g. read. {GLOB_RULES}"
    )


DENY_RULES = (
    "Shell-style globs, case-sensitive: `*` any run of characters, `?` one, `[...]` a set. "
    "An empty or absent list refuses nothing here."
)


class DenyRules(ScopeRules):
    """Glob patterns an intent is refused for, even where the allow lists match."""

    tools: Annotated[list[GlobPattern], Field(max_length=64)] = Field(
        default=[], description=f"Tools refused even where `tools` allows them, e.g. delete-*. {DENY_RULES}"
    )
    resources: Annotated[list[GlobPattern], Field(max_length=64)] = Field(
        default=[],
        description=f"Resources refused even where `resources` allows them, e.g. repo:acme/secrets-*. {DENY_RULES}",
    )
    actions: Annotated[list[GlobPattern], Field(max_length=64)] = Field(
        default=[], description=f"Actions refused even where `actions` allows them, e.g. write. {DENY_RULES}"
    )


class Scope(ScopeRules):
    """What the credential may be used for, checked at intent exchange and by verifiers: an
    intent must match a pattern in each of tools, actions and resources; `deny` wins."""

    deny: DenyRules | None = Field(
        default=None,
        description="Patterns refused even where the allow lists match (deny wins); in deny, an empty "
        "or absent list refuses nothing.",
    )


class Projection(Model):
    """How the value reaches the workload: written into the pod (secret: a Secret volume; csi:
    agentcred's CSI node plugin, nothing stored in the API), or only ever handed to gateways,
    which attach it to the requests they let through (gateway)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.delivery) && self.delivery == 'gateway' || has(self.mountPath)",
                    "mountPath is required: the directory the value is mounted at (only gateway delivery has none)",
                    ".mountPath",
                ),
                cel(
                    "!has(self.delivery) || self.delivery != 'gateway' || "
                    "!(has(self.mountPath) || has(self.envVar) || has(self.fileMode))",
                    "mountPath, envVar and fileMode do not apply to gateway delivery: the value never enters a pod",
                ),
            ]
        }
    )

    delivery: Delivery = Field(
        default="secret",
        description="How the value reaches the workload: secret (written into one Secret per pod and mounted; the "
        "default), csi (written into the pod's tmpfs by agentcred's CSI node plugin, which authenticates the pod: no "
        "Secret, nothing in etcd; renewed and revoked by the plugin at once) or gateway (never written into any pod: "
        "gateways attach it upstream to the calls agentcred allows; the pod holds only its identity). A pod's "
        "credentials written into it share one delivery, secret or csi.",
    )
    mount_path: Annotated[str, StringConstraints(pattern=MOUNT_PATH, max_length=512)] | None = Field(
        default=None,
        description="Directory the credential's files are mounted at (read-only). Required unless delivery is gateway.",
    )
    env_var: Annotated[str, StringConstraints(pattern=ENV_VAR_NAME, max_length=128)] | None = Field(
        default=None, description="Optional env var carrying the value file's path."
    )
    file_mode: FileMode | None = Field(
        default=None,
        description="An integer or a string (kubectl explain shows such a field as <Object>): the mode of the "
        'projected files, read-only: 0400, 0440, 0444 or 0404 (octal). Write it quoted ("0400") or as a YAML '
        "octal number (0400); default 0444.",
    )

    @model_validator(mode="after")
    def _delivered(self) -> Projection:
        if self.delivery == "gateway":
            if self.mount_path is not None or self.env_var is not None or self.file_mode is not None:
                raise ValueError(
                    "mountPath, envVar and fileMode do not apply to gateway delivery: the value never enters a pod"
                )
        elif self.mount_path is None:
            raise ValueError("mountPath is required: the directory the value is mounted at")
        return self

    @property
    def gateway_only(self) -> bool:
        return self.delivery == "gateway"

    @property
    def by_csi(self) -> bool:
        return self.delivery == "csi"


class ExceptionApproval(Model):
    """Why a long-lived static value is allowed, who approved it, and until when."""

    reason: NonEmpty = Field(description="Why no minted source will do (e.g. the vendor issues static keys only).")
    approved_by: NonEmpty = Field(description="Who approved the exception (a person or team contact).")
    expires: Date = Field(
        description="The last day (YYYY-MM-DD, UTC) the exception holds; from the next, the credential is "
        "not Ready and its values are revoked."
    )


class Review(Model):
    """The accountable review cadence of the credential."""

    cadence: Duration = Field(
        default="90d", description="How often the credential is reviewed, a duration (s, m, h, d); default 90d."
    )
    last_reviewed: Date | None = Field(
        default=None,
        description="The day (YYYY-MM-DD) it was last reviewed; the next review is due cadence later "
        "(counted from creation when unset).",
    )
    escalation: NonEmpty | None = Field(default=None, description="Whom to tell when a review is overdue.")


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
                    f"{cel_seconds('self.ttl')} <= {MAX_TTL_SECONDS}",
                    "ttl must be at most 24h (1d): values are short-lived, renewal keeps long tasks going",
                    ".ttl",
                ),
                cel(
                    f"{cel_seconds('self.ttl')} <= {cel_seconds('self.maxLifetime')}",
                    "ttl must not exceed maxLifetime",
                    ".ttl",
                ),
                cel(
                    f"!has(self.renewBefore) || {cel_seconds('self.renewBefore')} < {cel_seconds('self.ttl')}",
                    "renewBefore must be shorter than ttl",
                    ".renewBefore",
                ),
                cel(
                    "!has(self.projection.delivery) || self.projection.delivery != 'csi' || !has(self.source.jwt) || "
                    "!has(self.source.jwt.dpop) || self.source.jwt.dpop != 'required'",
                    "source.jwt.dpop required is not available with csi delivery yet (the CSI plugin writes no "
                    "dpop.jwk beside the value): use secret delivery for DPoP-bound values",
                    ".source.jwt.dpop",
                ),
                cel(
                    "!has(self.projection.delivery) || self.projection.delivery != 'gateway' || has(self.gateway)",
                    "gateway is required when projection.delivery is gateway: its routes say which calls the "
                    "credential is for",
                    ".gateway",
                ),
                cel(
                    "!has(self.projection.delivery) || self.projection.delivery != 'gateway' || "
                    "!has(self.source.webhook)",
                    "gateway delivery attaches a minted (jwt) or static (secretRef) value: a minting service's "
                    "values are written into pods",
                    ".source",
                ),
                cel(
                    "!has(self.gateway) || has(self.source.jwt) || self.gateway.routes.all(r, !has(r.audience))",
                    "a route's audience applies only to jwt sources",
                    ".gateway.routes",
                ),
                cel(
                    "!has(self.gateway) || !has(self.source.jwt) || self.gateway.routes.all(r, has(r.audience) ? "
                    "r.audience in self.source.jwt.audiences : size(self.source.jwt.audiences) == 1)",
                    "each route's audience must be one of source.jwt.audiences (name it on every route when there "
                    "are several)",
                    ".gateway.routes",
                ),
            ]
        }
    )

    owner: NonEmpty = Field(description="The accountable owner (a team or person contact).")
    category: Category = Field(
        description="Which inventory it belongs to: model (model API keys), tool (tool and MCP tokens), "
        "retrieval (retrieval connectors), deployment (deployment credentials)."
    )
    subjects: Subjects = Field(description="The workload identities allowed to receive the credential.")
    source: Source = Field(description="Where values come from: exactly one of jwt, secretRef, webhook.")
    scope: Scope | None = Field(
        default=None,
        description="What it may be used for (tools, actions, resources, deny). Without a scope no intent "
        "is allowed: intent exchange refuses every request.",
    )
    ttl: Duration = Field(
        default="15m",
        description="Lifetime of one issued value, a duration (s, m, h, d; e.g. 15m, 1h30m); at most 24h "
        "and at most maxLifetime. Default 15m.",
    )
    renew_before: Duration | None = Field(
        default=None,
        description="Renew this long before a value expires, a duration (s, m, h, d), shorter than ttl. "
        "Default: a third of ttl.",
    )
    max_lifetime: Duration = Field(
        default="8h",
        description="How long one task may hold the credential, renewals included, counted from the pod's "
        "admission; a duration (s, m, h, d; e.g. 8h, 2d). Default 8h.",
    )
    projection: Projection = Field(
        description="How the value reaches the workload: mounted into the pod (secret) or only through gateways."
    )
    gateway: GatewayUse | None = Field(
        default=None,
        description="How gateways use the credential: the routes that turn a request into an intent, CEL "
        "conditions over each call, and the header the value goes in upstream. Required for gateway delivery.",
    )
    exception: ExceptionApproval | None = Field(
        default=None,
        description="Required for secretRef sources, refused for others: why a long-lived static value is "
        "allowed, who approved it, and until when.",
    )
    review: Review | None = Field(default=None, description="The accountable review cadence of the credential.")
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
        if self.projection.by_csi and self.source.jwt is not None and self.source.jwt.dpop_required:
            raise ValueError("source.jwt.dpop required is not available with csi delivery yet")
        if self.projection.gateway_only and self.gateway is None:
            raise ValueError("gateway is required when projection.delivery is gateway")
        if self.projection.gateway_only and self.source.webhook is not None:
            raise ValueError("gateway delivery attaches a minted (jwt) or static (secretRef) value, not a webhook's")
        if self.gateway is not None:
            jwt = self.source.jwt
            for route in self.gateway.routes:
                if route.audience is not None and (jwt is None or route.audience not in jwt.audiences):
                    raise ValueError(f"route {route.name}: audience must be one of source.jwt.audiences")
                if route.audience is None and jwt is not None and len(jwt.audiences) != 1:
                    raise ValueError(f"route {route.name}: name its audience (the source has several)")
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

    api_version: str | None = api_version_field()
    kind: str | None = kind_field()
    metadata: dict[str, Any] | None = None
    spec: AgentCredentialSpec = Field(
        description="What the credential is, whose, who may receive it, where from, and for how long."
    )
    status: AgentCredentialStatus | None = Field(
        default=None, description="What the operator observed and did (written by the operator only)."
    )


def parse_spec(spec: dict[str, Any]) -> AgentCredentialSpec:
    """Validate a spec dict as the API server stored it."""
    return AgentCredentialSpec.model_validate(spec)
