"""The in-memory view of one AgentCredential: what the webhook and the issuer consult.

Built by a Kopf index from each AgentCredential event, so admission and issuing never need
an API round-trip to look a credential up. The spec is parsed once per event; the verdict
depends on the date (exceptions and reviews expire), so it is re-judged when the day turns.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import ValidationError

from ..api import labels
from ..api.model import AgentCredentialSpec, parse_spec
from ..api.policy_model import AgentCredentialPolicySpec
from ..api.reasons import SourceReason
from . import delivery, tenancy
from .verdicts import Verdict, describe_validation_error, judge


def today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


@dataclass(frozen=True)
class CredentialRecord:
    namespace: str
    name: str
    uid: str
    generation: int
    created: dt.date
    spec: AgentCredentialSpec | None
    invalid: Verdict | None  # set when the spec does not parse
    status: dict[str, Any]
    owner_ref: dict[str, Any]  # enough for Events: apiVersion, kind, name, namespace, uid
    # What the cluster around it says (see `Gatekeeper`): no policy allows it, or its source
    # is not there. Set on the copy handed out by a lookup; None: nothing stands in the way.
    deleting: bool = False  # a deletion is under way (the finalizers hold it)
    finalizers: tuple[str, ...] = ()
    blocked: Verdict | None = None
    allowed_by: str | None = None  # the AgentCredentialPolicy that allows it
    # How late a kubelet may deliver a renewed value (see rules.delivery): renewals start at
    # least this long before expiry.
    refresh_delay: dt.timedelta = dt.timedelta(0)
    _verdicts: dict[dt.date, Verdict] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def verdict(self, on: dt.date | None = None) -> Verdict:
        if self.invalid is not None or self.spec is None:
            assert self.invalid is not None
            return self.invalid
        day = on or today()
        if day not in self._verdicts:
            self._verdicts.clear()
            self._verdicts[day] = judge(self.spec, self.created, day)
        own = self._verdicts[day]
        if not own.ready:
            return own
        if self.blocked is not None:
            return dataclasses.replace(
                self.blocked,
                spec=own.spec,
                review_due=own.review_due,
                review_overdue=own.review_overdue,
                exception_expired=own.exception_expired,
            )
        if self.allowed_by:
            return dataclasses.replace(
                own, message=f"{own.message}; allowed by AgentCredentialPolicy {self.allowed_by}"
            )
        return own

    @property
    def ready(self) -> bool:
        return self.verdict().ready

    def allows(self, service_account: str) -> bool:
        return self.spec is not None and service_account in self.spec.subjects.service_accounts


def credential_record(body: dict[str, Any]) -> CredentialRecord:
    meta = body.get("metadata") or {}
    created = meta.get("creationTimestamp")
    spec: AgentCredentialSpec | None = None
    invalid: Verdict | None = None
    try:
        spec = parse_spec(dict(body.get("spec") or {}))
    except ValidationError as error:
        invalid = Verdict(False, "InvalidSpec", describe_validation_error(error))
    return CredentialRecord(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation") or 0),
        created=dt.date.fromisoformat(created[:10]) if created else today(),
        spec=spec,
        invalid=invalid,
        status=dict(body.get("status") or {}),
        owner_ref={
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(str(f) for f in meta.get("finalizers") or []),
    )


@dataclass(frozen=True)
class SharedSecret:
    """An upstream Secret its owner shares with agentcred (metadata only, never a value)."""

    keys: frozenset[str]
    # Who may copy it: "<credential>/<key>" (that key only: what owners should write),
    # "<credential>" (any key of it), or None for "*" (any credential of the namespace).
    shared_with: frozenset[str] | None
    version: str = ""  # its resourceVersion: a changed value is a new version

    def allows(self, credential: str, key: str) -> bool:
        return self.shared_with is None or bool({credential, f"{credential}/{key}"} & self.shared_with)


def shared_secret(body: dict[str, Any]) -> SharedSecret:
    meta = body.get("metadata") or {}
    names = str((meta.get("annotations") or {}).get(labels.SHARED_WITH_ANNOTATION) or "")
    listed = frozenset(n.strip() for n in names.split(",") if n.strip())
    return SharedSecret(
        keys=frozenset((body.get("data") or {}).keys()),
        shared_with=None if listed == {"*"} else listed,
        version=str(meta.get("resourceVersion") or ""),
    )


class SourceProblem(NamedTuple):
    reason: SourceReason
    message: str


def upstream_problem(record: CredentialRecord, found: SharedSecret | None) -> SourceProblem | None:
    """Why a static credential's upstream Secret cannot be copied, or None."""
    spec = record.spec
    if spec is None or spec.source.secret_ref is None:
        return None
    ref = spec.source.secret_ref
    where = f"Secret {ref.name} in namespace {record.namespace}"
    wanted = f"{record.name}/{ref.key}"
    if found is None:
        # The operator reads only shared Secrets, so it cannot tell a missing one from one not
        # shared -- and does not try: it would tell a credential's author which Secrets exist.
        return SourceProblem(
            "UpstreamNotShared",
            f"{where} is not shared with agentcred, or does not exist (agentcred reads only Secrets labelled "
            f"{labels.SHARED_LABEL}=true): its owner labels it so and annotates it {labels.SHARED_WITH_ANNOTATION}: "
            f"{wanted}",
        )
    if not found.allows(record.name, ref.key):
        own_keys = sorted(k.split("/", 1)[1] for k in found.shared_with or () if k.startswith(f"{record.name}/"))
        if own_keys:
            detail = (
                f"shares key {', '.join(own_keys)} with AgentCredential {record.name}, not {ref.key} "
                f"(spec.source.secretRef.key)"
            )
        else:
            detail = f"is shared with {', '.join(sorted(found.shared_with or ())) or 'nobody'}, not with {record.name}"
        return SourceProblem(
            "UpstreamNotShared",
            f"{where} {detail}: its owner adds {wanted} to its annotation {labels.SHARED_WITH_ANNOTATION}",
        )
    if ref.key not in found.keys:
        keys = ", ".join(sorted(found.keys)) or "none"
        return SourceProblem("UpstreamKeyMissing", f"{where} has no key {ref.key} (its keys: {keys})")
    return None


