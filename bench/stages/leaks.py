"""`leaks`: leak response, report -> every live copy revoked, report -> fresh value written,
and the trace round trip, at 1,000 live projections (quick: 100 live, 20 reports).

The operator (a lone replica on the shared control plane, with one leak reporter) serves N
agent pods on one jwt AgentCredential, every pod holding its value. Then, one at a time, a
pod's token is reported to POST /v1/leaks as a scanner would:

  revoked   report sent -> the pod's entry served at GET /v1/revocations (what verifiers fetch:
            every token of the pod for that credential, exchanged ones too, refused); polled
            every 5 ms
  fresh     report sent -> the pod's Secret holds a different token (polled every 10 ms); this
            includes waiting for the revocation's cut-off second to pass (tokens carry whole
            seconds), half a second on average by design -- reports are paced at random
            points of a second so the figure shows that honestly
  answered  report sent -> the intake's answer (after the fresh value is written)
  trace     POST /v1/trace round trip for a live token (signature check and index lookup)
"""

from __future__ import annotations

import base64
import json
import random
import ssl
import threading
import time
import urllib.request
from typing import Any

from agentcred.api import labels, model
from agentcred.verify import TokenRejected, Verifier, revocation_list

from ..context import Context, clean, measure_and_clean
from ..harness import summary_ms, wait_count
from ..under_test import UnderTest, pod_body

NAMESPACE = "bench-leaks"
REPORTER = ("agentcred", "bench-reporter")


def run(ctx: Context) -> dict[str, Any]:
    options, operator = ctx.options, ctx.operator
    live, reports = options.leaks_live, min(options.leaks_reports, options.leaks_live)
    operator.start("--cluster-leak-reporters", "/".join(REPORTER))

    def stop_after_cleaning() -> float:
        try:
            return clean(ctx.lean, NAMESPACE, live * 3)
        finally:
            operator.stop()

    figures = measure_and_clean(lambda: on_cluster(operator, live, reports), stop_after_cleaning)
    return {"live": live, "reports": reports, **figures}


def on_cluster(operator: UnderTest, live: int, reports: int) -> dict[str, Any]:
    lean = operator.lean
    operator.namespace(NAMESPACE, credentials=0)
    credential = {
        "owner": "bench@example.com",
        "category": "model",
        "subjects": {"serviceAccounts": ["agent"]},
        "source": {"jwt": {"audiences": ["bench"]}},
        "projection": {"mountPath": "/var/run/agentcred/llm"},
    }
    lean.call(
        "POST",
        f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{NAMESPACE}/{model.PLURAL}",
        {"apiVersion": model.API_VERSION, "kind": model.KIND, "metadata": {"name": "llm"}, "spec": credential},
    )
    lean.call("POST", f"/api/v1/namespaces/{REPORTER[0]}/serviceaccounts", {"metadata": {"name": REPORTER[1]}})
    token = lean.json(
        "POST",
        f"/api/v1/namespaces/{REPORTER[0]}/serviceaccounts/{REPORTER[1]}/token",
        {"spec": {"audiences": [labels.SERVICE_ACCOUNT_AUDIENCE], "expirationSeconds": 3600}},
    )["status"]["token"]
    time.sleep(2)  # Ready, and in the webhook's index
    lean.run_all(lambda i: lean.call("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod_body(f"agent-{i}", "llm")),
                 range(live))  # fmt: skip
    managed = f"/api/v1/namespaces/{NAMESPACE}/secrets?labelSelector={labels.MANAGED_LABEL}%3Dtrue"
    wait_count(lambda: len(lean.json("GET", managed)["items"]), live, f"{live} values written", stall=300, interval=1)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # loopback, our own operator
    url = operator.running.api_url

    def post(path: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        request = urllib.request.Request(
            url + path, data=json.dumps(items).encode(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, context=context, timeout=120) as response:
            answers: list[dict[str, Any]] = json.loads(response.read())
            return answers

    ca = lean.json("GET", "/api/v1/namespaces/agentcred/configmaps/agentcred-ca-bundle")["data"][labels.CA_KEY]
    (operator.workdir / "leaks-ca.crt").write_text(ca)
    verifier = Verifier.from_url(url, cafile=str(operator.workdir / "leaks-ca.crt"))

    def refused(token: bytes) -> bool:
        """What a verifier concludes from the list the operator serves now (its JWKS fetched once)."""
        with urllib.request.urlopen(url + "/v1/revocations", context=context, timeout=10) as response:
            served = revocation_list(json.loads(response.read()))
        try:
            Verifier(jwks=verifier.jwks, issuer=verifier.issuer, revoked=served).verify(
                token.decode(), "bench", namespace=NAMESPACE
            )
        except TokenRejected as rejected:
            if rejected.reason != "revoked":
                raise
            return True
        return False

    def held(name: str) -> bytes:
        secret = lean.json("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}")
        return base64.b64decode(secret["data"][labels.value_key("llm")])

    targets = [s["metadata"]["name"] for s in lean.json("GET", managed)["items"]][:reports]
    revoked, answered, fresh, traced = [], [], [], []
    pace = random.Random(13)
    for name in targets:
        value = held(name)
        started = time.perf_counter()
        post("/v1/trace", [{"token": value.decode()}])
        traced.append(time.perf_counter() - started)
        time.sleep(pace.random())  # reports arrive at any point of a second, not just after one
        answers: list[dict[str, Any]] = []
        started = time.perf_counter()
        sender = threading.Thread(
            target=lambda v=value, into=answers: into.extend(
                post("/v1/leaks", [{"token": v.decode(), "source": "bench"}])
            )
        )
        sender.start()
        while not refused(value):
            time.sleep(0.005)
        revoked.append(time.perf_counter() - started)
        while held(name) == value:
            time.sleep(0.01)
        fresh.append(time.perf_counter() - started)
        sender.join()
        answered.append(time.perf_counter() - started)
        if answers[0]["outcome"] != "revoked":
            raise RuntimeError(f"a leak report was not revoked: {answers}")
    return {
        "report -> every live copy revoked": summary_ms(revoked),
        "report -> fresh value written": summary_ms(fresh),
        "report -> intake answered": summary_ms(answered),
        "trace round trip (HTTPS)": summary_ms(traced),
    }
