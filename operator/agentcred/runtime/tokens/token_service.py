"""The token service: an OAuth 2.0 authorization server whose only clients are admitted pods.

`token` answers the token endpoint's three grants -- token exchange (RFC 8693), JWT bearer
(RFC 7523 §2.1) and client credentials with a JWT client assertion (RFC 7523 §2.2) -- with an
RFC 9068 access token for one of the pod's minted credentials, narrowed to the intents asked
for. The pod proves who it is with its projected ServiceAccount token (reviewed by the API
server, bound to the pod) or with an agentcred token it holds (checked here); it must be
alive, admitted for the credential, still hold it, and the intents must fall inside the
credential's scope (deny wins). `introspect` (RFC 7662) tells allowed resource servers
whether a token is live; `revoke` (RFC 7009) lets a holder end a token early. Every grant and
every refusal is audited; a refusal is an `OAuthError` with the RFC's code.

Sender constraint (RFC 9449): a request with a `DPoP` proof gets a token bound to the proof's
key (`cnf.jkt`, `token_type: DPoP`); a credential with `dpop: required` gets no other kind; a
bound subject or actor token is used only with a proof by its own key, and what is exchanged
from it stays bound to that key. A pod that holds a DPoP-bound credential has its identity
token bound too: presented as subject, assertion or actor, it is accepted only with a proof by
the key agentcred wrote into that pod (`dpop.jwk`), so a copy of the token file alone buys
nothing. Workload identity federation (MCP's jwt-bearer profile): an assertion addressed to
the token endpoint (or the issuer) rather than to `agentcred` must carry a `jti` and is good
for one token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...api.labels import SERVICE_ACCOUNT_AUDIENCE
from ...api.pods import PodTask
from ...api.times import format_time, utcnow
from ...platform.fingerprints import Fingerprints
from ...platform.keys import KeyRing, NotOurs, decode_own, peek_claims
from ...platform.kube import ApiError
from ...platform.proofs import ProofChecker
from ...platform.replay import ReplayCache
from ...platform.revocations import EXPIRY_SKEW, MAX_TOKEN_ENTRIES_PER_POD, RevocationList
from ...rules.credentials import CredentialRecord
from ...rules.dpop import TOKEN_TYPE as DPOP_TOKEN_TYPE
from ...rules.dpop import Covered, Proof, ProofRefused, check_pod_key, confirmation, identity_bound_by
from ...rules.oauth import (
    ACCESS_TOKEN_TYPE,
    CLIENT_CREDENTIALS,
    JWT_BEARER,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    OAuthError,
    TokenRequest,
    granted_intents,
    invalid_request,
    parse_form,
    parse_token_request,
)
from ...rules.scope import EXCHANGE_MAX_TTL, Intent, evaluate, scope_covers
from ...sources.claims import Grant, credential_scope, service_account_subject, token_claims
from ...sources.jwt import JwtSource
from ..audit import AuditTrail
from ..view import ClusterView
from .callers import NotAuthenticated, RateLimiter, Reviewed, ReviewGate, Throttled
from .pod_keys import PodKeys

CLOCK_SKEW = dt.timedelta(seconds=30)
SCOPE_MS_PER_SECOND, SCOPE_MS_BURST = 250.0, 2000  # a quarter of the event loop per namespace
MAX_CHAIN = 4  # exchanges of exchanged tokens, deep
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Seconds a workload identity assertion may still live: its jti is remembered until it expires,
# so one that lived a year held its room in the replay memory for a year (RFC 7523 §3 lets a
# server refuse an expiry unreasonably far ahead). The kubelet's are 1 h at most by default.
ASSERTION_LIFETIME = 3600


@dataclass(frozen=True)
class Caller:
    """The pod a request speaks for, and what an agentcred subject token already limits."""

    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    parent: dict[str, Any] | None = None  # the claims of an agentcred subject token

    def facts(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "podName": self.pod_name,
            "podUID": self.pod_uid,
            "serviceAccount": self.service_account,
        }


def _refusal(grant_type: str, authenticated: bool) -> Callable[[str], OAuthError]:
    """The error each grant's RFC gives when the presented identity fails: before the caller is
    authenticated (`authenticated=False`) or after, on policy."""
    if grant_type == CLIENT_CREDENTIALS:
        if authenticated:
            return lambda text: OAuthError("unauthorized_client", text)
        return lambda text: OAuthError("invalid_client", text, status=401)
    if grant_type == JWT_BEARER:
        return lambda text: OAuthError("invalid_grant", text)
    return invalid_request  # RFC 8693 §2.2.2: an invalid or unacceptable subject token


@dataclass
class TokenService:
    reviews: ReviewGate
    view: ClusterView
    # Whether a pod's binding is its own (a copy of another pod's admission is sealed too).
    owns_binding: Callable[[PodTask], bool]
    revocations: RevocationList
    minted: JwtSource  # signs what is issued here
    keyring: Callable[[], KeyRing]
    issuer: str
    audit: AuditTrail
    limiter: RateLimiter  # per pod, after authentication
    by_source: RateLimiter  # refused tokens per client address, checked before any review
    introspectors: frozenset[str] = field(default_factory=frozenset)  # ServiceAccount usernames
    # Milliseconds of scope matching per namespace: a share of the event loop, and a burst.
    scope_time: RateLimiter = field(default_factory=lambda: RateLimiter(SCOPE_MS_PER_SECOND, SCOPE_MS_BURST))
    # Why this replica cannot be sure its revocation list is current (None: it can): a
    # follower whose leader has not saved for a while issues nothing rather than a revoked pod's token.
    unsure: Callable[[], str | None] = lambda: None
    proofs: ProofChecker = field(default_factory=ProofChecker)  # DPoP proofs, each used once
    # Per pod, per namespace (one tenant cannot fill the memory every tenant shares), in total.
    assertions: ReplayCache = field(default_factory=lambda: ReplayCache(per_holder=256, total=65536, per_group=4096))
    # The DPoP keys agentcred made for each pod; None: none are known, so a pod whose identity
    # is bound is refused.
    pod_keys: PodKeys | None = None

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/oauth2/token"

    # -- the token endpoint --------------------------------------------------------------

    async def token(
        self,
        content_type: str | None,
        body: bytes,
        authorization: str | None = None,
        source: str = "",
        dpop: str | None = None,
    ) -> dict[str, Any]:
        """The token response for a valid request; OAuthError otherwise. `dpop`: the request's
        DPoP header (several joined with commas, which is refused)."""
        # An address that keeps sending tokens the API server refuses is cut off before any
        # TokenReview; valid tokens cost nothing here, so a shared gateway address is not.
        if not self.by_source.allow(source, take=False) and not self.reviews.busy(source):
            raise _throttled()
        facts: dict[str, Any] = {}
        try:
            request = parse_token_request(parse_form(content_type, body), authorization)
            facts["grant"] = request.grant_type
            what = {TOKEN_EXCHANGE: "subject_token", JWT_BEARER: "assertion"}.get(
                request.grant_type, "client_assertion"
            )
            subject, once = await self._subject(request, source)
            facts.update(subject.facts())
            # Counted before the actor token is reviewed: every request costs the pod, so one
            # valid identity sending fresh garbage actor tokens cannot buy TokenReviews.
            if not self.limiter.allow(subject.pod_uid):
                raise OAuthError("temporarily_unavailable", f"pod {subject.pod_name} asks too fast; slow down", 429, 1)
            proof = self._proof(request, subject, dpop, facts)
            if subject.parent is None:  # the pod's identity token, bound if the pod holds a bound value
                task = self.live_task(subject, _refusal(request.grant_type, authenticated=True))
                await self._own_key(task, proof, request.subject_token, facts, what)
            if once is not None:  # spent only once the pod's own key (if its identity is bound) has spoken
                once()
            act = await self._actor(request, subject, source, proof, facts)
            return await self._issue(request, subject, act, facts, proof)
        except OAuthError as refused:
            self.audit.record("deny", reason=refused.error, message=refused.description, **facts)
            raise

    async def _subject(self, request: TokenRequest, source: str) -> tuple[Caller, Callable[[], None] | None]:
        """Who the request speaks for; a token that does not say costs the client address one
        of its refused tokens (a ServiceAccount token's, before it is reviewed). And, for a
        workload identity assertion, what spends it: a copy refused for want of the pod's key
        must not use up the pod's own assertion."""
        once: Callable[[], None] | None = None
        unauthenticated = _refusal(request.grant_type, authenticated=False)
        what = {TOKEN_EXCHANGE: "subject_token", JWT_BEARER: "assertion"}.get(request.grant_type, "client_assertion")
        if request.subject_token_type == ACCESS_TOKEN_TYPE:
            try:
                claims = self._live_own_token(request.subject_token, what, unauthenticated)
            except OAuthError:
                self.by_source.allow(source)
                raise
            issued = claims["agentcred"]
            namespace, _, service_account = (
                str(claims.get("sub", "")).removeprefix("system:serviceaccount:").partition(":")
            )
            subject = Caller(namespace, service_account, str(issued["pod"]), str(issued["podUID"]), claims)
        else:
            try:
                who = await self.reviews.identity(request.subject_token, source, self.by_source)
            except Throttled:
                raise _throttled() from None
            except NotAuthenticated as error:
                raise unauthenticated(f"{what}: {error}") from None
            if who.pod_name is None or who.pod_uid is None:
                raise unauthenticated(f"{what} is not bound to a pod: send the pod's projected ServiceAccount token")
            # Addressed to this token endpoint (or the issuer) rather than to `agentcred`, as the
            # API server reports the audiences it matched: a federation assertion, single-use.
            if request.grant_type == JWT_BEARER and who.audiences and SERVICE_ACCOUNT_AUDIENCE not in who.audiences:
                once = functools.partial(
                    self._federated_once,
                    request.subject_token,
                    who.token_id,
                    who.pod_uid,
                    who.namespace,
                    unauthenticated,
                )
            subject = Caller(who.namespace, who.service_account, who.pod_name, who.pod_uid)
        if request.client_id is not None and request.client_id != service_account_subject(
            subject.namespace, subject.service_account
        ):
            raise OAuthError(
                "invalid_client",
                f"client_id {request.client_id} is not the caller: the pod's client_id is its ServiceAccount "
                f"{service_account_subject(subject.namespace, subject.service_account)}",
                status=401,
            )
        return subject, once

    def _federated_once(
        self, assertion: str, token_id: str | None, pod_uid: str, namespace: str, refuse: Callable[[str], OAuthError]
    ) -> None:
        """Workload identity federation: an assertion addressed to this token endpoint (or the
        issuer) is good for one token, named by its `jti` (as the API server reports it), and
        lives at most ASSERTION_LIFETIME (its jti is remembered until it expires)."""
        if token_id is None:
            raise refuse(
                f"assertion is addressed to {self.token_endpoint} but carries no jti: a workload identity "
                "assertion must be single-use (use a cluster that puts jti in ServiceAccount tokens)"
            )
        now = utcnow().timestamp()
        peeked = peek_claims(assertion)
        exp = peeked[1].get("exp") if peeked is not None else None
        if not isinstance(exp, int) or isinstance(exp, bool):
            exp = int(now) + ASSERTION_LIFETIME  # not a JWT (another authenticator's): kept that long
        if exp > now + ASSERTION_LIFETIME + CLOCK_SKEW.total_seconds():
            raise refuse(
                f"assertion addressed to {self.token_endpoint} expires more than {ASSERTION_LIFETIME} s from now: "
                f"a workload identity assertion lives at most {ASSERTION_LIFETIME} s (expirationSeconds of its "
                "projected token)"
            )
        seen = self.assertions.use(pod_uid, token_id, float(exp), now, group=namespace)
        if seen == "replayed":
            raise refuse(
                f"assertion {token_id[:64]} was used before: an assertion addressed to the token endpoint is good "
                "for one token (the kubelet rotates the pod's token; exchange the token you were given instead)"
            )
        if seen == "full":
            raise OAuthError(
                "temporarily_unavailable",
                f"too many assertions from this pod or namespace {namespace} remembered; slow down",
                429,
                1,
            )

    def _proof(self, request: TokenRequest, subject: Caller, header: str | None, facts: dict[str, Any]) -> Proof | None:
        """The request's DPoP proof, checked: for the token endpoint, never seen before from this
        pod, and by the key a bound subject token names. A bound subject token without one is refused."""
        bound = confirmation(subject.parent) if subject.parent is not None else None
        if bound is not None:
            facts["subjectTokenId"] = subject.parent["jti"] if subject.parent else None

        def refused_for(reason: str) -> None:
            # Whoever presented a copy of a bound token is named in the audit by its fingerprint.
            facts["dpop"] = reason
            if bound is not None:
                facts["fingerprint"] = Fingerprints(self.keyring)(request.subject_token.encode())

        if header is None:
            if bound is not None:
                refused_for("dpop-missing")
                raise self._unproven(
                    f"the subject token is DPoP-bound (key {bound}): send a DPoP proof signed by that key"
                )
            return None
        try:
            proof = self.proofs.check(header, Covered("POST", self.token_endpoint), subject.pod_uid, bound)
        except ProofRefused as refused:
            refused_for(refused.reason)
            if refused.reason == "dpop-nonce":
                raise OAuthError("use_dpop_nonce", refused.message, headers=self.nonce_header()) from None
            raise self._unproven(refused.message) from None
        facts["jkt"] = proof.jkt
        return proof

    def identity_bound_by(self, task: PodTask) -> tuple[str, ...]:
        """The pod's credentials that bind its identity token to its own DPoP key (rules.dpop)."""
        records = ((name, self.view.credential(task.namespace, name)) for name in task.credentials)
        return identity_bound_by((name, record.spec if record is not None else None) for name, record in records)

    async def prove_pod(self, task: PodTask, proof: Proof | None) -> tuple[str, ...]:
        """ProofRefused unless the pod's identity token may be accepted with `proof` (checked
        already): no proof needed (the pod holds no bound value), or one by the pod's own key.
        The credentials that bind it, when they do."""
        bound_by = self.identity_bound_by(task)
        if not bound_by:
            return ()
        keys: tuple[str, ...] = ()
        if proof is not None and self.pod_keys is not None:
            keys = await self.pod_keys.of(task, utcnow())
            if proof.jkt not in keys:  # renewed since a follower last read them?
                keys = await self.pod_keys.of(task, utcnow(), fresh=True)
        check_pod_key(proof.jkt if proof is not None else None, keys, bound_by)
        return bound_by

    async def _own_key(
        self, task: PodTask, proof: Proof | None, token: str, facts: dict[str, Any], what: str
    ) -> tuple[str, ...]:
        """A pod's identity token (`what`) is accepted only with a proof by that pod's key, when
        it is bound; the credentials that bind it."""
        try:
            bound_by = await self.prove_pod(task, proof)
        except ProofRefused as refused:
            # Whoever presented a copy of the identity token is named by its fingerprint, never by it.
            facts.update(dpop=refused.reason, fingerprint=Fingerprints(self.keyring)(token.encode()))
            raise self._unproven(f"{what}: {refused.message}") from None
        except ApiError as error:
            raise OAuthError(
                "temporarily_unavailable", f"the DPoP keys of pod {task.name} cannot be read now: {error}", 503, 2
            ) from None
        if bound_by:
            facts["identityBoundBy"] = list(bound_by)
        return bound_by

    def _spent_by_actor(self, proof: Proof, actor_uid: str, subject: Caller, token: str, facts: dict[str, Any]) -> None:
        """A proof that vouches for an actor pod is that pod's too, used once: else one captured
        from the pod's own request (an access log) vouched for it again under another subject."""
        if actor_uid == subject.pod_uid:
            return  # spent by this very pod as the subject's
        try:
            self.proofs.spend(proof, actor_uid)
        except ProofRefused as refused:
            # Whoever presented a copy of the actor token is named by its fingerprint, never by it.
            facts.update(dpop=refused.reason, fingerprint=Fingerprints(self.keyring)(token.encode()))
            raise self._unproven(f"actor_token: {refused.message}") from None

    def nonce_header(self) -> dict[str, str]:
        """The DPoP-Nonce header to send with an answer, when nonces are asked for (RFC 9449 §8)."""
        nonce = self.proofs.nonce()
        return {"DPoP-Nonce": nonce} if nonce else {}

    def _unproven(self, message: str) -> OAuthError:
        return OAuthError("invalid_dpop_proof", message, headers=self.nonce_header())

    def _live_own_token(self, token: str, what: str, refuse: Callable[[str], OAuthError]) -> dict[str, Any]:
        """The claims of a live, unrevoked token this issuer signed, or a refusal naming `what`."""
        try:
            _, claims = decode_own(token, self.keyring())
        except NotOurs as error:
            raise refuse(f"{what} was not issued by agentcred {self.issuer}: {error}") from None
        problem = self._inactive(claims, utcnow())
        if problem is not None:
            raise refuse(f"{what} {problem}")
        return claims

    def _inactive(self, claims: dict[str, Any], now: dt.datetime) -> str | None:
        """Why a token signed by our keys is not live, or None."""
        issued = claims.get("agentcred")
        if claims.get("iss") != self.issuer:
            return f"was issued by {claims.get('iss')}, not {self.issuer}"
        if not isinstance(issued, dict) or not all(
            isinstance(issued.get(name), str) for name in ("pod", "podUID", "credential", "namespace")
        ):
            return "names no pod and credential"
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            return "has no expiry or issue time"
        if dt.datetime.fromtimestamp(exp, dt.timezone.utc) <= now:
            return f"expired at {format_time(dt.datetime.fromtimestamp(exp, dt.timezone.utc))}"
        lineage = (str(claims.get("jti") or ""), *[str(i) for i in issued.get("derivedFrom") or []])
        if self.revocations.covers(
            issued["podUID"], issued["credential"], dt.datetime.fromtimestamp(iat, dt.timezone.utc), lineage
        ):
            return "was revoked"
        task = self.view.pod_by_name(issued["namespace"], issued["pod"])
        if task is None or task.uid != issued["podUID"] or task.end_reason is not None:
            return f"belongs to pod {issued['pod']}, which has ended"
        return None

    # -- who is calling, for the token endpoint and for gateways ----------------------------

    async def identify(
        self,
        token: str,
        unauthenticated: Callable[[str], OAuthError],
        unacceptable: Callable[[str], OAuthError],
        source: str,
    ) -> tuple[Caller, PodTask]:
        """The pod presenting `token` -- an agentcred token it holds, or its projected identity
        token -- and its task, alive and admitted; else the refusal those callables make."""
        try:
            decode_own(token, self.keyring())
            own = True
        except NotOurs:
            own = False
        if own:
            claims = self._live_own_token(token, "the token", unauthenticated)
            issued = claims["agentcred"]
            namespace, _, service_account = (
                str(claims.get("sub", "")).removeprefix("system:serviceaccount:").partition(":")
            )
            subject = Caller(namespace, service_account, str(issued["pod"]), str(issued["podUID"]), claims)
        else:
            try:
                who = await self.reviews.identity(token, source, self.by_source)
            except NotAuthenticated as error:
                raise unauthenticated(
                    f"the token is not an agentcred token, nor one the API server accepts: {error}"
                ) from None
            if who.pod_name is None or who.pod_uid is None:
                raise unauthenticated("the token is not bound to a pod: send the pod's projected ServiceAccount token")
            subject = Caller(who.namespace, who.service_account, who.pod_name, who.pod_uid)
        return subject, self.live_task(subject, unacceptable)

    def live_task(self, subject: Caller, unacceptable: Callable[[str], OAuthError]) -> PodTask:
        """The task of the pod a caller speaks for: admitted by agentcred, alive, its own binding, given its values."""
        task = self.view.pod_by_name(subject.namespace, subject.pod_name)
        if task is None or task.uid != subject.pod_uid:
            raise unacceptable(f"pod {subject.pod_name} in {subject.namespace} was not admitted by agentcred")
        if task.end_reason is not None:
            raise unacceptable(f"pod {subject.pod_name} has ended ({task.end_reason})")
        # A copy's creator can remove its gate; the gate alone does not say the pod is served.
        if not self.owns_binding(task):
            raise unacceptable(
                f"pod {subject.pod_name} carries the admission of another pod (binding {task.binding}): "
                "it is given nothing"
            )
        if task.gated:
            raise unacceptable(f"pod {subject.pod_name} has not been given its credentials yet")
        return task

    async def _issue(
        self,
        request: TokenRequest,
        subject: Caller,
        act: dict[str, Any] | None,
        facts: dict[str, Any],
        proof: Proof | None = None,
    ) -> dict[str, Any]:
        unacceptable = _refusal(request.grant_type, authenticated=True)
        doubt = self.unsure()
        if doubt is not None:
            raise OAuthError(
                "temporarily_unavailable", f"this replica cannot be sure which tokens are revoked: {doubt}", 503, 2
            )
        task = self.live_task(subject, unacceptable)
        record, audiences = self._target(request, task, subject)
        facts["credential"] = record.name
        spec = record.spec
        assert spec is not None and spec.source.jwt is not None
        now = utcnow()
        if not record.ready:
            raise unacceptable(f"AgentCredential {record.name} is not Ready")
        if not record.allows(task.service_account):
            raise unacceptable(f"ServiceAccount {task.service_account} is no longer a subject of {record.name}")
        # The shared revocation list, not this replica's memory: what any replica revoked counts.
        if self.revocations.covers(task.uid, record.name, now):
            raise unacceptable(f"{record.name} was revoked for pod {subject.pod_name}")
        lifetime_end = (task.admitted_at or now) + spec.max_lifetime_delta
        if now >= lifetime_end:
            raise unacceptable(f"pod {subject.pod_name} reached maxLifetime {spec.max_lifetime} of {record.name}")
        if proof is None and spec.source.jwt.dpop_required:
            facts["dpop"] = "dpop-missing"
            raise self._unproven(
                f"AgentCredential {record.name} requires sender-constrained tokens: send a DPoP proof (RFC 9449) "
                f"for POST {self.token_endpoint}"
            )
        grant = await self._grant(request, record, audiences, subject, act)
        if proof is not None:
            grant = dataclasses.replace(grant, jkt=proof.jkt)
        now = utcnow()
        if self.revocations.covers(task.uid, record.name, now):  # revoked while its intents were judged
            raise unacceptable(f"{record.name} was revoked for pod {subject.pod_name}")
        expires = min(now + EXCHANGE_MAX_TTL, now + spec.ttl_delta, lifetime_end)
        if subject.parent is not None:  # never outlive the token it came from
            expires = min(expires, dt.datetime.fromtimestamp(subject.parent["exp"], dt.timezone.utc))
        token_id = secrets.token_urlsafe(16)
        claims = token_claims(
            issuer=self.issuer,
            record=record,
            task=task,
            issued_at=now,
            expires_at=expires,
            token_id=token_id,
            grant=grant,
        )
        token = self.minted.sign(record, claims)
        self.audit.record(
            "exchange",
            category=spec.category,
            owner=spec.owner,
            job=task.job,
            tokenId=token_id,
            expiresAt=format_time(expires),
            audience=list(grant.audiences),
            intents=[r.intent.as_dict() for r in request.requested] or None,
            actor=(grant.act or {}).get("sub"),
            derivedFrom=list(grant.derived_from) or None,
            **facts,
        )
        response: dict[str, Any] = {
            "access_token": token,
            "token_type": DPOP_TOKEN_TYPE if grant.jkt else "Bearer",
            "expires_in": max(1, int((expires - now).total_seconds())),
        }
        if request.grant_type == TOKEN_EXCHANGE:
            response["issued_token_type"] = request.requested_token_type or ACCESS_TOKEN_TYPE
        if grant.scope_strings:
            response["scope"] = " ".join(grant.scope_strings)
        if grant.details:
            response["authorization_details"] = list(grant.details)
        return response

    def _target(
        self, request: TokenRequest, task: PodTask, subject: Caller
    ) -> tuple[CredentialRecord, tuple[str, ...]]:
        """The one minted credential of the pod the request is for, and the token's audiences."""
        parent = subject.parent
        minted: list[CredentialRecord] = []
        for name in task.credentials:
            record = self.view.credential(task.namespace, name)
            if record is not None and record.spec is not None and record.spec.source.jwt is not None:
                if parent is None or parent["agentcred"]["credential"] == name:
                    minted.append(record)
        if not minted:
            raise OAuthError("invalid_target", f"pod {task.name} holds no minted (jwt) credential to issue a token for")
        parent_audiences = _audiences(parent) if parent is not None else None
        if not request.targets:
            if parent_audiences is not None:
                return minted[0], parent_audiences
            if len(minted) > 1:
                names = ", ".join(sorted(r.name for r in minted))
                raise OAuthError(
                    "invalid_target", f"pod {task.name} holds several minted credentials ({names}): name a resource"
                )
            assert minted[0].spec is not None and minted[0].spec.source.jwt is not None
            return minted[0], tuple(minted[0].spec.source.jwt.audiences)
        matching = [r for r in minted if all(t in _credential_audiences(r) for t in request.targets)]
        wanted = ", ".join(request.targets)
        if not matching:
            offered = "; ".join(f"{r.name}: {', '.join(_credential_audiences(r))}" for r in minted)
            raise OAuthError(
                "invalid_target", f"no credential of pod {task.name} is for {wanted} (its audiences: {offered})"
            )
        if len(matching) > 1:
            names = ", ".join(sorted(r.name for r in matching))
            raise OAuthError("invalid_target", f"{wanted} is an audience of several credentials ({names})")
        if parent_audiences is not None and not set(request.targets) <= set(parent_audiences):
            raise OAuthError(
                "invalid_target", f"the subject token is for {', '.join(parent_audiences)}; it cannot widen to {wanted}"
            )
        return matching[0], request.targets

    async def _grant(
        self,
        request: TokenRequest,
        record: CredentialRecord,
        audiences: tuple[str, ...],
        subject: Caller,
        act: dict[str, Any] | None,
    ) -> Grant:
        """What the token will allow: the intents asked for, each inside the credential's scope
        and inside the subject token's own grant; or, asking for none, what the subject had.

        Matching intents against a tenant's patterns is the tenant's cost, on the event loop every
        tenant shares: each intent is judged on its own turn of the loop (other requests go
        between), and the time it takes is spent from the namespace's share (`scope_time`); a
        namespace that has used its share is told to slow down. Judged in one go and without a
        share, costly patterns x 64 intents from 100 pods raised another tenant's token latency
        from 6 ms to 10 s."""
        spec = record.spec
        assert spec is not None
        parent = subject.parent
        parent_intents = granted_intents(parent) if parent is not None else None
        if request.requested and not self.scope_time.allow(subject.namespace, take=False):
            raise OAuthError(
                "temporarily_unavailable",
                f"namespace {subject.namespace} has used its share of scope checks; slow down",
                429,
                1,
            )
        for requested in request.requested:
            error = "invalid_scope" if requested.via == "scope" else "invalid_authorization_details"
            began = time.thread_time()
            try:
                decision = evaluate(spec.scope, requested.intent)
                inside = decision.allowed and (parent is None or _within(parent, parent_intents, requested.intent))
            finally:
                self.scope_time.spend(subject.namespace, (time.thread_time() - began) * 1000)
            if not decision.allowed:
                raise OAuthError(error, decision.message)
            if not inside:
                raise OAuthError(error, f"{_describe(requested.intent)} is outside the subject token's grant")
            await asyncio.sleep(0)  # let other requests through between intents
        lineage: tuple[str, ...] = ()
        if parent is not None:
            lineage = (*[str(i) for i in parent["agentcred"].get("derivedFrom") or []], str(parent["jti"]))
            if len(lineage) > MAX_CHAIN:
                raise invalid_request(f"the subject token is {len(lineage)} exchanges deep; at most {MAX_CHAIN}")
        if request.narrowed:
            return Grant(
                audiences,
                scope_strings=request.scope,
                details=request.details,
                act=act,
                derived_from=lineage,
                grant_type=request.grant_type,
            )
        if parent is not None:  # nothing asked for: what the subject token had, no more
            details = parent.get("authorization_details")
            return Grant(
                audiences,
                scope=parent["agentcred"].get("scope"),
                scope_strings=tuple(str(parent.get("scope") or "").split()),
                details=tuple(details) if isinstance(details, list) else (),
                act=act,
                derived_from=lineage,
                grant_type=request.grant_type,
            )
        return Grant(audiences, scope=credential_scope(record), act=act, grant_type=request.grant_type)

    async def _actor(
        self,
        request: TokenRequest,
        subject: Caller,
        source: str = "",
        proof: Proof | None = None,
        facts: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The `act` claim (RFC 8693 §4.1): the actor presented now -- a ServiceAccount, or the
        pod holding an agentcred token -- with whoever acted before nested inside it."""
        parent = subject.parent
        facts = facts if facts is not None else {}
        before = parent.get("act") if parent is not None else None
        if request.actor_token is None:
            return before if isinstance(before, dict) else None
        act: dict[str, Any]
        if request.actor_token_type == JWT_TOKEN_TYPE:
            try:
                who = await self.reviews.identity(request.actor_token, source, self.by_source)
            except Throttled:
                raise _throttled() from None
            except NotAuthenticated as error:  # the address paid, as for a subject
                raise invalid_request(f"actor_token: {error}") from None
            act = {"sub": who.username}
            if who.pod_name is not None:
                act["agentcred"] = {"namespace": who.namespace, "podName": who.pod_name, "podUID": who.pod_uid}
                # An agentcred pod's identity token acts only with a proof by that pod's key, if bound.
                actor = self.view.pod_by_name(who.namespace, who.pod_name)
                if actor is not None and actor.uid == who.pod_uid:
                    bound_by = await self._own_key(actor, proof, request.actor_token, facts, "actor_token")
                    if bound_by and proof is not None:
                        self._spent_by_actor(proof, actor.uid, subject, request.actor_token, facts)
        else:
            claims = self._live_own_token(request.actor_token, "actor_token", invalid_request)
            bound = confirmation(claims)
            if bound is not None and (proof is None or proof.jkt != bound):
                raise self._unproven(
                    f"the actor token is DPoP-bound (key {bound}): send a DPoP proof signed by that key"
                )
            if bound is not None and proof is not None:
                self._spent_by_actor(proof, str(claims["agentcred"]["podUID"]), subject, request.actor_token, facts)
            act = {"sub": claims["sub"], "agentcred": _who(claims)}
            if isinstance(claims.get("act"), dict):
                act["act"] = claims["act"]
        if isinstance(before, dict) and "act" not in act:
            act["act"] = before
        return act

    # -- introspection and revocation -------------------------------------------------------

    async def caller(self, authorization: str | None, source: str) -> Reviewed:
        """A resource server allowed to introspect, by its ServiceAccount token."""
        if not self.by_source.allow(source, take=False) and not self.reviews.busy(source):
            raise _throttled()
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise OAuthError("invalid_client", "authenticate with 'Authorization: Bearer <ServiceAccount token>'", 401)
        try:
            who = await self.reviews.identity(token.strip(), source, self.by_source)
        except Throttled:
            raise _throttled() from None
        except NotAuthenticated as error:
            raise OAuthError("invalid_client", str(error), 401) from None
        if (
            who.username not in self.introspectors
            and f"{who.namespace}/{who.service_account}" not in self.introspectors
        ):
            self.audit.record(
                "deny", reason="invalid_client", message="not an allowed introspection caller", caller=who.username
            )
            raise OAuthError("invalid_client", f"{who.username} is not allowed to introspect tokens", 401)
        return who

    async def introspect(
        self, content_type: str | None, body: bytes, authorization: str | None, source: str = ""
    ) -> dict[str, Any]:
        await self.caller(authorization, source)
        token = _required_token(parse_form(content_type, body))
        try:
            _, claims = decode_own(token, self.keyring())
        except NotOurs:
            return {"active": False}
        now = utcnow()
        nbf = claims.get("nbf")
        if self._inactive(claims, now) is not None or (
            isinstance(nbf, int) and dt.datetime.fromtimestamp(nbf, dt.timezone.utc) > now + CLOCK_SKEW
        ):
            return {"active": False}
        # RFC 9449 §6.2: a bound token's `cnf` is in the answer (it is among the claims).
        return {"active": True, "token_type": DPOP_TOKEN_TYPE if confirmation(claims) else "Bearer", **claims}

    def revoke(self, content_type: str | None, body: bytes) -> None:
        """RFC 7009: the holder of a token ends it (and every token exchanged from it). A token
        that is not ours, already expired or unknown is answered the same way: done."""
        token = _required_token(parse_form(content_type, body))
        try:
            _, claims = decode_own(token, self.keyring())
        except NotOurs:
            return
        issued, jti, exp = claims.get("agentcred"), claims.get("jti"), claims.get("exp")
        if claims.get("iss") != self.issuer or not isinstance(issued, dict) or not isinstance(jti, str):
            return
        if not isinstance(exp, int) or not isinstance(issued.get("podUID"), str):
            return
        until = dt.datetime.fromtimestamp(exp, dt.timezone.utc)  # the list keeps it EXPIRY_SKEW longer
        now = utcnow()
        if until + EXPIRY_SKEW <= now:
            return
        namespace = str(issued.get("namespace") or "")
        if not self.revocations.revoke_token(issued["podUID"], str(issued.get("credential")), jti, until, namespace):
            # One pod must not fill its shard of the list, nor one tenant the list (RFC 7009
            # §2.2.1 allows a 503): the token still lapses at its expiry, at most 5 minutes away
            # for an exchanged one.
            room = self.revocations.token_room_at(issued["podUID"]) or now
            held = (
                f"pod {issued.get('pod')} already has {MAX_TOKEN_ENTRIES_PER_POD} revoked tokens"
                if not self.revocations.over_budget(namespace, holders=True)
                else f"namespace {namespace} already has {self.revocations.budget} tokens revoked by their holders"
            )
            message = (
                f"{held} that have not expired; try again when the first expires, or let this one expire at "
                f"{format_time(until)}"
            )
            self.audit.record("deny", reason="revocation-limit", message=message, tokenId=jti, **_who(claims))
            raise OAuthError("temporarily_unavailable", message, 503, max(1, int((room - now).total_seconds()) + 1))
        self.audit.record(
            "revoke-token", tokenId=jti, credential=issued.get("credential"), reason="holder", **_who(claims)
        )


def _throttled() -> OAuthError:
    return OAuthError("temporarily_unavailable", "too many refused tokens from this address", 429, 1)


def _required_token(form: dict[str, list[str]]) -> str:
    values = form.get("token")
    if not values:
        raise invalid_request("token is missing: send the token to look at")
    return values[0]


def _who(claims: dict[str, Any]) -> dict[str, Any]:
    issued = claims.get("agentcred") or {}
    return {"namespace": issued.get("namespace"), "podName": issued.get("pod"), "podUID": issued.get("podUID")}


def _audiences(claims: dict[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud")
    return (aud,) if isinstance(aud, str) else tuple(str(a) for a in aud or [])


def _credential_audiences(record: CredentialRecord) -> tuple[str, ...]:
    assert record.spec is not None and record.spec.source.jwt is not None
    return tuple(record.spec.source.jwt.audiences)


def _within(parent: dict[str, Any], parent_intents: list[Intent] | None, intent: Intent) -> bool:
    """Is the intent inside what the subject token grants (its intents, or its scope)?"""
    if parent_intents is not None:
        return intent in parent_intents
    return scope_covers(parent["agentcred"].get("scope") or {}, intent).allowed


def _describe(intent: Intent) -> str:
    return f"tool {intent.tool!r}, action {intent.action!r}, resource {intent.resource!r}"
