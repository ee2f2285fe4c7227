"""`tokens`: the token service at 100 concurrent clients, token exchange and JWT bearer grants
by admitted pods' own bound ServiceAccount tokens; throughput, p50/p99, the operator's CPU.

Each request is a new HTTPS connection (as the earlier /v1/exchange figure was taken). The
per-pod rate limit is lifted: this measures what the service can do, not the limit.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentcred.api import labels

from ..bursts import pods_path
from ..context import Context, clean, measure_and_clean
from ..harness import Lean, summary_ms, wait_count
from ..under_test import UnderTest, pod_body

NAMESPACE = "bench-tokens"
PODS = 50
CONCURRENCY = 100


def run(ctx: Context) -> dict[str, Any]:
    operator = ctx.operator
    # Every pod's first request is reviewed, from one address: the per-address budget, which
    # each review holds until the API server accepts the token, is lifted as the pod rate is.
    lifted = {"AGENTCRED_TOKEN_RATE": "100000", "AGENTCRED_TOKEN_BURST": "100000", "AGENTCRED_SOURCE_BURST": "100000"}
    startup = operator.start(env=lifted)

    def stop_after_cleaning() -> float:
        try:
            return clean(ctx.lean, NAMESPACE, PODS * 3)
        finally:
            operator.stop()

    figures = measure_and_clean(lambda: measure(operator, ctx.options.token_requests), stop_after_cleaning)
    return {**figures, "operator_startup_seconds": startup}


def identities(operator: UnderTest, lean: Lean) -> list[str]:
    """PODS admitted, released pods, and a token bound to each (audience agentcred)."""
    names = operator.namespace(NAMESPACE, scope={"tools": ["*"], "actions": ["read"], "resources": ["repo:acme/*"]})
    lean.run_all(lambda i: lean.call("POST", pods_path(NAMESPACE), pod_body(f"t-{i}", names[0])), range(PODS))

    def released() -> list[dict[str, Any]]:
        return [
            pod for pod in lean.json("GET", pods_path(NAMESPACE))["items"] if not pod["spec"].get("schedulingGates")
        ]

    wait_count(lambda: len(released()), PODS, f"{NAMESPACE}: {PODS} pods issued and released", stall=120)

    def bound(pod: dict[str, Any]) -> str:
        ref = {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
        answer = lean.json(
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/agent/token",
            {"spec": {"audiences": ["agentcred"], "expirationSeconds": 3600, "boundObjectRef": ref}},
        )
        return str(answer["status"]["token"])

    return [bound(pod) for pod in released()]


def measure(operator: UnderTest, requests: int) -> dict[str, Any]:
    lean = operator.lean
    tokens = identities(operator, lean)
    ca = lean.json("GET", "/api/v1/namespaces/agentcred/configmaps/agentcred-ca-bundle")["data"][labels.CA_KEY]
    context = ssl.create_default_context(cadata=ca)
    grants: dict[str, Callable[[int], dict[str, str]]] = {
        "token-exchange": lambda i: {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": tokens[i % len(tokens)],
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "authorization_details": json.dumps(
                [
                    {
                        "type": "agentcred.dev/tool",
                        "tool": f"tool-{i % 7}",
                        "actions": ["read"],
                        "identifier": f"repo:acme/r{i}",
                    }
                ]
            ),
        },  # fmt: skip
        "jwt-bearer": lambda i: {
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": tokens[i % len(tokens)],
            "scope": f"tool:tool-{i % 7} action:read resource:repo:acme/r{i}",
        },
    }
    port = operator.running.api_port
    figures: dict[str, Any] = {"pods": PODS, "concurrency": CONCURRENCY}
    for grant, form in grants.items():

        def ask(i: int, form: Callable[[int], dict[str, str]] = form) -> tuple[int, float]:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
            began = time.perf_counter()
            try:
                connection.request(
                    "POST",
                    "/oauth2/token",
                    body=urllib.parse.urlencode(form(i)),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
                response = connection.getresponse()
                response.read()
                return response.status, time.perf_counter() - began
            finally:
                connection.close()

        ask(0)  # TokenReview answers are cached per token: every pod's first review is part of the run
        before = operator.usage()
        began = time.monotonic()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            answers = list(pool.map(ask, range(requests)))
        elapsed = time.monotonic() - began
        after = operator.usage()
        refused = [status for status, _ in answers if status != 200]
        if refused:
            raise RuntimeError(f"{grant}: {len(refused)} of {requests} refused (statuses {sorted(set(refused))})")
        figures[grant] = {
            **summary_ms(seconds for _, seconds in answers),
            "unit": "ms",
            "per_second": round(requests / elapsed, 1),
            "cpu_seconds": round(after["cpu_seconds"] - before["cpu_seconds"], 2),
        }
    return figures
