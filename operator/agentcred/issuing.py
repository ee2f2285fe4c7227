"""Produce one credential value for one pod: mint a JWT or copy a static upstream value."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from . import labels
from .credentials import CredentialRecord, shared_secret, upstream_problem
from .planning import Issue
from .projection import IssuedValue, PodTask, fingerprint
from .signing import DEFAULT_ALGORITHM, KeyRing, encode_jwt


class SourceUnavailable(Exception):
    """The value cannot be produced now; `reason` is a condition reason, the message names why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Produced:
    value: bytes
    issued: IssuedValue


if TYPE_CHECKING:
    from .minting import MintingClient

SecretReader = Callable[[str, str], Awaitable[dict[str, Any] | None]]


def jwt_claims(
    task: PodTask, record: CredentialRecord, issue: Issue, issuer: str, now: dt.datetime, token_id: str
) -> dict[str, Any]:
    spec = record.spec
    assert spec is not None and spec.source.jwt is not None
    audiences = list(spec.source.jwt.audiences)
    return {
        "iss": issuer,
        "sub": f"system:serviceaccount:{task.namespace}:{task.service_account}",
        "aud": audiences[0] if len(audiences) == 1 else audiences,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int(issue.expires_at.timestamp()),
        "jti": token_id,
        "agentcred": {
            "credential": record.name,
            "namespace": record.namespace,
            "category": spec.category,
            "pod": task.name,
            "podUID": task.uid,
            "job": task.job,
            "scope": spec.scope.model_dump(by_alias=True, exclude_none=True) if spec.scope else {},
        },
    }


async def produce(
    task: PodTask,
    record: CredentialRecord,
    issue: Issue,
    *,
    keyring: KeyRing,
    issuer: str,
    read_secret: SecretReader,
    minter: "MintingClient",
    now: dt.datetime,
) -> Produced:
    spec = record.spec
    assert spec is not None
    token_id: str | None = None
    expires_at = issue.expires_at
    if spec.source.jwt is not None:
        token_id = secrets.token_urlsafe(16)
        key = keyring.current(spec.source.jwt.algorithm or DEFAULT_ALGORITHM)
        value = encode_jwt(jwt_claims(task, record, issue, issuer, now, token_id), key).encode()
    elif spec.source.secret_ref is not None:
        value = await _copy_upstream(record, read_secret)
    else:
        value, expires_at, token_id = await minter.mint(record, task, issue.expires_at, now)
    issued = IssuedValue(
        credential=record.name,
        category=spec.category,
        issued_at=now,
        expires_at=expires_at,
        task_started_at=issue.task_started_at,
        fingerprint=fingerprint(value),
        token_id=token_id,
        renewals=issue.renewals,
        source=spec.source.kind,
    )
    return Produced(value, issued)


async def _copy_upstream(record: CredentialRecord, read_secret: SecretReader) -> bytes:
    spec = record.spec
    assert spec is not None and spec.source.secret_ref is not None
    ref = spec.source.secret_ref
    upstream = await read_secret(record.namespace, ref.name)
    # Checked again on what was just read: the operator copies only what the Secret's owner
    # shares with this very credential (the operator can read more than its tenants can).
    shared = upstream is not None and (upstream["metadata"].get("labels") or {}).get(labels.SHARED_LABEL) == "true"
    problem = upstream_problem(record, shared_secret(upstream) if upstream is not None and shared else None)
    if problem is not None:
        raise SourceUnavailable(problem.reason, f"AgentCredential {record.name}: {problem.message}")
    assert upstream is not None
    return base64.b64decode(upstream["data"][ref.key])
