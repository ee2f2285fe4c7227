"""The AgentCredentialPolicy resource: what cluster admins allow, per namespace, as typed
models (the CRD's schema is generated from them, as for AgentCredential)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from .gateway_model import PolicyGateway
from .schema import Category, Duration, Model, SourceKind, api_version_field, kind_field

LabelValue = Annotated[str, StringConstraints(max_length=63)]
AllowPattern = Annotated[str, StringConstraints(min_length=1, max_length=2048)]


class LabelSelectorRequirement(Model):
    """One requirement of a label selector, as in Kubernetes."""

    key: Annotated[str, StringConstraints(min_length=1, max_length=317)] = Field(
        description="The label key the requirement applies to."
    )
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: Annotated[list[LabelValue], Field(max_length=64)] = Field(
        default=[], description="The values for In and NotIn (empty for Exists and DoesNotExist)."
    )


class LabelSelector(Model):
    """A Kubernetes label selector; empty selects every namespace."""

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict, description="Labels a namespace must carry, each with this value."
    )
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=16)] = Field(
        default=[], description="Requirements a namespace's labels must all meet."
    )


BOUND_RULES = (
    "Each of a credential's patterns must lie within one of these (`*` is the only wildcard here); "
    "an empty list allows no pattern, an absent one leaves the dimension unbounded."
)


class ScopeBounds(Model):
    """The widest scope a credential may have: each of its patterns must lie within one of
    these (here only `*` is a wildcard). An absent dimension leaves it unbounded."""

    tools: Annotated[list[AllowPattern], Field(max_length=64)] | None = Field(
        default=None, description=f"The widest tool patterns allowed. {BOUND_RULES}"
    )
    resources: Annotated[list[AllowPattern], Field(max_length=64)] | None = Field(
        default=None, description=f"The widest resource patterns allowed. {BOUND_RULES}"
    )
    actions: Annotated[list[AllowPattern], Field(max_length=64)] | None = Field(
        default=None, description=f"The widest action patterns allowed. {BOUND_RULES}"
    )


class AgentCredentialPolicySpec(Model):
    """Which namespaces may have which credentials. An AgentCredential is Ready only when a
    policy selecting its namespace allows every part of it; with no policy, nothing is."""

    namespace_selector: LabelSelector = Field(
        description="The namespaces this policy applies to (by their labels; {} is every namespace)."
    )
    sources: Annotated[
        list[SourceKind], Field(min_length=1, max_length=3, json_schema_extra={"x-kubernetes-list-type": "set"})
    ] = Field(
        description="Source kinds allowed: jwt (minted here), webhook (a minting service), secretRef (a static copy)."
    )
    categories: (
        Annotated[list[Category], Field(max_length=4, json_schema_extra={"x-kubernetes-list-type": "set"})] | None
    ) = Field(default=None, description="Categories allowed (all when unset).")
    audiences: Annotated[list[AllowPattern], Field(max_length=64)] = Field(
        default=[],
        description="Audiences minted tokens may carry; `*` matches any run of characters and "
        "`${namespace}` stands for the credential's own namespace (so one policy can give every "
        "tenant its own gateways). Empty: no jwt audience is allowed.",
    )
    minting_services: Annotated[list[AllowPattern], Field(max_length=64)] = Field(
        default=[],
        description="URLs webhook sources may call, matched part by part: scheme and port exactly, the "
        "host label by label (`*` is one label), the path with `*` for any run; `${namespace}` stands "
        "for the credential's namespace. The operator's network position serves only these.",
    )
    max_ttl: Duration = Field(
        default="1h", alias="maxTTL", description="The longest ttl allowed, a duration (s, m, h, d). Default 1h."
    )
    max_lifetime: Duration = Field(
        default="8h", description="The longest maxLifetime allowed, a duration (s, m, h, d). Default 8h."
    )
    scope: ScopeBounds | None = Field(default=None, description="The widest scope allowed (unbounded when unset).")
    require_dpop: bool = Field(
        default=False,
        alias="requireDPoP",
        description="Every minted (jwt) credential this policy allows must have sender-constrained tokens "
        "(source.jwt.dpop: required): a token copied out of a pod is useless without its key.",
    )
    gateway: PolicyGateway | None = Field(
        default=None,
        description="What every call through a gateway must meet, with a credential this policy allows "
        "(CEL conditions, besides the credential's own).",
    )


class AgentCredentialPolicyRoot(Model):
    """Cluster-scoped, owned by cluster admins: which namespaces may have AgentCredentials
    with which audiences, sources, minting services, lifetimes and scope."""

    api_version: str | None = api_version_field()
    kind: str | None = kind_field()
    metadata: dict[str, Any] | None = None
    spec: AgentCredentialPolicySpec = Field(description="Which namespaces may have which credentials.")


def parse_policy_spec(spec: dict[str, Any]) -> AgentCredentialPolicySpec:
    return AgentCredentialPolicySpec.model_validate(spec)
