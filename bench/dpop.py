"""Sender-constrained tokens (DPoP, RFC 9449): what they cost.

    python bench/dpop.py              # `make bench`: 10 s per point
    python bench/dpop.py --quick      # `make bench-quick`: 2 s per point

issuance    Starts the local control plane and the operator (a lone replica, the per-pod token
            rate lifted: the figure is the service, not its budget), one minted credential and
            100 admitted agent pods. Each caller exchanges its pod's projected identity token
            (RFC 8693, narrowed to one intent) at 1 and 100 concurrent callers, without and with
            a fresh DPoP proof per request (ES256, made by PyJWT in the caller, on the same 2
            cores): tokens per second and the round trip p50/p99, every answer checked
            (`token_type` Bearer or DPoP).
verification  In process, no network: the public verifier (`agentcred.verify.Verifier`) on a
            bearer token and on a DPoP-bound token with its proof (proof check, key binding,
            replay cache), the proof check alone, and making a proof (the client's side):
            microseconds per call.

Figures go to bench/out/dpop.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from kubernetes import client, config

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

import aiohttp  # noqa: E402

from agentcred.api import labels, model  # noqa: E402
from agentcred.devcluster.binaries import ensure_binaries  # noqa: E402
from agentcred.devcluster.controlplane import ControlPlane  # noqa: E402
from agentcred.devcluster.install import install_agentcred  # noqa: E402
from gateway import Operator, run_callers  # noqa: E402
from harness import Lean, log_tail, wait_count  # noqa: E402
from support.dpop import DPoPKey  # noqa: E402

OUT = BENCH / "out"
NAMESPACE = "bench-dpop"
AUDIENCE = "https://docs.bench.svc"
PODS = 100
CALLERS = (1, 100)
SCOPE = "tool:search_docs action:call resource:docs:handbook"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s per point")
    parser.add_argument("--seconds", type=float, help="seconds per point (default 10)")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    results: dict[str, Any] = {
        "seconds_per_point": seconds,
        "verification_us": verification(2000 if args.quick else 20000),
    }
    ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="agentcred-bench-dpop-") as scratch, ControlPlane() as plane:
        work = Path(scratch)
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        install_agentcred(api)
        operator = Operator(plane, work, env={"AGENTCRED_TOKEN_RATE": "1000000", "AGENTCRED_TOKEN_BURST": "1000000"})
        try:
            operator.start()
            tokens, ca = prepare(api, work)
            results["issuance"] = asyncio.run(issuance(operator, tokens, ca, seconds))
        except BaseException:
            print(log_tail(work / "operator.log", 40), file=sys.stderr)
            raise
        finally:
            operator.stop()
    report(results)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dpop.json").write_text(json.dumps(results, indent=2))
    print(f"written {OUT / 'dpop.json'}")
    return 0


def prepare(api: client.ApiClient, work: Path) -> tuple[list[str], str]:
    """100 admitted pods of one minted credential; each pod's identity token (audience agentcred)."""
    core = client.CoreV1Api(api)
    lean = Lean(api.configuration)
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    core.create_namespaced_service_account(NAMESPACE, {"metadata": {"name": "agent"}})
    spec = {
        "owner": "bench@example.com",
        "category": "tool",
        "subjects": {"serviceAccounts": ["agent"]},
        "source": {"jwt": {"audiences": [AUDIENCE]}},
        "scope": {"tools": ["search_docs"], "actions": ["call"], "resources": ["docs:*"]},
        "projection": {"mountPath": "/var/run/agentcred/docs"},
    }
    body = {"apiVersion": model.API_VERSION, "kind": model.KIND, "metadata": {"name": "docs"}, "spec": spec}
    lean.call("POST", f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{NAMESPACE}/{model.PLURAL}", body)
    time.sleep(3)  # Ready, and in the webhook's index

    def pod(i: int) -> None:
        lean.call("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"agent-{i}", "labels": {labels.INJECT_LABEL: "true"},
                         "annotations": {labels.CREDENTIALS_ANNOTATION: "docs"}},
            "spec": {"serviceAccountName": "agent", "restartPolicy": "Never",
                     "containers": [{"name": "agent", "image": "example.com/agent:1"}]},
        })  # fmt: skip

    lean.run_all(pod, range(PODS))

    def released() -> int:
        return sum(1 for p in core.list_namespaced_pod(NAMESPACE).items if not p.spec.scheduling_gates)

    wait_count(released, PODS, f"{PODS} pods admitted and released", stall=300, interval=1.0)
    tokens = []
    for item in core.list_namespaced_pod(NAMESPACE).items:
        bound = {"audiences": ["agentcred"], "expirationSeconds": 3600,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": item.metadata.name,
                                    "uid": item.metadata.uid}}  # fmt: skip
        tokens.append(core.create_namespaced_service_account_token("agent", NAMESPACE, {"spec": bound}).status.token)
    ca = core.read_namespaced_config_map("agentcred-ca-bundle", "agentcred").data["ca.crt"]
    (work / "ca.crt").write_text(ca)
    return tokens, str(work / "ca.crt")


