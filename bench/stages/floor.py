"""The floor: the API writes agentcred causes per pod, made by a plain client (`floor-N`).

The floor runs with no operator and no webhook. Per pod, one client thread does in sequence
what the webhook and the operator make happen: create the pod (already carrying the
projected volume, the annotations and the scheduling gate the webhook would add), create its
Secret (the size and labels of agentcred's, owned by the pod), patch the gate away; at the
end it deletes the Secret right after the trigger. No minting, no bookkeeping, no Event (the
one extra write agentcred makes per pod), no queueing: what is left is the API server's cost
of this exact work at this concurrency.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from typing import Any

from ..bursts import PodBurst, pods_path, secrets_path
from ..context import Context, clean, measure_and_clean
from ..harness import CLIENT_THREADS, Lean

FLOOR_GATE = "floor.bench.agentcred.dev/credentials"
FLOOR_LABEL = "floor.bench.agentcred.dev/managed"
TOKEN_BYTES = 680  # about the size of one of agentcred's minted JWTs


def run(ctx: Context, count: int) -> dict[str, Any]:
    """The floor for a burst of `count` pods, in a namespace of its own."""
    lean, namespace = ctx.lean, f"bench-floor-{count}"
    lean.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    lean.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "agent"}})
    return measure_and_clean(lambda: measure(lean, namespace, count), lambda: clean(lean, namespace, count * 3))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def floor_pod(name: str, binding: str, credential: str) -> dict[str, Any]:
    """What an admitted agentcred pod looks like, under labels no agentcred part reacts to."""
    volume = f"floor-{secrets.token_hex(6)}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"floor.bench.agentcred.dev/inject": "true"},
            "annotations": {
                "floor.bench.agentcred.dev/credentials": credential,
                "floor.bench.agentcred.dev/binding": binding,
                "floor.bench.agentcred.dev/admitted-at": _now(),
                "floor.bench.agentcred.dev/seal": secrets.token_urlsafe(32),
            },
        },
        "spec": {
            "serviceAccountName": "agent",
            "restartPolicy": "Never",
            "schedulingGates": [{"name": FLOOR_GATE}],
            "containers": [
                {
                    "name": "agent",
                    "image": "example.com/agent:1",
                    "volumeMounts": [
                        {"name": volume, "mountPath": f"/var/run/agentcred/{credential}", "readOnly": True}
                    ],
                }
            ],
            "volumes": [
                {
                    "name": volume,
                    "projected": {
                        "defaultMode": 0o444,
                        "sources": [
                            {
                                "secret": {
                                    "name": f"floor-{binding}",
                                    "optional": True,
                                    "items": [
                                        {"key": f"{credential}.token", "path": "token"},
                                        {"key": f"{credential}.expires-at", "path": "expires-at"},
                                    ],
                                }
                            }
                        ],
                    },
                }
            ],
        },
    }


def floor_secret(pod: dict[str, Any], binding: str, credential: str) -> dict[str, Any]:
    """The size and shape of agentcred's per-pod Secret (a random stand-in for the token)."""
    meta = pod["metadata"]
    expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat(timespec="seconds")
    state = {
        "values": {
            credential: {
                "category": "model",
                "issuedAt": _now(),
                "expiresAt": expires,
                "taskStartedAt": _now(),
                "fingerprint": f"hmac-sha256:{secrets.token_hex(4)}:{secrets.token_hex(16)}",
                "tokenId": secrets.token_urlsafe(16),
                "renewals": 0,
                "source": "jwt",
            }
        },
        "revoked": {},
    }
    token = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES * 3 // 4))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": False,
        "metadata": {
            "name": f"floor-{binding}",
            "labels": {
                FLOOR_LABEL: "true",
                "floor.bench.agentcred.dev/binding": binding,
                "floor.bench.agentcred.dev/pod-uid": meta["uid"],
                f"credential.floor.bench/{credential}": "model",
            },
            "annotations": {
                "floor.bench.agentcred.dev/pod": meta["name"],
                "floor.bench.agentcred.dev/state": json.dumps(state, separators=(",", ":")),
            },
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "data": {
            f"{credential}.token": base64.b64encode(token).decode(),
            f"{credential}.expires-at": base64.b64encode(expires.encode()).decode(),
        },
    }


UNGATE = {"spec": {"schedulingGates": [{"$patch": "delete", "name": FLOOR_GATE}]}}


def measure(lean: Lean, namespace: str, count: int, stall: float = 120.0) -> dict[str, Any]:
    """The floor for a burst of `count` pods, in a namespace that exists and has ServiceAccount agent."""
    burst = PodBurst(
        lean,
        namespace,
        count,
        secret_selector=f"{FLOOR_LABEL}=true",
        secret_key=lambda s: (s["metadata"].get("annotations") or {}).get("floor.bench.agentcred.dev/pod"),
        gate=FLOOR_GATE,
    )
    bindings: dict[str, str] = {}

    def issue(i: int) -> None:
        name, binding = f"f-{i}", secrets.token_hex(8)
        bindings[name] = binding
        pod = json.loads(lean.call("POST", pods_path(namespace), floor_pod(name, binding, "cred-0")))
        burst.stamp(name)
        lean.call("POST", secrets_path(namespace), floor_secret(pod, binding, "cred-0"))
        lean.call("PATCH", pods_path(namespace, name), UNGATE, content_type="application/strategic-merge-patch+json")

    def revoke(pod: str) -> None:
        lean.call("DELETE", secrets_path(namespace, f"floor-{bindings[pod]}"), ok=(200, 202, 404))

    result = burst.measure(issue, after_trigger=revoke, stall=stall)
    result["client_threads"] = CLIENT_THREADS
    return result
