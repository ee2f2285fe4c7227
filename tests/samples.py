"""Sample AgentCredential objects for tests, with targeted overrides."""

from __future__ import annotations

import copy
from typing import Any

from agentcred import model


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
