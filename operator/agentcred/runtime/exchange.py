"""Intent exchange: a pod trades its ServiceAccount token and an intent for a token
narrowed to exactly that intent, or gets a refusal that says why.

The pod is authenticated by the API server (TokenReview, audience `agentcred`, the token
bound to the pod); the pod must be alive, admitted for the credential and still hold its
value; the intent must fall inside the credential's scope. Every outcome is audited.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ..api.pods import PodTask
from ..api.times import format_time, utcnow
from ..platform import metrics
from ..platform.revocations import RevocationList
from ..rules.credentials import CredentialRecord
from ..rules.scope import EXCHANGE_MAX_TTL, Intent, evaluate, intent_problem
from ..rules.verdicts import describe_validation_error
from ..sources.base import Sources
from ..sources.claims import token_claims
from ..sources.jwt import JwtSource
from .audit import AuditTrail

MAX_BODY = 16 * 1024
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"

Field256 = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class ExchangeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    credential: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    tool: Field256
    action: Field256
    resource: Field256
    ttl_seconds: Annotated[int, Field(ge=1, le=int(EXCHANGE_MAX_TTL.total_seconds()))] | None = Field(
        default=None, alias="ttlSeconds"
    )


class Refused(Exception):
    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    def body(self) -> dict[str, str]:
        return {"error": self.reason, "message": self.message}


@dataclass(frozen=True)
class Reviewed:
    """What the API server says about a ServiceAccount token."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str


class RateLimiter:
    """A token bucket per key (a pod), so one runaway agent cannot flood the operator."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float | None = None, take: bool = True) -> bool:
        """Is there room for one more? `take=False` looks without spending it."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if len(self._buckets) > 10000:  # forget idle keys rather than grow without bound
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1 if take else tokens, now)
        return True


TokenReviewer = Callable[[str], Awaitable[dict[str, Any]]]


class ReviewGate:
    """TokenReviews are the expensive part of an exchange, so they are bounded: at most
    `concurrency` at a time, and each token's answer is kept `ttl` seconds (by a hash of
    the token, never the token), so a flood of the same or of garbage tokens costs the API
    server little. A source that sends too fast is refused before any review (`by_source`)."""

    def __init__(self, review: TokenReviewer, concurrency: int = 16, ttl: float = 10.0, size: int = 10000) -> None:
        self._review = review
        self._slots = asyncio.Semaphore(concurrency)
        self._ttl, self._size = ttl, size
        self._answers: dict[str, tuple[float, dict[str, Any]]] = {}

    async def review(self, token: str) -> dict[str, Any]:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._slots:
            answer = await self._review(token)
        metrics.token_reviews.inc()
        if len(self._answers) >= self._size:
            self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
            if len(self._answers) >= self._size:
                self._answers.clear()
        self._answers[key] = (now + self._ttl, answer)
        return answer


@dataclass
class ExchangeContext:
    reviews: ReviewGate
    pod_by_name: Callable[[str, str], PodTask | None]
    credential: Callable[[str, str], CredentialRecord | None]
    revocations: RevocationList
    sources: Sources
    minted: JwtSource  # signs exchanged tokens
    issuer: str
    audit: AuditTrail
    limiter: RateLimiter  # per pod, after the review
    by_source: RateLimiter  # refused tokens per client address, checked before the review


