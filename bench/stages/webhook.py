"""`webhook`: admission latency per AdmissionReview, straight to the operator's webhook (one
HTTPS connection, one review at a time), for an opted-in pod the webhook admits."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from typing import Any

from ..context import Context, clean
from ..harness import summary_ms
from ..under_test import pod_body

NAMESPACE = "bench-webhook"


def review(i: int, credential: str) -> bytes:
    pod = pod_body(f"w-{i}", credential)
    pod["metadata"]["namespace"] = NAMESPACE
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": f"00000000-0000-0000-0000-{i:012d}",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "namespace": NAMESPACE,
                "userInfo": {"username": "bench"},
                "object": pod,
            },
        }
    ).encode()


def run(ctx: Context) -> dict[str, Any]:
    operator, count = ctx.operator, ctx.options.webhook
    startup = operator.start()
    try:
        names = operator.namespace(NAMESPACE)
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # loopback, our own operator
        port = operator.running.webhook_port
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        durations = []
        for i in range(count):
            payload = review(i, names[0])
            began = time.perf_counter()
            connection.request("POST", "/agentcred-inject", body=payload, headers={"Content-Type": "application/json"})
            answer = json.loads(connection.getresponse().read())
            durations.append(time.perf_counter() - began)
            if not answer["response"]["allowed"]:
                raise RuntimeError(f"the webhook refused a benchmark pod: {answer['response'].get('status')}")
        return {**summary_ms(durations), "unit": "ms", "operator_startup_seconds": startup}
    finally:
        try:
            clean(ctx.lean, NAMESPACE, 10)
        finally:
            operator.stop()
