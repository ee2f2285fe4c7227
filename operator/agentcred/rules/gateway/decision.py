"""The decision on one call through a gateway, pure: the calling pod (already identified and
found live), its credentials as judged now, the request; a verdict out, naming the rule that
decided it.

In order: the path has one spelling; one of the pod's credentials has a route for the request;
that credential is Ready (policies included), the pod's ServiceAccount still one of its
subjects, nothing revoked for the pod, its maxLifetime not reached; the request reads as one
intent (or an MCP protocol message that calls nothing); the intent lies inside the
credential's scope (deny wins) and inside the bounds of the policy that allows the credential;
and every condition (the credential's, then the policy's) is true.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from ...api.gateway_model import Condition, Route
from ...api.pods import PodTask
from ...api.policy_model import AgentCredentialPolicySpec
from ..credentials import CredentialRecord
from ..scope import Intent, evaluate
from ..tenancy import allows_value, for_namespace
from .conditions import activation, first_failure
from .intents import Derived, derive
from .requests import GatewayRequest, Refused, path_problem
from .routes import select


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    status: int  # the HTTP status the gateway answers a refusal with (200 when allowed)
    reason: str  # bounded: a metric label
    message: str
    rule: str  # what decided: route:<name>, scope, scope.deny, policy:<name>, condition:<name>, ...
    record: CredentialRecord | None = None
    route: Route | None = None
    derived: Derived | None = None

    @property
    def intent(self) -> Intent | None:
        return self.derived.intent if self.derived is not None else None


def _refused(
    refusal: Refused, rule: str, record: CredentialRecord | None = None, route: Route | None = None
) -> Verdict:
    return Verdict(False, refusal.status, refusal.reason, refusal.message, rule, record, route)


def decide(
    request: GatewayRequest,
    task: PodTask,
    credential: Callable[[str], CredentialRecord | None],
    policy: Callable[[str], AgentCredentialPolicySpec | None],
    revoked: Callable[[str], bool],
    now: dt.datetime,
) -> Verdict:
    problem = path_problem(request.path)
    if problem is not None:
        return Verdict(False, 400, "ambiguous-path", f"path {request.path[:200]!r} {problem}", "path")
    records = [r for r in (credential(name) for name in task.credentials) if r is not None]
    try:
        matched = select(records, request, task.name)
    except Refused as refusal:
        return _refused(refusal, "routes")
    record, route = matched.record, matched.route
    spec = record.spec
    assert spec is not None
    rule = f"route:{route.name}"

    def deny(reason: str, message: str, rule: str = rule, status: int = 403) -> Verdict:
        return Verdict(False, status, reason, message, rule, record, route)

    verdict = record.verdict(now.date())
    if not verdict.ready:
        return deny(
            "credential-not-ready",
            f"AgentCredential {record.name} is not Ready ({verdict.reason}): {verdict.message}",
            "credential",
        )
    if not record.allows(task.service_account):
        return deny(
            "not-a-subject",
            f"ServiceAccount {task.service_account} is no longer a subject of {record.name}",
            "credential",
        )
    if revoked(record.name):
        return deny("revoked", f"{record.name} was revoked for pod {task.name}", "revocation")
    if task.admitted_at is not None and now >= task.admitted_at + spec.max_lifetime_delta:
        return deny(
            "max-lifetime", f"pod {task.name} reached maxLifetime {spec.max_lifetime} of {record.name}", "maxLifetime"
        )
    if spec.source.webhook is not None:
        return deny(
            "unsupported-source",
            f"{record.name} has a minting-service source: gateways attach minted (jwt) or static (secretRef) values",
            "credential",
        )
    try:
        derived = derive(route, request, matched.path_params)
    except Refused as refusal:
        return _refused(refusal, rule, record, route)
    intent = derived.intent
    if intent is None:  # an MCP protocol message: identity, liveness and the credential are enough
        return Verdict(
            True, 200, "allowed", f"MCP {derived.kind} message on route {route.name}", rule, record, route, derived
        )
    scoped = evaluate(spec.scope, intent)
    if not scoped.allowed:
        where = "scope.deny" if scoped.reason.endswith("-denied") else "scope"
        return Verdict(False, 403, scoped.reason, scoped.message, where, record, route, derived)
    bounds = policy(record.allowed_by) if record.allowed_by else None
    if bounds is not None and bounds.scope is not None:
        for dimension in ("tool", "action", "resource"):
            allowed = getattr(bounds.scope, f"{dimension}s")
            value = getattr(intent, dimension)
            if allowed is not None and not allows_value(for_namespace(allowed, record.namespace), value):
                return Verdict(
                    False,
                    403,
                    "policy-denied",
                    f"{dimension} {value!r} is outside what AgentCredentialPolicy {record.allowed_by} allows",
                    f"policy:{record.allowed_by}",
                    record,
                    route,
                    derived,
                )
    conditions: list[tuple[str, Condition]] = [("", c) for c in (spec.gateway.conditions if spec.gateway else [])]
    if bounds is not None and bounds.gateway is not None:
        conditions += [(f"policy:{record.allowed_by}/", c) for c in bounds.gateway.conditions]
    if conditions:
        context = activation(request, intent, derived.mcp, derived.body, task, record.name, spec.category, now)
        failed = first_failure(conditions, context)
        if failed is not None:
            return Verdict(False, 403, failed.reason, failed.message, failed.rule, record, route, derived)
    return Verdict(True, 200, "allowed", scoped.message, f"{rule}+scope", record, route, derived)
