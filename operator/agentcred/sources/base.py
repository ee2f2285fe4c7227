"""What every credential source is: one interface, chosen in one place by the spec's kind.

A source produces one value for one pod (mint a token, copy a shared static value, call a
minting service) and is told when a value it produced is revoked. Whether its values can be
narrowed by intent exchange is the source's to say.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from ..api.model import SourceKind
from ..api.pods import PodTask
from ..api.projection import IssuedValue, Subject
from ..api.reasons import SourceReason
from ..rules.credentials import CredentialRecord
from ..rules.planning import Issue


class SourceUnavailable(Exception):
    """The value cannot be produced now; `reason` is a condition reason, the message names why."""

    def __init__(self, reason: SourceReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Produced:
    value: bytes
    issued: IssuedValue
    key: bytes | None = None  # the private DPoP key (a JWK) the value is bound to, written next to it

    @classmethod
    def of(
        cls,
        value: bytes,
        *,
        kind: SourceKind,
        record: CredentialRecord,
        issue: Issue,
        now: dt.datetime,
        fingerprint: str,
        token_id: str | None = None,
        expires_at: dt.datetime | None = None,
        key: bytes | None = None,
        jkt: str | None = None,
    ) -> Produced:
        """A value produced for `issue`, with its bookkeeping (never the value): `expires_at`
        when the source decides it (a minting service), else the planned expiry; `jkt`: the
        thumbprint of `key`, kept in the bookkeeping (the pod's identity is bound to it)."""
        assert record.spec is not None
        issued = IssuedValue(
            credential=record.name,
            category=record.spec.category,
            issued_at=now,
            expires_at=expires_at or issue.expires_at,
            task_started_at=issue.task_started_at,
            fingerprint=fingerprint,
            token_id=token_id,
            renewals=issue.renewals,
            source=kind,
            jkt=jkt,
        )
        return cls(value, issued, key)


class Source(Protocol):
    kind: SourceKind

    async def produce(self, task: PodTask, record: CredentialRecord, issue: Issue, now: dt.datetime) -> Produced:
        """A value for the pod, or SourceUnavailable saying why not."""
        ...

    async def revoked(
        self,
        record: CredentialRecord | None,
        credential: str,
        value: IssuedValue,
        subject: Subject,
        reason: str,
        until: dt.datetime,
    ) -> None:
        """A value it produced is gone from the pod (`record` is None if the credential is gone
        too); no token of it outlives `until`. Must not wait on the network."""
        ...


class Sources:
    """The one place that maps a spec's source kind to its implementation."""

    def __init__(self, *sources: Source) -> None:
        self._by_kind = {source.kind: source for source in sources}

    def of(self, record: CredentialRecord) -> Source:
        assert record.spec is not None, "only a parsed credential has a source"
        return self._by_kind[record.spec.source.kind]

    def of_value(self, value: IssuedValue) -> Source | None:
        """The source that produced a value (known from its bookkeeping, even once its
        credential is gone)."""
        return self._by_kind.get(value.source)  # type: ignore[call-overload, no-any-return]
