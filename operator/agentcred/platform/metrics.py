"""Prometheus metrics. Labels are bounded on purpose: categories and reasons come from
fixed sets, and nothing names a pod, a credential value or any other unbounded thing.

Counters of issue/renew/revoke/deny and issued tokens are driven by the audit log (`observe_audit`),
so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..api.model import CATEGORIES

REGISTRY = CollectorRegistry(auto_describe=True)
UNKNOWN = "unknown"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)

issued = Counter(
    "agentcred_issued_total", "Values issued to pods (first issue in a task).", ["category"], registry=REGISTRY
)
renewed = Counter("agentcred_renewed_total", "Values renewed in place before expiry.", ["category"], registry=REGISTRY)
revoked = Counter("agentcred_revoked_total", "Values revoked, by trigger.", ["category", "reason"], registry=REGISTRY)
denied = Counter(
    "agentcred_denied_total",
    "Admissions, issues and token requests refused, by reason.",
    ["category", "reason"],
    registry=REGISTRY,
)
exchanged = Counter(
    "agentcred_tokens_issued_total", "Access tokens issued at the token endpoint.", ["category"], registry=REGISTRY
)
leaks = Counter(
    "agentcred_leaks_reported_total",
    "Reported values, by category and outcome (revoked, already-revoked, expired, not-ours, unknown).",
    ["category", "outcome"],
    registry=REGISTRY,
)
LEAK_OUTCOMES = frozenset({"revoked", "already-revoked", "expired", "not-ours", "unknown"})
active = Gauge("agentcred_active_projections", "Live values held by pods.", ["category"], registry=REGISTRY)
webhook_latency = Histogram(
    "agentcred_webhook_duration_seconds", "Admission webhook handling time.", buckets=FAST_BUCKETS, registry=REGISTRY
)
projection_latency = Histogram(
    "agentcred_projection_latency_seconds",
    "Pod admitted -> its values written and the pod released.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
revocation_latency = Histogram(
    "agentcred_revocation_latency_seconds",
    "Trigger observed -> value gone from the cluster.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
token_latency = Histogram(
    "agentcred_token_endpoint_duration_seconds",
    "Token endpoint handling time.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
renewal_lateness = Histogram(
    "agentcred_renewal_lateness_seconds",
    "How long after its planned time a renewal happened.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
api_errors = Counter(
    "agentcred_api_errors_total",
    "Failed calls to the Kubernetes API, by operation and status.",
    ["operation", "status"],
    registry=REGISTRY,
)
token_reviews = Counter(
    "agentcred_token_reviews_total",
    "TokenReviews sent to the API server, by the caller they served (token-service, leak-intake).",
    ["caller"],
    registry=REGISTRY,
)
revocation_list = Gauge(
    "agentcred_revocation_list_size", "Entries (pod, credential) on the revocation list.", registry=REGISTRY
)
events_dropped = Gauge(
    "agentcred_events_dropped", "Events dropped because the posting queue was full.", registry=REGISTRY
)
# Completed passes of the leader's periodic loops: what shows that a loop had its chance to act
# (a status written, a bar kept) -- and, when nothing changed, that it looked and did nothing.
status_writer_passes = Counter(
    "agentcred_status_writer_passes_total",
    "Completed passes of the status writer (each changed credential's status written, or given up on).",
    registry=REGISTRY,
)
revocation_list_passes = Counter(
    "agentcred_revocation_list_passes_total",
    "Completed passes of the revocation list's loop (expired entries pruned, the leader's bars of live pods "
    "lengthened, the list saved and read back).",
    registry=REGISTRY,
)

gateway_decisions = Counter(
    "agentcred_gateway_decisions_total",
    "Calls decided for gateways, by contract (ext_authz, forward_auth), decision (allow, deny) and reason.",
    ["contract", "decision", "reason"],
    registry=REGISTRY,
)
gateway_latency = Histogram(
    "agentcred_gateway_decision_seconds",
    "Time to decide one gateway call (request in, answer out), by contract.",
    ["contract"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
kept = Gauge(
    "agentcred_kept_entries",
    "Entries the operator keeps in memory, by structure (each is bounded; this shows it holds).",
    ["structure"],
    registry=REGISTRY,
)

_COUNTERS = {"issue": issued, "renew": renewed, "exchange": exchanged}


def category_label(value: Any) -> str:
    return value if value in CATEGORIES else UNKNOWN


def observe_audit(entry: dict[str, Any]) -> None:
    category = category_label(entry.get("category"))
    action = entry.get("action")
    if action in _COUNTERS:
        _COUNTERS[action].labels(category).inc()
    elif action == "revoke":
        revoked.labels(category, str(entry.get("reason", UNKNOWN))).inc()
    elif action == "deny":
        denied.labels(category, str(entry.get("reason", UNKNOWN))).inc()
    elif action == "gateway":
        gateway_decisions.labels(
            str(entry.get("contract", UNKNOWN)), str(entry.get("decision", UNKNOWN)), str(entry.get("reason", UNKNOWN))
        ).inc()
    elif action == "leak":
        outcome = entry.get("outcome")
        leaks.labels(category, outcome if outcome in LEAK_OUTCOMES else UNKNOWN).inc()


def set_active(counts: dict[str, int]) -> None:
    for category in CATEGORIES:
        active.labels(category).set(counts.get(category, 0))


def api_error(operation: str, status: int | None) -> None:
    api_errors.labels(operation, str(status) if status else "connection").inc()


def track(structure: str, size: Callable[[], int]) -> None:
    """Report `size()` as the kept entries of `structure` (a fixed name) at every scrape."""
    kept.labels(structure).set_function(size)
