"""Who is calling the token service: ServiceAccount tokens reviewed by the API server, the
review bounded and cached, and each caller held to a rate."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ...platform import metrics

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
CREDENTIAL_ID_EXTRA = "authentication.kubernetes.io/credential-id"  # "JTI=<jti>" for ServiceAccount tokens


class NotAuthenticated(Exception):
    """The token does not establish who is calling; the message says why."""


@dataclass(frozen=True)
class Reviewed:
    """What the API server says about a ServiceAccount token."""

    namespace: str
    service_account: str
    pod_name: str | None  # set when the token is bound to a pod
    pod_uid: str | None
    audiences: tuple[str, ...] = ()  # those asked for that the token is valid for
    token_id: str | None = None  # the token's jti, as the API server reports it

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def reviewed_identity(status: dict[str, Any]) -> Reviewed:
    """The ServiceAccount (and pod) a TokenReview status names, or NotAuthenticated."""
    if status.get("authenticated") is not True:
        raise NotAuthenticated(f"the API server did not accept the token: {status.get('error') or 'rejected'}")
    user = status.get("user")
    user = user if isinstance(user, dict) else {}
    parts = str(user.get("username", "")).split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or not all(parts[2:]):
        raise NotAuthenticated("the token is not a ServiceAccount token")
    extra = user.get("extra")
    extra = extra if isinstance(extra, dict) else {}

    def first(name: str) -> str | None:
        values = extra.get(name)
        return values[0] if isinstance(values, list) and values and isinstance(values[0], str) and values[0] else None

    credential = first(CREDENTIAL_ID_EXTRA) or ""
    audiences = status.get("audiences")
    return Reviewed(
        parts[2],
        parts[3],
        first(POD_NAME_EXTRA),
        first(POD_UID_EXTRA),
        tuple(a for a in audiences if isinstance(a, str)) if isinstance(audiences, list) else (),
        credential.removeprefix("JTI=") if credential.startswith("JTI=") else None,
    )


class RateLimiter:
    """A token bucket per key (a pod, an address), so one runaway caller cannot flood the operator."""

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
    """TokenReviews are the expensive part of a token request, so they are bounded: at most
    `concurrency` at a time, and each token's answer is kept `ttl` seconds (by a hash of the
    token, never the token), so a flood of the same or of garbage tokens costs the API server
    little."""

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

    async def identity(self, token: str) -> Reviewed:
        return reviewed_identity(await self.review(token))