async def issuance(operator: Operator, tokens: list[str], ca: str, seconds: float) -> dict[str, Any]:
    url = f"{operator.url}/oauth2/token"
    keys = [DPoPKey() for _ in tokens]  # each pod its own key
    bodies = [
        urlencode({
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "resource": AUDIENCE,
            "scope": SCOPE,
        }).encode()
        for token in tokens
    ]  # fmt: skip
    found: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=ca), limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:

        def caller(mode: str) -> Any:
            async def exchange(i: int) -> str:
                n = i % len(bodies)
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
                if mode == "dpop":
                    headers["DPoP"] = keys[n].proof("POST", url)
                async with session.post(url, data=bodies[n], headers=headers) as response:
                    answer = await response.json()
                    if response.status != 200:
                        return f"status:{response.status}:{answer.get('error')}"
                    wanted = "DPoP" if mode == "dpop" else "Bearer"
                    return "ok" if answer["token_type"] == wanted else f"token_type:{answer['token_type']}"

            return exchange

        await run_callers(len(bodies), 2.0, caller("bearer"))  # warm: every pod's identity token reviewed
        # The two modes side by side at each point, so the machine's other load drifts less between them.
        for callers in CALLERS:
            for mode in ("bearer", "dpop"):
                found.setdefault(mode, []).append(await run_callers(callers, seconds, caller(mode)))
    return found


def verification(iterations: int) -> dict[str, float]:
    """Microseconds per call, in process, of the public verifier and the proof check."""
    import datetime as dt

    from agentcred.platform.keys import KeyRing, encode_jwt
    from agentcred.platform.proofs import ProofChecker
    from agentcred.platform.replay import ReplayCache
    from agentcred.rules.dpop import Covered, check_proof
    from agentcred.verify import Presented, Verifier

    ring = KeyRing.generate(dt.datetime.now(dt.timezone.utc))
    key = DPoPKey()
    now = int(time.time())
    base = {
        "iss": "https://agentcred.bench", "sub": "system:serviceaccount:agents:agent", "aud": AUDIENCE,
        "iat": now, "nbf": now, "exp": now + 3600, "jti": "t1",
        "agentcred": {"credential": "docs", "namespace": "agents", "pod": "agent-0", "podUID": "u1"},
    }  # fmt: skip
    bearer = encode_jwt(base, ring.current("EdDSA"))
    bound = encode_jwt({**base, "cnf": {"jkt": key.jkt}}, ring.current("EdDSA"))
    url = "https://tools.bench.svc/mcp"
    proofs = [key.proof("POST", url, access_token=bound) for _ in range(iterations)]
    # One pod's proofs beyond its share of the replay cache (8192 within a minute) are refused:
    # room for every iteration here, the figure is the cost per call.
    room = ReplayCache(per_holder=iterations + 1, total=iterations + 1)
    verifier = Verifier(jwks=ring.jwks(), issuer=base["iss"], proofs=ProofChecker(replays=room))

    def timed(run: Any) -> float:
        started = time.perf_counter()
        for i in range(iterations):
            run(i)
        return (time.perf_counter() - started) / iterations * 1e6

    return {
        "verify_bearer": timed(lambda i: verifier.verify(bearer, AUDIENCE, namespace="agents")),
        "verify_dpop_bound": timed(
            lambda i: verifier.verify(
                bound, AUDIENCE, namespace="agents", presented=Presented("POST", url, "DPoP", proofs[i])
            )
        ),
        "proof_check_only": timed(
            lambda i: check_proof(proofs[i], Covered("POST", url, access_token=bound), time.time())
        ),
        "make_proof_pyjwt": timed(lambda i: key.proof("POST", url, access_token=bound)),
    }


def report(results: dict[str, Any]) -> None:
    print("verification, microseconds per call (one core, in process):")
    for name, value in results["verification_us"].items():
        print(f"  {name:>20}: {value:8.1f} us")
    print("token issuance (token exchange, narrowed), round trip through TLS:")
    for mode, points in results.get("issuance", {}).items():
        for point in points:
            print(f"  {mode:>7} {point['callers']:>4} callers: {point['per_second']:7.0f}/s  "
                  f"p50 {point['latency_ms']['p50']:7.2f} ms  p99 {point['latency_ms']['p99']:7.2f} ms  "
                  f"failed {point['failed']}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
