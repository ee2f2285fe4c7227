"""The claims of every token agentcred signs, built in one place.

Tokens are JWT access tokens: `iss`, `sub` (the pod's ServiceAccount), `aud`, `iat`/`nbf`/
`exp`, `jti`, and an `agentcred` claim naming the credential, its namespace and category,
the pod, its UID and Job, and the scope the token covers (plus the intent, for exchanged
tokens). Verifiers pin a tenant with `agentcred.namespace` and revoke by `agentcred.podUID`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..api.pods import PodTask
from ..rules.credentials import CredentialRecord


def service_account_subject(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


def token_claims(
    *,
    issuer: str,
    record: CredentialRecord,
    task: PodTask,
    issued_at: dt.datetime,
    expires_at: dt.datetime,
    token_id: str,
    scope: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec = record.spec
    assert spec is not None and spec.source.jwt is not None, "only minted credentials have token claims"
    audiences = list(spec.source.jwt.audiences)
    return {
        "iss": issuer,
        "sub": service_account_subject(task.namespace, task.service_account),
        "aud": audiences[0] if len(audiences) == 1 else audiences,
        "iat": int(issued_at.timestamp()),
        "nbf": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
        "jti": token_id,
        "agentcred": {
            "credential": record.name,
            "namespace": record.namespace,
            "category": spec.category,
            "pod": task.name,
            "podUID": task.uid,
            "job": task.job,
            "scope": scope,
            **(extra or {}),
        },
    }


def credential_scope(record: CredentialRecord) -> dict[str, Any]:
    spec = record.spec
    return spec.scope.model_dump(by_alias=True, exclude_none=True) if spec is not None and spec.scope else {}