# A minting service failing its health check: no new pod is admitted for the credential, but
# the values pods already hold stay (they are still good at the service) until they expire.
UNHEALTHY: SourceReason = "MintingServiceUnhealthy"


class Gatekeeper:
    """Judges credentials against what surrounds them: the cluster's AgentCredentialPolicies
    (for the namespace's labels), for static sources the shared upstream Secret, and for
    minting services with a health check its last answer.

    The policies' decision is kept per credential until one of the things it was made from is
    replaced (the indices hold each object until its next event), so looking a credential up
    once per pod event does not judge it against every policy again."""

    KEPT = 10_000

    def __init__(
        self,
        policies: Callable[[], Mapping[str, AgentCredentialPolicySpec]],
        namespace_labels: Callable[[str], Mapping[str, str] | None],
        shared: Callable[[str, str], SharedSecret | None],
        source_health: Callable[[str, str], SourceProblem | None] = lambda namespace, name: None,
        refresh_delay: dt.timedelta = dt.timedelta(0),
    ) -> None:
        self._policies, self._namespace_labels, self._shared = policies, namespace_labels, shared
        self._source_health = source_health
        self._refresh_delay = refresh_delay
        self._decisions: dict[tuple[str, str], tuple[tuple[object, ...], tenancy.PolicyVerdict]] = {}

    def judged(self, record: CredentialRecord | None) -> CredentialRecord | None:
        if record is None or record.spec is None:
            return record
        decision = self._decision(record, record.spec)
        delay = self._refresh_delay
        if not decision.allowed:
            refused = Verdict(False, decision.reason, decision.message)
            return dataclasses.replace(record, blocked=refused, refresh_delay=delay)
        too_short = delivery.ttl_problem(record.spec, delay)
        if too_short is not None:
            return dataclasses.replace(record, blocked=Verdict(False, "TTLTooShort", too_short), refresh_delay=delay)
        ref, webhook = record.spec.source.secret_ref, record.spec.source.webhook
        problem = upstream_problem(record, self._shared(record.namespace, ref.name) if ref else None)
        if problem is None and webhook is not None and webhook.health_check:
            problem = self._source_health(record.namespace, record.name)
        blocked = Verdict(False, problem.reason, problem.message) if problem else None
        return dataclasses.replace(record, blocked=blocked, allowed_by=decision.policy, refresh_delay=delay)

    def _decision(self, record: CredentialRecord, spec: AgentCredentialSpec) -> tenancy.PolicyVerdict:
        """tenancy.judge, or the decision it made from the very same spec, labels and policies."""
        found = self._namespace_labels(record.namespace)
        policies = self._policies()
        inputs = (spec, found, *policies.keys(), *policies.values())
        kept = self._decisions.get(record.key)
        if kept is not None and _same(kept[0], inputs):
            return kept[1]
        labels_ = found or {"kubernetes.io/metadata.name": record.namespace}
        decision = tenancy.judge(spec, record.namespace, labels_, policies)
        if len(self._decisions) >= self.KEPT:
            self._decisions.clear()
        self._decisions[record.key] = (inputs, decision)
        return decision


def _same(kept: tuple[object, ...], now: tuple[object, ...]) -> bool:
    """The very same objects (names: equal strings)."""
    if len(kept) != len(now):
        return False
    return all(a is b or (isinstance(a, str) and a == b) for a, b in zip(kept, now, strict=True))
