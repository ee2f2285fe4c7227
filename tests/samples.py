"""Sample AgentCredential objects for tests, with targeted overrides."""

from __future__ import annotations

import copy
from typing import Any

from agentcred.api import model


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "owner": "team-research@example.com",
        "category": "model",
        "subjects": {"serviceAccounts": ["research-agent"]},
        "source": {"jwt": {"audiences": ["https://llm-gateway.internal"]}},
        "scope": {"tools": ["web-search"], "resources": ["repo:acme/*"], "actions": ["read"]},
        "ttl": "15m",
        "maxLifetime": "8h",
        "projection": {"mountPath": "/var/run/agentcred/research-llm"},
        "review": {"cadence": "90d", "lastReviewed": "2026-11-01", "escalation": "secops@example.com"},
    }
    for key, value in overrides.items():
        if value is DROP:
            base.pop(key, None)
        else:
            base[key] = copy.deepcopy(value)
    return base


DROP = object()

STATIC_SOURCE = {"secretRef": {"name": "upstream-key", "key": "api-key"}}
EXCEPTION = {"reason": "vendor has no token API", "approvedBy": "ciso@example.com", "expires": "2099-01-31"}


def credential(name: str = "research-llm", namespace: str | None = None, **overrides: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": model.API_VERSION, "kind": model.KIND, "metadata": metadata, "spec": spec(**overrides)}


# A gateway-only model credential: chat completions through a gateway, the model from the body.
CHAT_ROUTE = {
    "name": "chat",
    "methods": ["POST"],
    "path": "/v1/chat/completions",
    "intent": {"tool": "llm", "action": "invoke", "resource": "model:{body.model}"},
}
GATEWAY_ONLY = {"projection": {"delivery": "gateway"}, "gateway": {"routes": [CHAT_ROUTE]}}

# (case, spec overrides, field the API server names, phrase in its message)
INVALID = [
    (
        "a DPoP-bound value delivered by the CSI plugin",
        {
            "source": {"jwt": {"audiences": ["https://llm-gateway.internal"], "dpop": "required"}},
            "projection": {"mountPath": "/var/run/agentcred/llm", "delivery": "csi"},
        },
        "spec.source.jwt.dpop",
        "source.jwt.dpop required is not available with csi delivery yet",
    ),
    (
        "gateway delivery without gateway",
        {"projection": {"delivery": "gateway"}},
        "spec.gateway",
        "gateway is required when projection.delivery is gateway",
    ),
    (
        "gateway delivery with a mountPath",
        {"projection": {"delivery": "gateway", "mountPath": "/var/run/x"}, "gateway": {"routes": [CHAT_ROUTE]}},
        "spec.projection",
        "do not apply to gateway delivery",
    ),
    ("unknown delivery", {"projection": {"delivery": "email"}}, "spec.projection.delivery", "Unsupported value"),
    (
        "unknown dpop mode",
        {"source": {"jwt": {"audiences": ["https://llm-gateway.internal"], "dpop": "sometimes"}}},
        "spec.source.jwt.dpop",
        "Unsupported value",
    ),
    (
        "gateway delivery of a minting service",
        {
            "source": {"webhook": {"url": "https://minter.internal"}},
            "projection": {"delivery": "gateway"},
            "gateway": {"routes": [CHAT_ROUTE]},
        },
        "spec.source",
        "gateway delivery attaches a minted (jwt) or static (secretRef) value",
    ),
    (
        "route with intent and mcp",
        {"gateway": {"routes": [{**CHAT_ROUTE, "mcp": {"resource": "docs:x"}}]}},
        "spec.gateway.routes[0]",
        "exactly one of intent (a plain HTTP API) and mcp",
    ),
    (
        "route template with a glob",
        {"gateway": {"routes": [{**CHAT_ROUTE, "intent": {"tool": "llm", "action": "*", "resource": "m"}}]}},
        "spec.gateway.routes[0].intent.action",
        "should match",
    ),
    (
        "route path with dot-dot",
        {"gateway": {"routes": [{**CHAT_ROUTE, "path": "/v1/../admin"}]}},
        "spec.gateway.routes[0].path",
        "should match",
    ),
    (
        "route audience not the source's",
        {"gateway": {"routes": [{**CHAT_ROUTE, "audience": "https://elsewhere.internal"}]}},
        "spec.gateway.routes",
        "must be one of source.jwt.audiences",
    ),
    ("ttl over a day", {"ttl": "25h", "maxLifetime": "48h"}, "spec.ttl", "at most 24h"),
    ("missing owner", {"owner": DROP}, "spec.owner", "Required value"),
    ("unknown category", {"category": "database"}, "spec.category", "Unsupported value"),
    (
        "two sources",
        {"source": {"jwt": {"audiences": ["a"]}, **STATIC_SOURCE}, "exception": EXCEPTION},
        "spec.source",
        "exactly one of jwt, secretRef, webhook",
    ),
    ("no source", {"source": {}}, "spec.source", "exactly one of jwt, secretRef, webhook"),
    ("secretRef without exception", {"source": STATIC_SOURCE}, "spec.exception", "exception is required"),
    ("exception on a minted source", {"exception": EXCEPTION}, "spec.exception", "only to static"),
    ("malformed ttl", {"ttl": "15 minutes"}, "spec.ttl", "must be a duration longer than zero: whole numbers"),
    ("zero ttl", {"ttl": "0s"}, "spec.ttl", "s (seconds), m (minutes), h (hours), d (days)"),
    ("zero maxLifetime", {"maxLifetime": "0h0m"}, "spec.maxLifetime", "must be a duration longer than zero"),
    ("ttl of two days", {"ttl": "2d", "maxLifetime": "3d"}, "spec.ttl", "at most 24h (1d)"),
    ("zero renewBefore", {"renewBefore": "0m"}, "spec.renewBefore", "longer than zero"),
    (
        "fileMode 0600 (YAML's octal)",
        {"projection": {"mountPath": "/var/run/agentcred/x", "fileMode": 0o600}},
        "spec.projection.fileMode",
        "fileMode 0600 (octal; 384 in decimal) is not allowed: use a read-only mode in octal",
    ),
    (
        "fileMode as text",
        {"projection": {"mountPath": "/var/run/agentcred/x", "fileMode": "0644"}},
        "spec.projection.fileMode",
        "fileMode is not allowed: use a read-only mode in octal, 0400, 0440, 0444 or 0404",
    ),
    ("ttl over maxLifetime", {"ttl": "9h"}, "spec.ttl", "ttl must not exceed maxLifetime"),
    ("renewBefore not under ttl", {"renewBefore": "15m"}, "spec.renewBefore", "shorter than ttl"),
    ("empty subjects", {"subjects": {"serviceAccounts": []}}, "spec.subjects.serviceAccounts", "at least 1"),
    (
        "bad ServiceAccount name",
        {"subjects": {"serviceAccounts": ["Bad_Name"]}},
        "spec.subjects.serviceAccounts[0]",
        "should match",
    ),
    ("relative mountPath", {"projection": {"mountPath": "var/run/x"}}, "spec.projection.mountPath", "should match"),
    ("dot-dot mountPath", {"projection": {"mountPath": "/var/../etc"}}, "spec.projection.mountPath", "should match"),
    ("missing projection", {"projection": DROP}, "spec.projection", "Required value"),
    (
        "exception without expiry",
        {"source": STATIC_SOURCE, "exception": {"reason": "r", "approvedBy": "a"}},
        "spec.exception.expires",
        "Required value",
    ),
    (
        "plain-http webhook",
        {"source": {"webhook": {"url": "http://minter.internal"}}},
        "spec.source.webhook.url",
        "plain http is refused",
    ),
    (
        "minting timeout over 30s",
        {"source": {"webhook": {"url": "https://minter.internal", "timeout": "1h"}}},
        "spec.source.webhook.timeout",
        "at most 30s",
    ),
    ("jwt without audiences", {"source": {"jwt": {"audiences": []}}}, "spec.source.jwt.audiences", "at least 1"),
    (
        "unknown jwt algorithm",
        {"source": {"jwt": {"audiences": ["a"], "algorithm": "HS256"}}},
        "spec.source.jwt.algorithm",
        "Unsupported value",
    ),
    ("malformed review cadence", {"review": {"cadence": "quarterly"}}, "spec.review.cadence", "must be a duration"),
    (
        "minting timeout in days",
        {"source": {"webhook": {"url": "https://minter.internal", "timeout": "1d"}}},
        "spec.source.webhook.timeout",
        "at most 30s",
    ),
    (
        "a scope pattern costly to match",
        {"scope": {"tools": ["*"], "actions": ["read"], "resources": ["*a?a?a?a?a?a?a?a*"]}},
        "spec.scope.resources[0]",
        "at most 8 wildcards",
    ),
]
