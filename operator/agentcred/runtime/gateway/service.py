"""One call through a gateway, decided: the gateway authenticated, the calling pod identified
from the token it carries (as the token service accepts it), held to its budget, a DPoP-bound
token held to a proof by its key for this very request (RFC 9449: method, URL, the token, the
body when the gateway sends it and the proof covers it; each proof once) -- and so is the pod's
identity token when the pod holds a DPoP-bound value, to a proof by the pod's own key -- the call decided
(rules.gateway.decision), the credential attached on the way out, and one audit line.

Fails closed: anything unexpected is a refusal (503), never an allow.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...api.pods import PodTask
from ...api.policy_model import AgentCredentialPolicySpec
from ...api.times import utcnow
from ...platform import metrics
from ...platform.fingerprints import Fingerprints
from ...platform.proofs import ProofChecker
from ...platform.revocations import RevocationList
from ...rules.credentials import CredentialRecord
from ...rules.dpop import ALGORITHMS as DPOP_ALGORITHMS
from ...rules.dpop import TOKEN_TYPE as DPOP_SCHEME
from ...rules.dpop import Covered, ProofRefused, confirmation
from ...rules.gateway.decision import Verdict, decide
from ...rules.gateway.requests import CREDENTIAL_HEADERS, GatewayRequest, authorization_scheme, bearer, request_url
from ...rules.oauth import OAuthError
from ...sources.base import SourceUnavailable
from ..audit import AuditTrail
from ..tokens.callers import NotAuthenticated, RateLimiter, Throttled
from ..tokens.token_service import Caller, TokenService
from .upstream import GRANT, Attached, Upstream

log = logging.getLogger(__name__)

GATEWAY_HEADER = "x-agentcred-gateway"  # the gateway's own ServiceAccount token, "Bearer <token>"


@dataclass(frozen=True)
class Answer:
    """What the gateway is told: allow with the upstream headers to set and remove, or deny
    with the status, headers and body the agent gets."""

    allowed: bool
    status: int
    reason: str
    message: str
    upstream_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)  # on a refusal, to the agent
    body: bytes = b""


def _quoted(text: str) -> str:
    """RFC 6750 §3: error_description is printable ASCII without `"` and `\\`."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)[:400]


def refusal(
    status: int, reason: str, message: str, rule: str = "", retry_after: int | None = None, dpop: bool = False
) -> Answer:
    error = {401: "invalid_token", 400: "invalid_request", 429: "slow_down", 503: "temporarily_unavailable"}.get(
        status, "insufficient_scope" if status == 403 else "access_denied"
    )
    if dpop:  # RFC 9449 §7.1: a DPoP challenge, naming the algorithms a proof may use
        error = "invalid_dpop_proof"
    headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    if dpop:
        headers["WWW-Authenticate"] = (
            f'DPoP error="{error}", error_description="{_quoted(message)}", algs="{" ".join(DPOP_ALGORITHMS)}"'
        )
    elif status in (401, 403):
        headers["WWW-Authenticate"] = f'Bearer error="{error}", error_description="{_quoted(message)}"'
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    body = {"error": error, "error_description": _quoted(message), "reason": reason, "rule": rule or None}
    return Answer(False, status, reason, message, headers=headers, body=json.dumps(body).encode())


