"""The leak intake on the operator's HTTPS endpoint, for scanners, SIEMs and `agentcred leak`:

POST /v1/leaks   a report: a JSON array of {token, type, url, source} (the shape secret-scanning
                 services send; `fingerprint` or `tokenId` instead of `token` from the CLI);
                 every value found is contained (see `leak_response`), each answered
POST /v1/trace   the same body: whose each value is and its state, nothing changed

Callers send a ServiceAccount token (audience `agentcred`) as a bearer token; the API server
reviews it, and only ServiceAccounts listed as leak reporters are heard: a tenant's
(`--leak-reporters`, the Helm value `leakResponse.reporters`) within its own namespace, a
cluster-wide one (`--cluster-leak-reporters`, `leakResponse.clusterReporters`) everywhere.
Items that are nobody's within the reporter's remit cost it: a burst, then one a second. The
leader answers (it holds the bookkeeping and writes); another replica answers 503 with
Retry-After, and the client asks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ...platform.kube import status_of
from ...rules.leaks import GUESS_BURST, GUESS_RATE, MAX_BODY, BadReport, parse_report
from ..audit import AuditTrail
from ..tokens.callers import RateLimiter, ReviewGate, Throttled
from .response import LeakResponder, Reporter

log = logging.getLogger(__name__)

CONCURRENT_ITEMS = 16
REFUSAL_RATE, REFUSAL_BURST = 2.0, 20  # refused tokens per second per address, and the burst


@dataclass
class LeakIntake:
    responder: LeakResponder
    review: Callable[[str], Awaitable[dict[str, Any]]]  # a TokenReview
    reporters: frozenset[str]  # namespace/name: a tenant's reporters, heard in their own namespace
    leading: Callable[[], bool]
    audit: AuditTrail
    cluster_reporters: frozenset[str] = frozenset()  # namespace/name: heard in every namespace
    # Per reporter: items that turn out to be nobody's (see rules.leaks.GUESS_RATE).
    _guesses: RateLimiter = field(default_factory=lambda: RateLimiter(GUESS_RATE, GUESS_BURST))
    # Reviews paid for by the address before they are sent, 4 at once (2 per address): a flood
    # of garbage tokens, concurrent or not, stops costing TokenReviews after a burst.
    _refusals: RateLimiter = field(default_factory=lambda: RateLimiter(REFUSAL_RATE, REFUSAL_BURST))
    _gate: ReviewGate | None = None

    def __post_init__(self) -> None:
        self._gate = ReviewGate(self.review, concurrency=4, per_source=2, caller="leak-intake")

    async def reporter(self, authorization: str | None, source: str) -> Reporter:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise BadReport(401, "missing-token", "send a reporter's ServiceAccount token as 'Authorization: Bearer'")
        assert self._gate is not None
        if not self._refusals.allow(source, take=False) and not self._gate.busy(source):
            raise _rate_limited()
        try:
            status = await self._gate.review(token.strip(), source, self._refusals)
        except Throttled:
            raise _rate_limited() from None
        return self._identify(status, source)

    def _identify(self, status: dict[str, Any], source: str) -> Reporter:
        username = str((status.get("user") or {}).get("username") or "")
        parts = username.split(":")
        if not status.get("authenticated") or len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            self.audit.record(
                "deny", reason="invalid-token", message="leak report with a token not accepted", source=source
            )
            raise BadReport(401, "invalid-token", "the API server did not accept the token as a ServiceAccount's")
        listed = f"{parts[2]}/{parts[3]}"
        if listed in self.cluster_reporters:
            return Reporter(parts[2], parts[3], everywhere=True)
        if listed not in self.reporters:
            self._refusals.allow(source)  # accepted, but no reporter: the address pays as for a bad token
            self.audit.record(
                "deny",
                reason="not-a-reporter",
                message="leak report from a ServiceAccount not listed",
                reporter=username,
            )
            raise BadReport(
                403,
                "not-a-reporter",
                f"{username} is not a leak reporter (leakResponse.reporters, leakResponse.clusterReporters)",
            )
        return Reporter(parts[2], parts[3])

    def guessing_allowed(self, reporter: Reporter) -> bool:
        return self._guesses.allow(reporter.username, take=False)

    def guessed(self, reporter: Reporter) -> None:
        """An item that was nobody's (within the reporter's remit): it costs the reporter."""
        self._guesses.allow(reporter.username)

    def audit_guessing(self, reporter: Reporter, cut: int, sent: int) -> None:
        self.audit.record(
            "deny",
            reason="guessing",
            message=f"{cut} of {sent} items not looked up: too many values that are nobody's from this reporter",
            reporter=reporter.username,
        )


GUESSING = "too many values that are nobody's from this reporter (guessing?): slow down"


def _rate_limited() -> BadReport:
    return BadReport(429, "rate-limited", "too many refused tokens from this address; slow down")


LEAK_INTAKE = web.AppKey("agentcred-leak-intake", LeakIntake)


def add_routes(app: web.Application) -> None:
    """Registered by `endpoints.build_app`; answers 404 until the operator sets LEAK_INTAKE."""
    app.router.add_post("/v1/leaks", _report)
    app.router.add_post("/v1/trace", _trace)


async def _report(request: web.Request) -> web.Response:
    return await _handle(request, contain=True)


async def _trace(request: web.Request) -> web.Response:
    return await _handle(request, contain=False)


async def _handle(request: web.Request, contain: bool) -> web.Response:
    intake = request.app.get(LEAK_INTAKE)
    if intake is None:
        raise web.HTTPNotFound()
    if not intake.leading():
        return _refused(BadReport(503, "not-leader", "another replica leads; ask again"), retry_after=1)
    try:
        reporter = await intake.reporter(request.headers.get("Authorization"), request.remote or "")
        body = await _read(request)
        candidates = parse_report(request.headers.get("Content-Type"), body)
    except BadReport as refused:
        return _refused(refused, 1 if refused.status == 429 else None)
    except Exception as error:  # the API server unreachable for the review, say
        return _refused(BadReport(503, "unavailable", f"could not review the token ({status_of(error) or error})"), 2)
    if not intake.guessing_allowed(reporter):
        intake.audit_guessing(reporter, len(candidates), len(candidates))
        return _refused(BadReport(429, "rate-limited", GUESSING), retry_after=int(1 / GUESS_RATE) + 1)
    slots = asyncio.Semaphore(CONCURRENT_ITEMS)
    cut_off: list[int] = []

    async def answer(index: int) -> dict[str, Any]:
        async with slots:
            candidate = candidates[index]
            if not intake.guessing_allowed(reporter):
                cut_off.append(index)
                return {"index": index, "error": "rate-limited", "message": GUESSING}
            try:
                if contain:
                    found = {"index": index, **await intake.responder.report(candidate, reporter)}
                else:
                    traced = intake.responder.trace(candidate, reporter).to_json()
                    found = {"index": index, "type": candidate.type, **traced}
                if found["verdict"] != "ours":
                    intake.guessed(reporter)
                return found
            except Exception as error:  # one item must never cost the others their answers
                # The type only: a message or traceback could carry the reported value.
                log.warning("leak report item %d not handled (%s)", index, type(error).__name__)
                intake.audit.record(
                    "deny",
                    reason="item-failed",
                    message=f"item {index} of a leak report could not be handled ({type(error).__name__})",
                    reporter=reporter.username,
                )
                return {"index": index, "error": "item-failed", "message": "this item could not be handled"}

    answers = await asyncio.gather(*(answer(i) for i in range(len(candidates))))
    if cut_off:
        intake.audit_guessing(reporter, len(cut_off), len(candidates))
    return web.json_response(list(answers), headers={"Cache-Control": "no-store"})


async def _read(request: web.Request) -> bytes:
    body = b""
    while len(body) <= MAX_BODY:  # at most one byte past the limit, then stop reading
        chunk = await request.content.read(MAX_BODY + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return body


def _refused(refused: BadReport, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response(
        {"error": refused.reason, "message": refused.message}, status=refused.status, headers=headers
    )
