"""Trace a suspected value to whose it is: credential, owner, namespace, pod, Job,
ServiceAccount, when it was issued, until when, and whether it is live, revoked, expired or
superseded by a renewal.

A minted (or exchanged) token is recognised by its signature against the key ring: its claims
then say whose it is, and the revocation list and its pod's bookkeeping say its state. A token
that merely names our issuer, signed by no key of ours, is "not-ours". Any other value
(`webhook`, static `secretRef` copies) is found by keyed fingerprint in the live bookkeeping --
never by reading values -- under every fingerprint key still kept. Everything here is a
dictionary lookup on the leader's memory: no call to the API server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...api.fingerprints import PATTERN, SHORT_PATTERN, is_fingerprint, short
from ...api.projection import IssuedValue, ProjectionState
from ...api.times import format_time, utcnow
from ...platform.fingerprints import Fingerprints
from ...platform.keys import KeyRing, NotOurs, decode_own, peek_claims
from ...platform.revocations import RevocationList
from ...rules.credentials import CredentialRecord
from ...rules.leaks import Candidate, Provenance, State, token_state
from ..gateway.upstream import Handed
from ..store import ProjectionStore
from ..view import ClusterView


@dataclass(frozen=True)
class Holder:
    """One place a traced value was issued to."""

    namespace: str
    credential: str
    kind: str  # minted, exchanged, webhook, secretRef
    state: State
    pod: str | None
    pod_uid: str | None
    job: str | None
    service_account: str | None
    owner: str | None
    category: str | None
    issued_at: dt.datetime | None
    expires_at: dt.datetime | None
    token_id: str | None = None
    fingerprint: str | None = None
    key: str | None = None  # the projection that holds the credential now, if the pod lives on

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "credential": self.credential,
            "kind": self.kind,
            "state": self.state,
            "category": self.category,
            "owner": self.owner,
            "pod": self.pod,
            "podUID": self.pod_uid,
            "job": self.job,
            "serviceAccount": self.service_account,
            "issuedAt": format_time(self.issued_at) if self.issued_at else None,
            "expiresAt": format_time(self.expires_at) if self.expires_at else None,
            "tokenId": self.token_id,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class Trace:
    verdict: Provenance
    fingerprint: str | None  # of the reported value (current key), or the reference given
    holders: tuple[Holder, ...] = ()
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "issuedByAgentcred": self.verdict == "ours",
            "fingerprint": short(self.fingerprint) if self.fingerprint else None,
            "why": self.why or None,
            "holders": [holder.to_json() for holder in self.holders],
        }


@dataclass
class Tracer:
    keyring: Callable[[], KeyRing]
    issuer: str
    fingerprints: Fingerprints
    store: ProjectionStore
    revocations: RevocationList
    view: ClusterView
    now: Callable[[], dt.datetime] = field(default=utcnow)
    # Static values handed to gateways (never in any pod), by fingerprint.
    handed: Callable[[str], list[Handed]] = field(default=lambda fingerprint: [])

    def trace(self, candidate: Candidate) -> Trace:
        if candidate.token is not None:
            return self.trace_value(candidate.token)
        reference = candidate.fingerprint or candidate.token_id or ""
        return self.trace_reference(reference)

    def trace_value(self, text: str) -> Trace:
        stripped = text.strip()
        try:
            claims: dict[str, Any] | None = decode_own(stripped, self.keyring())[1]
        except NotOurs:
            claims = None
        value_fingerprints = self.fingerprints.every(text.encode())
        if stripped != text:  # pasted with a newline: try both, the value may have either
            value_fingerprints += self.fingerprints.every(stripped.encode())
        mine = value_fingerprints[0]
        if claims is not None and isinstance(claims.get("agentcred"), dict):
            return Trace("ours", mine, (self._minted(claims),))
        holders = self._referenced(value_fingerprints)
        if holders:
            return Trace("ours", mine, holders)
        peeked = peek_claims(stripped)
        if peeked is not None and (peeked[1].get("iss") == self.issuer or "agentcred" in peeked[1]):
            return Trace("not-ours", mine, why="it names agentcred but no signing key of agentcred signed it")
        return Trace("unknown", mine, why="agentcred issued no value with this fingerprint that it still knows of")

    def trace_reference(self, reference: str) -> Trace:
        """By fingerprint (full, or the short form) or token id: live and remembered values only."""
        text = reference.strip()
        references = [text]
        if SHORT_PATTERN.match(text):
            digest = text.rsplit(":", 1)[1]
            references = [fp for fp in self.store.fingerprints_matching(digest) if PATTERN.match(fp)]
        holders = self._referenced(references)
        # Named in audit lines: a fingerprint as given; anything else (a token id, or a value
        # pasted in its place) only by its keyed fingerprint.
        named = text if is_fingerprint(text) else self.fingerprints(text.encode())
        if holders:
            return Trace("ours", named, holders)
        return Trace("unknown", named, why="no live or remembered value has this fingerprint or token id")

    # -- minted tokens ---------------------------------------------------------------------

    def _minted(self, claims: dict[str, Any]) -> Holder:
        facts = claims["agentcred"]
        namespace, credential = str(facts.get("namespace") or ""), str(facts.get("credential") or "")
        pod_uid = str(facts.get("podUID") or "")
        issued = _epoch(claims.get("iat"))
        expires = _epoch(claims.get("exp"))
        key = self.store.key_of_pod(pod_uid)
        state = self.store.get(key) if key else None
        live = state.values.get(credential) if state else None
        now = self.now()
        situation = token_state(
            expires_at=expires or now,
            issued_at=issued or now,
            token_id=claims.get("jti"),
            covered=self.revocations.covers(
                pod_uid,
                credential,
                issued or now,
                (str(claims.get("jti") or ""), *[str(i) for i in facts.get("derivedFrom") or []]),
            ),
            live_token_id=live.token_id if live else None,
            live_issued_at=live.issued_at if live else None,
            now=now,
        )
        task = self.view.pod(key) if key else None
        record = self.view.credential(namespace, credential)
        subject = str(claims.get("sub") or "")
        return Holder(
            namespace=namespace,
            credential=credential,
            kind="gateway" if facts.get("grant") == "gateway" else "exchanged" if facts.get("grant") else "minted",
            state=situation,
            pod=str(facts.get("pod") or "") or None,
            pod_uid=pod_uid or None,
            job=facts.get("job"),
            service_account=task.service_account if task else subject.rpartition(":")[2] or None,
            owner=_owner(record),
            category=facts.get("category"),
            issued_at=issued,
            expires_at=expires,
            token_id=claims.get("jti"),
            fingerprint=live.fingerprint if live and live.token_id == claims.get("jti") else None,
            key=key if live is not None else None,
        )

    # -- values by fingerprint or token id ---------------------------------------------------

    def _referenced(self, references: list[str]) -> tuple[Holder, ...]:
        now = self.now()
        live: list[Holder] = []
        for reference in dict.fromkeys(references):
            for key, credential in sorted(self.store.holding(reference)):
                state = self.store.get(key)
                if state is not None and credential in state.values:
                    value = state.values[credential]
                    live.append(self._holder(state, value, "expired" if value.expires_at <= now else "live", key))
        for reference in dict.fromkeys(references):
            for handed in self.handed(reference):
                live.append(self._handed(handed, now))
        if live:
            return tuple(live)
        past: list[Holder] = []
        for reference in dict.fromkeys(references):
            for gone in self.store.past(reference):
                ended: State = "expired" if gone.value.expires_at <= now else gone.ended  # type: ignore[assignment]
                past.append(self._holder(gone.state, gone.value, ended, None))
        return tuple(past)

    def _holder(self, state: ProjectionState, value: IssuedValue, situation: State, key: str | None) -> Holder:
        task = self.view.pod(state.key)
        record = self.view.credential(state.namespace, value.credential)
        return Holder(
            namespace=state.namespace,
            credential=value.credential,
            kind="minted" if value.source == "jwt" else value.source,
            state=situation,
            pod=state.pod_name or None,
            pod_uid=state.pod_uid or None,
            job=state.job,
            service_account=task.service_account if task and task.uid == state.pod_uid else None,
            owner=_owner(record),
            category=value.category,
            issued_at=value.issued_at,
            expires_at=value.expires_at,
            token_id=value.token_id,
            fingerprint=value.fingerprint,
            key=key,
        )

    def _handed(self, handed: Handed, now: dt.datetime) -> Holder:
        """A static value handed to a gateway for a pod: live while the pod is, as far as known."""
        record = self.view.credential(handed.namespace, handed.credential)
        return Holder(
            namespace=handed.namespace,
            credential=handed.credential,
            kind="gateway",
            state="live",
            pod=handed.pod,
            pod_uid=handed.pod_uid,
            job=handed.job,
            service_account=handed.service_account,
            owner=_owner(record),
            category=handed.category,
            issued_at=handed.first,
            expires_at=None,
            fingerprint=handed.fingerprint,
        )


def _owner(record: CredentialRecord | None) -> str | None:
    return record.spec.owner if record is not None and record.spec is not None else None


def _epoch(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(int(value), dt.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
