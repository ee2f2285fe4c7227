"""Leak response figures: report -> every live copy revoked, report -> fresh value written,
and trace lookups.

    python bench/leaks.py              # `make bench`: 1,000 live projections, 100 reports
    python bench/leaks.py --quick      # `make bench-quick`: 100 live, 20 reports

Starts the local control plane and the operator (a lone replica, with one leak reporter),
creates N agent pods on one jwt AgentCredential and waits until every pod holds its value.
Then, one at a time, a pod's token is reported to POST /v1/leaks as a scanner would:

  revoked   report sent -> the pod's entry served at GET /v1/revocations (what verifiers fetch:
            every token of the pod for that credential, exchanged ones too, refused); polled
            every 5 ms
  fresh     report sent -> the pod's Secret holds a different token (polled every 10 ms); this
            includes waiting for the revocation's cut-off second to pass (tokens carry whole
            seconds), half a second on average by design -- reports are paced at random
            points of a second so the figure shows that honestly
  answered  report sent -> the intake's answer (after the fresh value is written)
  trace     POST /v1/trace round trip for a live token (signature check and index lookup)

and, in process, one trace lookup against an index of 10,000 live values (by value, by
fingerprint, by short fingerprint, a minted token, an unknown string), the operator's own
code without the HTTP around it. Figures go to bench/out/leaks.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import random
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client, config

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(BENCH))

from agentcred.api import labels, model  # noqa: E402
from agentcred.api.fingerprints import short  # noqa: E402
from agentcred.api.projection import IssuedValue, ProjectionState  # noqa: E402
from agentcred.devcluster.binaries import ensure_binaries  # noqa: E402
from agentcred.devcluster.controlplane import ControlPlane  # noqa: E402
from agentcred.devcluster.install import install_agentcred  # noqa: E402
from agentcred.devcluster.local_operator import LocalOperator  # noqa: E402
from agentcred.platform.fingerprints import Fingerprints  # noqa: E402
from agentcred.platform.keys import KeyRing, encode_jwt  # noqa: E402
from agentcred.platform.revocations import RevocationList, served_key  # noqa: E402
from agentcred.rules.leaks import Candidate  # noqa: E402
from agentcred.runtime.leaks.tracer import Tracer  # noqa: E402
from agentcred.runtime.store import ProjectionStore  # noqa: E402
from harness import Lean, log_tail, summary_ms, wait_count  # noqa: E402

OUT = BENCH / "out"
NAMESPACE = "bench-leaks"
REPORTER = ("agentcred", "bench-reporter")
REPORTER_FLAG = "--cluster-leak-reporters"  # it acts in the bench's namespace


class _NothingLive:
    """The cluster as the lookup benchmark sees it: no live pod, no credential to judge."""

    def leading(self) -> bool:
        return True

    def credential(self, namespace: str, name: str) -> None:
        return None

    def credentials(self, namespace: str | None = None) -> list[Any]:
        return []

    def pod(self, key: str) -> None:
        return None

    def pod_by_name(self, namespace: str, name: str) -> None:
        return None

    def live_pods(self, namespace: str) -> list[Any]:
        return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 live projections, 20 reports")
    parser.add_argument("--live", type=int, help="live projections during the reports (default 1,000)")
    parser.add_argument("--reports", type=int, help="reports measured, one at a time (default 100)")
    parser.add_argument("--index", type=int, default=10_000, help="live values in the in-process trace index")
    args = parser.parse_args()
    live = args.live or (100 if args.quick else 1000)
    reports = min(args.reports or (20 if args.quick else 100), live)

    results: dict[str, Any] = {"live": live, "reports": reports, "index": args.index}
    results["trace_in_process"] = trace_in_process(args.index)
    print_table("trace lookup, in process", results["trace_in_process"])

    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="agentcred-bench-leaks-") as scratch, ControlPlane() as plane:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        install_agentcred(api)
        operator = LocalOperator(plane.kubeconfig, Path(scratch), REPORTER_FLAG, "/".join(REPORTER), detached=False)
        try:
            operator.start(timeout=300)
            results["cluster"] = on_cluster(api, Lean(api.configuration), operator, live, reports)
        except BaseException:
            print(log_tail(Path(scratch) / "operator.log", 40), file=sys.stderr)
            raise
        finally:
            operator.stop()
    print_table(f"leak response at {live} live projections ({reports} reports)", results["cluster"])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "leaks.json").write_text(json.dumps(results, indent=2))
    print(f"written {OUT / 'leaks.json'}")
    return 0


# -- in process: the index at 10,000 -------------------------------------------------------


def trace_in_process(size: int) -> dict[str, Any]:
    ring = KeyRing.generate(dt.datetime.now(dt.timezone.utc))
    fingerprints = Fingerprints(lambda: ring)
    store, now = ProjectionStore(), dt.datetime.now(dt.timezone.utc)
    issuer = "https://agentcred.bench"
    tokens, statics = [], []
    for i in range(size):
        uid, jti = f"uid-{i}", f"jti-{i}"
        if i % 2:
            value = f"sk-static-{i:08d}".encode()
            statics.append(value)
            issued = IssuedValue(
                "vendor",
                "tool",
                now,
                now + dt.timedelta(minutes=15),
                now,
                fingerprints(value),
                None,
                source="secretRef",
            )
            name = "vendor"
        else:
            claims = {"iss": issuer, "iat": int(now.timestamp()), "exp": int(now.timestamp()) + 900, "jti": jti,
                      "agentcred": {"namespace": "ns", "credential": "llm", "pod": f"p{i}", "podUID": uid}}  # fmt: skip
            value = encode_jwt(claims, ring.current("EdDSA")).encode()
            tokens.append(value)
            issued = IssuedValue("llm", "model", now, now + dt.timedelta(minutes=15), now, fingerprints(value), jti)
            name = "llm"
        store.put(ProjectionState("ns", f"{i:016x}", f"p{i}", uid, None, values={name: issued}))
    tracer = Tracer(
        keyring=lambda: ring,
        issuer=issuer,
        fingerprints=fingerprints,
        store=store,
        revocations=RevocationList(),
        view=_NothingLive(),
    )
    samples = 500
    kinds = {
        "static value": [Candidate(token=statics[i * 7 % len(statics)].decode()) for i in range(samples)],
        "minted token": [Candidate(token=tokens[i * 7 % len(tokens)].decode()) for i in range(samples)],
        "fingerprint": [Candidate(fingerprint=fingerprints(statics[i * 3 % len(statics)])) for i in range(samples)],
        "short fingerprint": [
            Candidate(fingerprint=short(fingerprints(statics[i * 3 % len(statics)]))) for i in range(samples // 10)
        ],
        "unknown string": [Candidate(token=f"ghp_unknown{i:030d}") for i in range(samples)],
    }
    figures = {}
    for kind, candidates in kinds.items():
        durations = []
        for candidate in candidates:
            started = time.perf_counter()
            trace = tracer.trace(candidate)
            durations.append(time.perf_counter() - started)
            assert (trace.verdict == "unknown") == (kind == "unknown string"), (kind, trace.verdict)
        figures[kind] = summary_ms(durations)
    return figures


# -- on the cluster: 1,000 live ------------------------------------------------------------


def on_cluster(api: client.ApiClient, lean: Lean, operator: LocalOperator, live: int, reports: int) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": "agent"}})
    core.create_namespaced_service_account(REPORTER[0], {"metadata": {"name": REPORTER[1]}})
    token = core.create_namespaced_service_account_token(
        REPORTER[1], REPORTER[0], {"spec": {"audiences": [labels.SERVICE_ACCOUNT_AUDIENCE], "expirationSeconds": 3600}}
    ).status.token
    lean.call(
        "POST",
        f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{NAMESPACE}/{model.PLURAL}",
        {
            "apiVersion": model.API_VERSION,
            "kind": model.KIND,
            "metadata": {"name": "llm"},
            "spec": {
                "owner": "bench@example.com",
                "category": "model",
                "subjects": {"serviceAccounts": ["agent"]},
                "source": {"jwt": {"audiences": ["bench"]}},
                "projection": {"mountPath": "/var/run/agentcred/llm"},
            },
        },
    )
    time.sleep(2)  # Ready, and in the webhook's index

    def pod(i: int) -> None:
        lean.call("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"agent-{i}", "labels": {labels.INJECT_LABEL: "true"},
                         "annotations": {labels.CREDENTIALS_ANNOTATION: "llm"}},
            "spec": {"serviceAccountName": "agent", "restartPolicy": "Never",
                     "containers": [{"name": "agent", "image": "example.com/agent:1"}]},
        })  # fmt: skip

    lean.run_all(pod, range(live))

    def written() -> int:
        listed = lean.json("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets?labelSelector={labels.MANAGED_LABEL}%3Dtrue")
        return len(listed["items"])

    wait_count(written, live, f"{live} values written", stall=300, interval=1.0)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # loopback, our own operator

    def post(path: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        request = urllib.request.Request(
            operator.api_url + path, data=json.dumps(items).encode(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, context=context, timeout=120) as response:
            answers: list[dict[str, Any]] = json.loads(response.read())
            return answers

    def listed(uid: str) -> bool:
        with urllib.request.urlopen(operator.api_url + "/v1/revocations", context=context, timeout=10) as response:
            pod = served_key(uid, "")[0]
            return any(e["pod"] == pod for e in json.loads(response.read())["revoked"])

    def held(name: str) -> bytes:
        secret = lean.json("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}")
        return base64.b64decode(secret["data"][labels.value_key("llm")])

    secrets = lean.json("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets?labelSelector={labels.MANAGED_LABEL}%3Dtrue")
    targets = [(s["metadata"]["name"], s["metadata"]["labels"][labels.POD_UID_LABEL]) for s in secrets["items"]][
        :reports
    ]
    revoked, answered, fresh, traced = [], [], [], []
    pace = random.Random(13)
    for name, uid in targets:
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
        while not listed(uid):  # what verifiers fetch: every token of the pod for it refused
            time.sleep(0.005)
        revoked.append(time.perf_counter() - started)
        while held(name) == value:
            time.sleep(0.01)
        fresh.append(time.perf_counter() - started)
        sender.join()
        answered.append(time.perf_counter() - started)
        assert answers[0]["outcome"] == "revoked", answers
    return {
        "report -> every live copy revoked": summary_ms(revoked),
        "report -> fresh value written": summary_ms(fresh),
        "report -> intake answered": summary_ms(answered),
        "trace round trip (HTTPS)": summary_ms(traced),
    }


def print_table(title: str, figures: dict[str, Any]) -> None:
    print(f"\n== {title} ==")
    print(f"{'':40} {'n':>5} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for name, figure in figures.items():
        if isinstance(figure, dict):
            print(f"{name:40} {figure['n']:>5} {figure['p50']:>9.2f} {figure['p99']:>9.2f} {figure['max']:>9.2f}")
        else:
            print(f"{name:40} {figure:>9.1f}")


if __name__ == "__main__":
    sys.exit(main())
