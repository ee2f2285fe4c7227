"""The credential a gateway attaches upstream to a call agentcred allowed: a token minted for
the upstream's audience and narrowed to the call's one intent, or a static value from the
credential's shared Secret. The agent's own token never goes upstream.

Static values are read through the `secretRef` source itself (the share checked, a value
reported leaked refused until rotated), from a copy kept per version of the upstream Secret,
so a call costs no API request; the values handed out are remembered by fingerprint for
`agentcred trace` and leak response.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ...api.pods import PodTask
from ...rules.credentials import SharedSecret
from ...rules.gateway.decision import Verdict
from ...rules.oauth import TOOL_DETAILS_TYPE
from ...rules.planning import Issue
from ...sources.base import SourceUnavailable
from ...sources.claims import Grant, token_claims
from ...sources.jwt import JwtSource
from ...sources.static import StaticSource

GATEWAY_TOKEN_TTL = dt.timedelta(seconds=60)  # one call's token: minted per call, for that call
GRANT = "gateway"  # the `agentcred.grant` of tokens handed to gateways
MAX_HANDED = 10_000  # static values remembered by fingerprint (the oldest forgotten first)


@dataclass(frozen=True)
class Attached:
    headers: dict[str, str]
    token_id: str | None = None
    fingerprint: str | None = None
    expires_at: dt.datetime | None = None


@dataclass(frozen=True)
class Handed:
    """A static value handed to a gateway for a pod: what trace and leak response need."""

    namespace: str
    credential: str
    category: str
    pod: str
    pod_uid: str
    job: str | None
    service_account: str
    fingerprint: str
    first: dt.datetime
    last: dt.datetime


class HandedValues:
    """Static values handed to gateways, by fingerprint, bounded."""

    def __init__(self, limit: int = MAX_HANDED) -> None:
        self._limit = limit
        self._by_fingerprint: OrderedDict[str, dict[tuple[str, str, str], Handed]] = OrderedDict()

    def note(self, handed: Handed) -> None:
        holders = self._by_fingerprint.setdefault(handed.fingerprint, {})
        self._by_fingerprint.move_to_end(handed.fingerprint)
        key = (handed.namespace, handed.credential, handed.pod_uid)
        before = holders.get(key)
        holders[key] = dataclasses.replace(handed, first=before.first) if before else handed
        while len(self._by_fingerprint) > self._limit:
            self._by_fingerprint.popitem(last=False)

    def holding(self, fingerprint: str) -> list[Handed]:
        return list(self._by_fingerprint.get(fingerprint, {}).values())


SecretReader = Callable[[str, str], Awaitable[dict[str, Any] | None]]


class UpstreamSecrets:
    """Shared upstream Secrets as read, one copy per resourceVersion the index reports."""

    def __init__(self, read: SecretReader, shared: Callable[[str, str], SharedSecret | None]) -> None:
        self._read, self._shared = read, shared
        self._copies: dict[tuple[str, str], tuple[str, dict[str, Any] | None]] = {}

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self._shared(namespace, name)
        version = found.version if found is not None else ""
        kept = self._copies.get((namespace, name))
        if kept is not None and kept[0] == version and version:
            return kept[1]
        body = await self._read(namespace, name)
        self._copies[(namespace, name)] = (str(((body or {}).get("metadata") or {}).get("resourceVersion") or ""), body)
        return body


class Upstream:
    def __init__(self, minted: JwtSource, issuer: str, static: StaticSource, handed: HandedValues) -> None:
        self._minted, self._issuer, self._static, self.handed = minted, issuer, static, handed

    async def attach(self, verdict: Verdict, task: PodTask, now: dt.datetime) -> Attached:
        """The headers for the upstream request; SourceUnavailable when the value cannot be had."""
        record, route = verdict.record, verdict.route
        assert record is not None and record.spec is not None and route is not None
        spec = record.spec
        header = spec.gateway.upstream if spec.gateway is not None else None
        name, prefix = (header.name, header.prefix) if header is not None else ("Authorization", "Bearer ")
        lifetime_end = (task.admitted_at or now) + spec.max_lifetime_delta
        expires = min(now + GATEWAY_TOKEN_TTL, now + spec.ttl_delta, lifetime_end)
        if spec.source.jwt is not None:
            audience = route.audience or spec.source.jwt.audiences[0]
            intent = verdict.intent
            details: tuple[dict[str, Any], ...] = ()
            if intent is not None:
                details = (
                    {
                        "type": TOOL_DETAILS_TYPE,
                        "tool": intent.tool,
                        "actions": [intent.action],
                        "identifier": intent.resource,
                    },
                )
            token_id = secrets.token_urlsafe(16)
            claims = token_claims(
                issuer=self._issuer,
                record=record,
                task=task,
                issued_at=now,
                expires_at=expires,
                token_id=token_id,
                grant=Grant((audience,), details=details, grant_type=GRANT),
            )
            token = self._minted.sign(record, claims)
            return Attached({name: f"{prefix}{token}"}, token_id=token_id, expires_at=expires)
        started = task.admitted_at or now
        produced = await self._static.produce(task, record, Issue(record.name, expires, started), now)
        value = produced.value.decode("utf-8", errors="replace")
        if not value.isascii() or not value.isprintable():
            raise SourceUnavailable(
                "UnfitForHeader", f"the value of {record.name} has characters a header cannot carry"
            )
        fingerprint = produced.issued.fingerprint
        self.handed.note(
            Handed(
                record.namespace,
                record.name,
                spec.category,
                task.name,
                task.uid,
                task.job,
                task.service_account,
                fingerprint,
                now,
                now,
            )
        )
        return Attached({name: f"{prefix}{value}"}, fingerprint=fingerprint)