def parse_request(content_type: str | None, body: bytes) -> ExchangeRequest:
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise Refused(415, "unsupported-media-type", "send the intent as application/json")
    if len(body) > MAX_BODY:
        raise Refused(413, "body-too-large", f"the request body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "malformed-body", "the request body is not valid JSON") from None
    try:
        request = ExchangeRequest.model_validate(data)
    except ValidationError as error:
        message = describe_validation_error(error).replace("spec.", "")
        raise Refused(400, "invalid-intent", message) from None
    for field in ("tool", "action", "resource"):
        problem = intent_problem(getattr(request, field))
        if problem is not None:
            raise Refused(400, "invalid-intent", f"{field} {getattr(request, field)!r} {problem}")
    return request


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(401, "missing-token", "send the pod's ServiceAccount token as 'Authorization: Bearer <token>'")
    return token.strip()


def reviewed_identity(status: dict[str, Any]) -> Reviewed:
    if not status.get("authenticated"):
        raise Refused(
            401, "invalid-token", f"the API server did not accept the token: {status.get('error') or 'rejected'}"
        )
    user = status.get("user") or {}
    parts = str(user.get("username", "")).split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        raise Refused(403, "not-a-service-account", "only ServiceAccount tokens of agent pods can be exchanged")
    extra = user.get("extra") or {}
    pod_name = (extra.get(POD_NAME_EXTRA) or [None])[0]
    pod_uid = (extra.get(POD_UID_EXTRA) or [None])[0]
    if not pod_name or not pod_uid:
        raise Refused(401, "unbound-token", "the token is not bound to a pod: use the pod's projected token")
    return Reviewed(parts[2], parts[3], pod_name, pod_uid)


async def exchange(
    context: ExchangeContext, authorization: str | None, content_type: str | None, body: bytes, source: str = ""
) -> dict[str, Any]:
    """The narrowed token for a valid request; Refused (with an HTTP status) otherwise."""
    # An address that keeps sending tokens the API server refuses is cut off before any
    # TokenReview; valid tokens cost nothing here, so a shared gateway address is not.
    if not context.by_source.allow(source, take=False):
        raise Refused(429, "rate-limited", "too many refused tokens from this address; slow down", retry_after=1)
    token = bearer_token(authorization)
    request = parse_request(content_type, body)
    try:
        who = reviewed_identity(await context.reviews.review(token))
    except Refused:
        context.by_source.allow(source)
        raise
    intent = Intent(request.tool, request.action, request.resource)
    facts: dict[str, Any] = {
        "credential": request.credential,
        "namespace": who.namespace,
        "podName": who.pod_name,
        "podUID": who.pod_uid,
        "serviceAccount": who.service_account,
        "intent": {"tool": intent.tool, "action": intent.action, "resource": intent.resource},
    }
    try:
        return _grant(context, request, who, intent, facts)
    except Refused as refused:
        context.audit.record("deny", reason=refused.reason, message=refused.message, **facts)
        raise


def _grant(
    context: ExchangeContext, request: ExchangeRequest, who: Reviewed, intent: Intent, facts: dict[str, Any]
) -> dict[str, Any]:
    if not context.limiter.allow(who.pod_uid):
        raise Refused(429, "rate-limited", f"pod {who.pod_name} is exchanging too fast; slow down", retry_after=1)
    task = context.pod_by_name(who.namespace, who.pod_name)
    if task is None or task.uid != who.pod_uid:
        raise Refused(403, "pod-not-managed", f"pod {who.pod_name} in {who.namespace} was not admitted by agentcred")
    if task.end_reason is not None:
        raise Refused(403, "pod-ended", f"pod {who.pod_name} has ended ({task.end_reason})")
    if request.credential not in task.credentials:
        raise Refused(403, "not-bound", f"pod {who.pod_name} was not admitted for credential {request.credential}")
    record = context.credential(who.namespace, request.credential)
    if record is None or record.spec is None or not record.ready:
        raise Refused(403, "credential-not-ready", f"AgentCredential {request.credential} is missing or not Ready")
    spec = record.spec
    if not record.allows(task.service_account):
        raise Refused(403, "not-a-subject", f"ServiceAccount {task.service_account} is no longer a subject")
    if not context.sources.of(record).exchangeable:
        raise Refused(
            400,
            "not-exchangeable",
            f"{request.credential} is a {spec.source.kind} source: only minted credentials narrow",
        )
    now = utcnow()
    if task.gated:
        raise Refused(403, "not-issued", f"pod {who.pod_name} has not been given {request.credential} yet")
    # The shared revocation list, not this replica's memory: what any replica revoked counts.
    if context.revocations.covers(task.uid, request.credential, now):
        raise Refused(403, "credential-revoked", f"{request.credential} was revoked for pod {who.pod_name}")
    lifetime_end = (task.admitted_at or now) + spec.max_lifetime_delta
    if now >= lifetime_end:
        raise Refused(403, "max-lifetime", f"pod {who.pod_name} reached maxLifetime {spec.max_lifetime}")
    decision = evaluate(spec.scope, intent)
    if not decision.allowed:
        raise Refused(403, decision.reason, decision.message)

    wanted = dt.timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else EXCHANGE_MAX_TTL
    expires = min(now + wanted, now + spec.ttl_delta, lifetime_end)
    token_id = secrets.token_urlsafe(16)
    claims = token_claims(
        issuer=context.issuer,
        record=record,
        task=task,
        issued_at=now,
        expires_at=expires,
        token_id=token_id,
        scope=intent.as_scope(),
        extra={"intent": facts["intent"]},
    )
    token = context.minted.sign(record, claims)
    context.audit.record(
        "exchange",
        category=spec.category,
        owner=spec.owner,
        job=task.job,
        tokenId=token_id,
        expiresAt=format_time(expires),
        **facts,
    )
    return {"token": token, "tokenId": token_id, "expiresAt": format_time(expires), "scope": intent.as_scope()}
