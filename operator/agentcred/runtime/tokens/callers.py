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


class Throttled(Exception):
    """The client address has used up its refused tokens (or has too many reviews in flight)."""


class RateLimiter:
    """A token bucket per key (a pod, an address), so one runaway caller cannot flood the operator."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        metrics.track("rate-limit-keys", lambda: len(self._buckets))

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

    def spend(self, key: str, amount: float, now: float | None = None) -> None:
        """Take `amount` (it may leave the key in debt: `allow` then waits until it is paid)."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        self._buckets[key] = (tokens - amount, now)

    def refund(self, key: str) -> None:
        """Give back one taken before it was known whether it should count."""
        found = self._buckets.get(key)
        if found is not None:
            self._buckets[key] = (min(float(self.burst), found[0] + 1), found[1])


TokenReviewer = Callable[[str], Awaitable[dict[str, Any]]]
PAY_WAIT = 5.0  # seconds a review may wait for its address's budget to be paid back


class ReviewGate:
    """TokenReviews are the expensive part of a token request, so they are bounded: each one is
    paid for out of the client address's budget of refused tokens *before* it is sent (and paid
    back if the API server accepts the token) -- so an address has at most its budget of reviews
    sent, and past it waits for one of them to be paid back -- at most `per_source` are sent at
    once for one address and `concurrency` in all, and each token's answer is kept `ttl` seconds
    (by a hash of the token, never the token), so a flood of the same or of garbage tokens costs
    the API server little. Checked before the review and charged after it, concurrent garbage tokens
    all passed the check: 241 TokenReviews where the same tokens one by one bought 41."""

    def __init__(
        self,
        review: TokenReviewer,
        concurrency: int = 16,
        ttl: float = 10.0,
        size: int = 10000,
        per_source: int = 4,
        caller: str = "token-service",
    ) -> None:
        self._review = review
        self._slots = asyncio.Semaphore(concurrency)
        self._ttl, self._size, self._per_source, self._caller = ttl, size, per_source, caller
        self._answers: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lanes: dict[str, _Lane] = {}  # per client address: its reviews, waiting or sent
        metrics.track(f"{caller}-reviews-cached", lambda: len(self._answers))

    async def review(self, token: str, source: str, refusals: RateLimiter) -> dict[str, Any]:
        """The API server's answer for `token`, sent by `source`; Throttled if that address may
        not have one now. A refusal costs the address one of `refusals`; an acceptance nothing."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            if not _accepted(cached[1]) and not refusals.allow(source):
                raise Throttled()
            return cached[1]
        lane = self._lanes.get(source)
        if lane is None:
            lane = self._lanes[source] = _Lane(asyncio.Semaphore(self._per_source), asyncio.Event())
        lane.users += 1
        try:
            await self._pay(lane, source, refusals)
            lane.sending += 1
            try:
                async with lane.slots, self._slots:
                    answer = await self._review(token)
                if _accepted(answer):
                    refusals.refund(source)
            except BaseException:
                refusals.refund(source)  # the API server did not answer: nothing known against the token
                raise
            finally:
                lane.sending -= 1
                lane.settled.set()
        finally:
            lane.users -= 1
            if not lane.users:
                del self._lanes[source]
        metrics.token_reviews.labels(self._caller).inc()
        if len(self._answers) >= self._size:
            self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
            if len(self._answers) >= self._size:
                self._answers.clear()
        self._answers[key] = (now + self._ttl, _kept(answer))
        return answer

    async def _pay(self, lane: _Lane, source: str, refusals: RateLimiter) -> None:
        """Take one of the address's refused tokens; with none left while reviews of this
        address are in flight, wait (at most `PAY_WAIT`) for one to be paid back -- a burst of
        valid tokens from one address (a gateway, a NAT) is answered, garbage is not."""
        deadline = time.monotonic() + PAY_WAIT
        while not refusals.allow(source):
            remaining = deadline - time.monotonic()
            if not lane.sending or remaining <= 0:
                raise Throttled()
            lane.settled.clear()
            try:
                await asyncio.wait_for(lane.settled.wait(), remaining)
            except TimeoutError:
                raise Throttled() from None

    def busy(self, source: str) -> bool:
        """Are reviews of this address in flight (one may yet pay its token back)?"""
        lane = self._lanes.get(source)
        return lane is not None and lane.sending > 0

    async def identity(self, token: str, source: str, refusals: RateLimiter) -> Reviewed:
        return reviewed_identity(await self.review(token, source, refusals))


@dataclass
class _Lane:
    slots: asyncio.Semaphore
    settled: asyncio.Event  # set whenever one of its reviews ends
    users: int = 0  # requests paying, waiting or sent
    sending: int = 0  # reviews paid for and not yet answered


def _accepted(answer: dict[str, Any]) -> bool:
    return answer.get("authenticated") is True


def _kept(answer: dict[str, Any]) -> dict[str, Any]:
    """What a cached answer needs (whether it was accepted, whom it names, for which of the
    audiences asked -- a workload assertion's single use depends on it -- why not), not the
    whole status the API server sent back."""
    return {k: answer[k] for k in ("authenticated", "user", "audiences", "error") if k in answer}