@dataclass
class GatewayService:
    tokens: TokenService
    policy: Callable[[str], AgentCredentialPolicySpec | None]
    revocations: RevocationList
    upstream: Upstream
    audit: AuditTrail
    gateways: frozenset[str]  # ServiceAccounts allowed to ask ("namespace/name")
    budget: RateLimiter  # calls per pod
    proofs: ProofChecker = field(default_factory=ProofChecker)  # DPoP proofs, each used once per pod
    now: Callable[[], dt.datetime] = utcnow
    _throttled: dict[str, tuple[float, int]] = field(default_factory=dict)

    async def gateway(self, authorization: str | None, peer: str) -> str | None:
        """The asking gateway's ServiceAccount (namespace/name), or None: not one allowed to ask.
        A refused credential costs the connection's address (Throttled past its budget), as a
        refused token does at the token endpoint."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            who = await self.tokens.reviews.identity(token.strip(), f"gateway:{peer}", self.tokens.by_source)
        except NotAuthenticated:
            return None
        name = f"{who.namespace}/{who.service_account}"
        return name if name in self.gateways else None

    async def check(
        self, request: GatewayRequest, contract: str, gateway_authorization: str | None, peer: str = ""
    ) -> Answer:
        started = time.perf_counter()
        facts: dict[str, Any] = {"contract": contract, "requestId": request.request_id or None}
        try:
            answer = await self._check(request, contract, gateway_authorization, peer, facts)
        except Throttled:
            answer = refusal(429, "throttled", "too many refused tokens from this address: slow down", "identity")
        except Exception:  # fail closed: a bug or an outage is a refusal, never an allow
            log.exception("gateway call not decided")
            answer = refusal(503, "error", "agentcred could not decide this call", "error")
        elapsed = time.perf_counter() - started
        metrics.gateway_latency.labels(contract).observe(elapsed)
        if facts.pop("_quiet", False):
            metrics.gateway_decisions.labels(contract, "deny", answer.reason).inc()
        else:
            self.audit.record(
                "gateway",
                decision="allow" if answer.allowed else "deny",
                reason=answer.reason,
                message=None if answer.allowed else answer.message,
                latencyMs=round(elapsed * 1000, 3),
                method=request.method,
                host=request.host[:256],
                path=request.path[:512],
                source=request.source or None,
                **facts,
            )
        return answer

    async def _check(
        self,
        request: GatewayRequest,
        contract: str,
        gateway_authorization: str | None,
        peer: str,
        facts: dict[str, Any],
    ) -> Answer:
        gateway = await self.gateway(gateway_authorization, peer)
        if gateway is None:
            facts["rule"] = "gateway"
            return refusal(
                403,
                "unknown-gateway",
                f"the caller is not a gateway agentcred answers: send its ServiceAccount token as {GATEWAY_HEADER}",
                "gateway",
            )
        facts["gateway"] = gateway
        doubt = self.tokens.unsure()
        if doubt is not None:  # a follower that cannot be sure what is revoked allows nothing
            facts["rule"] = "revocations"
            return refusal(503, "revocations-unsure", f"this replica cannot be sure what is revoked: {doubt}", "error")
        token = bearer(request.headers)
        if token is None:
            facts["rule"] = "identity"
            return refusal(
                401, "no-token", "send the pod's agentcred token or its identity token as a Bearer token", "identity"
            )

        def unauthenticated(text: str) -> OAuthError:
            return OAuthError("invalid_token", text, 401)

        def unacceptable(text: str) -> OAuthError:
            return OAuthError("access_denied", text, 403)

        try:
            # A pod's refused tokens cost the address the gateway reports for it (not the
            # gateway's own: one pod's garbage must not cut off every pod behind that gateway).
            source = f"via-gateway:{request.source or peer}"
            caller, task = await self.tokens.identify(token, unauthenticated, unacceptable, source)
        except OAuthError as refused:
            facts["rule"] = "identity"
            reason = "invalid-token" if refused.status == 401 else "pod-not-admitted"
            return refusal(refused.status, reason, refused.description, "identity")
        if caller.parent is not None and caller.parent["agentcred"].get("grant") == GRANT:
            # Handed to an upstream with a call: the upstream holds it, so it is no proof of the pod.
            facts["rule"] = "identity"
            return refusal(
                401,
                "invalid-token",
                "a token agentcred handed a gateway for an upstream is not the pod's identity",
                "identity",
            )
        facts.update(
            namespace=task.namespace, pod=task.name, podUID=task.uid, job=task.job, serviceAccount=task.service_account
        )
        if not self.budget.allow(task.uid):
            facts["rule"] = "budget"
            facts["_quiet"] = self._quiet(task.uid)
            return refusal(429, "budget", f"pod {task.name} calls too fast; slow down", "budget", retry_after=1)
        unproven = self._sender(request, token, caller, task.uid, facts)
        if unproven is None and caller.parent is None:
            unproven = await self._own_key(request, token, task, facts)
        if unproven is not None:
            return unproven
        now = self.now()
        verdict = decide(
            request,
            task,
            lambda name: self.tokens.view.credential(task.namespace, name),
            self.policy,
            lambda name: self.revocations.covers(task.uid, name, now),
            now,
        )
        self._describe(verdict, facts)
        if not verdict.allowed:
            return refusal(verdict.status, verdict.reason, verdict.message, verdict.rule)
        try:
            attached = await self.upstream.attach(verdict, task, now)
        except SourceUnavailable as unavailable:
            reason = "compromised" if unavailable.reason == "Compromised" else "source-unavailable"
            return refusal(403 if reason == "compromised" else 503, reason, unavailable.message, "source")
        self._attached(attached, facts)
        remove = tuple(sorted(CREDENTIAL_HEADERS - {h.lower() for h in attached.headers}))
        return Answer(True, 200, "allowed", verdict.message, attached.headers, remove)

    def _sender(
        self, request: GatewayRequest, token: str, caller: Caller, pod_uid: str, facts: dict[str, Any]
    ) -> Answer | None:
        """A DPoP-bound token is the pod's only with a proof by its key for this request; None: so."""
        bound = confirmation(caller.parent) if caller.parent is not None else None
        if bound is None:
            return None
        facts["jkt"] = bound
        proof = request.headers.get("dpop")
        try:
            if not proof:
                raise ProofRefused("dpop-missing", f"the token is DPoP-bound (key {bound}): send a DPoP proof with it")
            if authorization_scheme(request.headers).lower() != DPOP_SCHEME.lower():
                raise ProofRefused("dpop-wrong-scheme", "a DPoP-bound token is sent as 'Authorization: DPoP <token>'")
            body = None if request.body_truncated else request.body
            covered = Covered(request.method, request_url(request), access_token=token, body=body)
            self.proofs.check(proof, covered, pod_uid, bound_to=bound)
        except ProofRefused as refused:
            # Whoever holds a copy of the token (from a log, a transcript, this audit) is named by it.
            facts.update(rule="dpop", presentedFingerprint=Fingerprints(self.tokens.keyring)(token.encode()))
            assert caller.parent is not None
            facts["presentedTokenId"] = caller.parent.get("jti")
            return refusal(401, refused.reason, refused.message, "dpop", dpop=True)
        return None

    async def _own_key(
        self, request: GatewayRequest, token: str, task: PodTask, facts: dict[str, Any]
    ) -> Answer | None:
        """A pod's identity token, when the pod holds a DPoP-bound value, is the pod's only with
        a proof for this request by the key agentcred wrote into that pod; None: so, or unbound."""
        if not self.tokens.identity_bound_by(task):
            return None
        header = request.headers.get("dpop")
        try:
            proof = None
            if header:
                if authorization_scheme(request.headers).lower() != DPOP_SCHEME.lower():
                    raise ProofRefused(
                        "dpop-wrong-scheme", "a DPoP-bound identity token is sent as 'Authorization: DPoP <token>'"
                    )
                body = None if request.body_truncated else request.body
                covered = Covered(request.method, request_url(request), access_token=token, body=body)
                proof = self.proofs.check(header, covered, task.uid)
            bound_by = await self.tokens.prove_pod(task, proof)
        except ProofRefused as refused:
            # Whoever holds a copy of the identity token is named by its fingerprint, never by it.
            facts.update(rule="dpop", presentedFingerprint=Fingerprints(self.tokens.keyring)(token.encode()))
            return refusal(401, refused.reason, f"identity token: {refused.message}", "dpop", dpop=True)
        facts.update(jkt=proof.jkt if proof else None, identityBoundBy=list(bound_by))
        return None

    def _quiet(self, pod_uid: str) -> bool:
        """A flooding pod's refusals: one audit line a second (with the count), the rest counted."""
        now = time.monotonic()
        since, count = self._throttled.get(pod_uid, (0.0, 0))
        if now - since >= 1.0:
            self._throttled[pod_uid] = (now, 0)
            if len(self._throttled) > 10_000:
                self._throttled.clear()
            return False
        self._throttled[pod_uid] = (since, count + 1)
        return True

    @staticmethod
    def _describe(verdict: Verdict, facts: dict[str, Any]) -> None:
        record: CredentialRecord | None = verdict.record
        facts["rule"] = verdict.rule
        if record is not None and record.spec is not None:
            facts.update(
                credential=record.name,
                category=record.spec.category,
                route=verdict.route.name if verdict.route else None,
            )
        if verdict.derived is not None:
            if verdict.derived.intent is not None:
                facts["intent"] = verdict.derived.intent.as_dict()
            if verdict.derived.mcp is not None:
                facts["mcpMethod"] = str(verdict.derived.mcp.get("method"))[:64]

    @staticmethod
    def _attached(attached: Attached, facts: dict[str, Any]) -> None:
        if attached.token_id:
            facts["tokenId"] = attached.token_id
        if attached.fingerprint:
            facts["fingerprint"] = attached.fingerprint
