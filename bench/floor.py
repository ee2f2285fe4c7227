"""Pod bursts, and the floor: the same API writes agentcred causes, by a plain client.

`PodBurst` measures one burst the same way for agentcred and for the floor: pods created by
CLIENT_THREADS threads, one watch on the namespace's Secrets and one on its pods, every time
taken on this side of the API (call returned -> watch event read). Then half of the pods are
marked Succeeded and half deleted, and each Secret's deletion is timed from that trigger.

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
import time
from collections.abc import Callable
from typing import Any

from harness import CLIENT_THREADS, Follower, Lean, summary_ms, wait_count

FLOOR_GATE = "floor.bench.agentcred.dev/credentials"
FLOOR_LABEL = "floor.bench.agentcred.dev/managed"
TOKEN_BYTES = 680  # about the size of one of agentcred's minted JWTs

SUCCEEDED = {
    "status": {
        "phase": "Succeeded",
        "containerStatuses": [
            {
                "name": "agent",
                "image": "example.com/agent:1",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            }
        ],
    }
}


def pods_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")


def secrets_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/secrets" + (f"/{name}" if name else "")


def gate_removed(gate: str) -> Callable[[dict[str, Any]], bool]:
    def holds(pod: dict[str, Any]) -> bool:
        return not any(g.get("name") == gate for g in (pod.get("spec") or {}).get("schedulingGates") or [])

    return holds


class PodBurst:
    """One burst of `count` pods in `namespace`, measured on the client side."""

    def __init__(
        self,
        lean: Lean,
        namespace: str,
        count: int,
        *,
        secret_selector: str,
        secret_key: Callable[[dict[str, Any]], str | None],
        gate: str,
    ) -> None:
        self.lean = lean
        self.namespace = namespace
        self.count = count
        self.secret_selector = secret_selector
        self.secret_key = secret_key
        self.gate = gate
        self.created: dict[str, float] = {}
        self.triggered: dict[str, float] = {}

    def stamp(self, pod: str) -> None:
        self.created[pod] = time.monotonic()

    def measure(
        self,
        create: Callable[[int], None],
        *,
        after_trigger: Callable[[str], None] | None = None,
        probe: Callable[[], dict[str, float]] | None = None,
        stall: float = 120.0,
    ) -> dict[str, Any]:
        """`probe`, if given, reads the controller's usage (RSS, CPU) around the burst."""
        count = self.count
        secrets_follower = Follower(
            self.lean, secrets_path(self.namespace), self.secret_key, selector=self.secret_selector
        )
        pods_follower = Follower(
            self.lean,
            pods_path(self.namespace),
            lambda o: o["metadata"]["name"],
            marks={"ungated": gate_removed(self.gate)},
        )
        with secrets_follower as written, pods_follower as pods:
            time.sleep(0.5)
            before = probe() if probe else None
            started = time.monotonic()
            self.lean.run_all(create, range(count))
            create_done = time.monotonic()
            wait_count(lambda: len(written.seen), count, f"{self.namespace}: Secrets written", stall=stall)
            wait_count(lambda: len(pods.marked["ungated"]), count, f"{self.namespace}: pods ungated", stall=stall)
            finished_written = max(written.seen.values())
            finished_ungated = max(pods.marked["ungated"].values())
            at_n = probe() if probe else None
            result: dict[str, Any] = {
                "pods": count,
                "create_seconds": create_done - started,
                "pods_created_per_second": count / (create_done - started),
                "written_ms": summary_ms(written.seen[p] - self.created[p] for p in self.created if p in written.seen),
                "ungated_ms": summary_ms(
                    pods.marked["ungated"][p] - self.created[p] for p in self.created if p in pods.marked["ungated"]
                ),
                "written_per_second": count / (finished_written - started),
                "ungated_per_second": count / (finished_ungated - started),
            }

            # Revocation: half the pods end (the Job path), half are deleted, in one burst.
            names = sorted(self.created)
            half = len(names) // 2

            def succeed(pod: str) -> None:
                self.lean.call(
                    "PATCH",
                    pods_path(self.namespace, pod) + "/status",
                    SUCCEEDED,
                    content_type="application/strategic-merge-patch+json",
                )
                self.triggered[pod] = time.monotonic()
                if after_trigger:
                    after_trigger(pod)

            def delete(pod: str) -> None:
                self.lean.call("DELETE", pods_path(self.namespace, pod), {"gracePeriodSeconds": 0})
                self.triggered[pod] = time.monotonic()
                if after_trigger:
                    after_trigger(pod)

            revoke_started = time.monotonic()
            self.lean.run_all(succeed, names[:half])
            self.lean.run_all(delete, names[half:])
            wait_count(lambda: len(written.deleted), count, f"{self.namespace}: Secrets deleted", stall=stall)
            revoke_finished = max(written.deleted.values())
            for kind, chosen in (("succeeded", names[:half]), ("deleted", names[half:])):
                result[f"revoked_{kind}_ms"] = summary_ms(
                    written.deleted[p] - self.triggered[p] for p in chosen if p in written.deleted
                )
            result["revoked_per_second"] = count / (revoke_finished - revoke_started)
            if probe and before and at_n:
                after = probe()
                result["rss_mb_at_n"] = at_n["rss_mb"]
                result["peak_rss_mb"] = after["peak_rss_mb"]
                result["cpu_seconds_issuing"] = at_n["cpu_seconds"] - before["cpu_seconds"]
                result["cpu_seconds"] = after["cpu_seconds"] - before["cpu_seconds"]
                result["cpu_seconds_per_1000"] = result["cpu_seconds"] * 1000 / count
        return result


# -- the floor ----------------------------------------------------------------------------


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


def measure_floor(lean: Lean, namespace: str, count: int, stall: float = 120.0) -> dict[str, Any]:
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
