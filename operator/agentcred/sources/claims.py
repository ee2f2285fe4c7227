"""The claims of every token agentcred signs, built in one place.

Tokens are JWT access tokens as RFC 9068 profiles them (header `typ: at+jwt`): `iss`, `sub`
and `client_id` (the pod's ServiceAccount), `aud`, `iat`/`nbf`/`exp`, `jti`; a narrowed token
adds `scope` and/or `authorization_details` as granted, and `act` when someone acts through
the pod (RFC 8693 §4.1). The `agentcred` claim names the credential, its namespace and
category, the pod, its UID and Job; a token that is not narrowed carries the credential's
scope patterns there; one the token service issued names its `grant`, and the ids of the
agentcred tokens it came from (`derivedFrom`: revoking one of them revokes it). Verifiers pin
a tenant with `agentcred.namespace` and revoke by `agentcred.podUID`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..api.pods import PodTask
from ..rules.credentials import CredentialRecord


def service_account_subject(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


@dataclass(frozen=True)
class Grant:
    """What a token is for, beyond its credential: its audiences, and either the credential's
    own scope patterns (`scope`) or the intents granted (`scope_strings`, `details`)."""

    audiences: tuple[str, ...]
    scope: dict[str, Any] | None = None
    scope_strings: tuple[str, ...] = ()
    details: tuple[dict[str, Any], ...] = ()
    act: dict[str, Any] | None = None
    derived_from: tuple[str, ...] = ()
    grant_type: str | None = None  # the OAuth grant it was issued by; None: a projected value
    jkt: str | None = None  # the DPoP key it is bound to (RFC 9449 §6.1); None: a bearer token


def token_claims(
    *,
    issuer: str,
    record: CredentialRecord,
    task: PodTask,
    issued_at: dt.datetime,
    expires_at: dt.datetime,
    token_id: str,
    grant: Grant,
) -> dict[str, Any]:
    spec = record.spec
    assert spec is not None and spec.source.jwt is not None, "only minted credentials have token claims"
    subject = service_account_subject(task.namespace, task.service_account)
    audiences = list(grant.audiences)
    issued: dict[str, Any] = {
        "credential": record.name,
        "namespace": record.namespace,
        "category": spec.category,
        "pod": task.name,
        "podUID": task.uid,
        "job": task.job,
    }
    if grant.scope is not None:
        issued["scope"] = grant.scope
    if grant.derived_from:
        issued["derivedFrom"] = list(grant.derived_from)
    if grant.grant_type:
        issued["grant"] = grant.grant_type
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "client_id": subject,
        "aud": audiences[0] if len(audiences) == 1 else audiences,
        "iat": int(issued_at.timestamp()),
        "nbf": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
        "jti": token_id,
    }
    if grant.scope_strings:
        claims["scope"] = " ".join(grant.scope_strings)
    if grant.details:
        claims["authorization_details"] = list(grant.details)
    if grant.act is not None:
        claims["act"] = grant.act
    if grant.jkt is not None:
        claims["cnf"] = {"jkt": grant.jkt}
    claims["agentcred"] = issued
    return claims


def credential_scope(record: CredentialRecord) -> dict[str, Any]:
    spec = record.spec
    return spec.scope.model_dump(by_alias=True, exclude_none=True) if spec is not None and spec.scope else {}


def credential_grant(record: CredentialRecord) -> Grant:
    """What a projected value is for: every audience and the whole scope of its credential."""
    spec = record.spec
    assert spec is not None and spec.source.jwt is not None
    return Grant(audiences=tuple(spec.source.jwt.audiences), scope=credential_scope(record))
