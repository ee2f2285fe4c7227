"""`dpop`: what sender-constrained tokens (DPoP, RFC 9449) cost (10 s per point; quick: 2 s).

issuance      The operator (a lone replica on the shared control plane, the per-pod token rate
              lifted: the figure is the service, not its budget), one minted credential and 100
              admitted agent pods. Each caller exchanges its own pod's projected identity token
              (RFC 8693, narrowed to one intent) at 1 and 100 concurrent callers, without and
              with a fresh DPoP proof per request (ES256, made by PyJWT in the caller, each pod
              its own key, on the same 2 cores): tokens per second and the round trip p50/p99
              through TLS, every answer checked (`token_type` Bearer or DPoP). Bearer issuance
              is DPoP issuance's floor: the two are `bench.hot_paths` points of one path, taken
              side by side at each concurrency so the machine's other load drifts less between
              them.
verification  In process, no network (20,000 calls each; quick: 2,000): the public verifier
              (`agentcred.verify.Verifier`) on a bearer token and on a DPoP-bound token with its
              proof (proof check, key binding, replay cache), the proof check alone, and making
              a proof (the client's side): microseconds per call.

The verification micro-benchmark builds a key ring, a proof checker with room in its replay
cache and the proof check itself, so it imports the platform and the rules: the import
contract in pyproject.toml names each module it may use.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import secrets
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from agentcred.api import labels, model
from agentcred.platform.keys import KeyRing, encode_jwt
from agentcred.platform.proofs import ProofChecker
from agentcred.platform.replay import ReplayCache
from agentcred.rules.dpop import Covered, check_proof
from agentcred.verify import Presented, Verifier

from ..context import Context, clean, measure_and_clean
from ..harness import wait_count
from ..hot_paths import AGENTCRED, FLOOR, Call, point, run_callers
from ..under_test import UnderTest, is_ready, pod_body

NAMESPACE = "bench-dpop"
CREDENTIAL = "docs"
AUDIENCE = "https://docs.bench.svc"
SCOPE = "tool:search_docs action:call resource:docs:handbook"
PODS = 100
CALLERS = (1, 100)
ISSUANCE = "token exchange: DPoP-bound (floor: bearer)"
MODES = {"bearer": FLOOR, "dpop": AGENTCRED}


def run(ctx: Context) -> dict[str, Any]:
    operator, seconds = ctx.operator, ctx.options.gateway_seconds
    results: dict[str, Any] = {
        "seconds_per_point": seconds,
        "verification_us": verification(2000 if ctx.options.quick else 20000),
    }
    for name, value in results["verification_us"].items():
        print(f"  verification {name:>17}: {value:7.1f} us", flush=True)
    # Every pod's first request is reviewed, from one address: the per-pod and per-address
    # budgets are lifted out of the way, as in the tokens stage.
    lifted = {"AGENTCRED_TOKEN_RATE": "1000000", "AGENTCRED_TOKEN_BURST": "1000000", "AGENTCRED_SOURCE_BURST": "100000"}
    operator.start(env=lifted)

    def stop_after_cleaning() -> float:
        try:
            return clean(ctx.lean, NAMESPACE, PODS * 3)
        finally:
            operator.stop()

    def measure() -> dict[str, Any]:
        tokens, ca = prepare(operator)
        with operator.profiled("dpop"):
            return {"issuance": asyncio.run(issuance(operator, tokens, ca, seconds))}

    results.update(measure_and_clean(measure, stop_after_cleaning))
    results["paths"] = [point(ISSUANCE, MODES[mode], p, mode=mode) for mode in MODES for p in results["issuance"][mode]]
    return results


class ProofKey:
    """A client's ES256 key and the DPoP proofs it makes, with PyJWT: a proof the operator
    accepts was made by a JOSE library other than the one it checks proofs with."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        public: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.private_key.public_key()))
        self.public_jwk = {name: public[name] for name in ("crv", "kty", "x", "y")}

    @property
    def jkt(self) -> str:
        """RFC 7638 thumbprint: the required members, sorted, no whitespace, SHA-256."""
        members = json.dumps(self.public_jwk, separators=(",", ":"), sort_keys=True).encode()
        return b64url(hashlib.sha256(members).digest())

    def proof(self, method: str, url: str, access_token: str | None = None) -> str:
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url, "iat": int(time.time())}
        if access_token is not None:
            claims["ath"] = b64url(hashlib.sha256(access_token.encode()).digest())
        headers = {"typ": "dpop+jwt", "jwk": self.public_jwk}
        return jwt.encode(claims, self.private_key, algorithm="ES256", headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def prepare(operator: UnderTest) -> tuple[list[str], str]:
    """PODS admitted pods of one minted credential, a bound identity token for each (audience
    agentcred), and the operator's CA."""
    lean = operator.lean
    operator.namespace(NAMESPACE, credentials=0)
    collection = f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{NAMESPACE}/{model.PLURAL}"
    spec = {
        "owner": "bench@example.com",
        "category": "tool",
        "subjects": {"serviceAccounts": ["agent"]},
        "source": {"jwt": {"audiences": [AUDIENCE]}},
        "scope": {"tools": ["search_docs"], "actions": ["call"], "resources": ["docs:*"]},
        "projection": {"mountPath": f"/var/run/agentcred/{CREDENTIAL}"},
    }
    body = {"apiVersion": model.API_VERSION, "kind": model.KIND, "metadata": {"name": CREDENTIAL}, "spec": spec}
    lean.call("POST", collection, body)
    wait_count(lambda: int(is_ready(lean.json("GET", f"{collection}/{CREDENTIAL}"))), 1, f"{CREDENTIAL} Ready")
    time.sleep(1)  # and in the webhook's index
    pods_path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    lean.run_all(lambda i: lean.call("POST", pods_path, pod_body(f"agent-{i}", CREDENTIAL)), range(PODS))

    def released() -> list[dict[str, Any]]:
        return [pod for pod in lean.json("GET", pods_path)["items"] if not pod["spec"].get("schedulingGates")]

    wait_count(lambda: len(released()), PODS, f"{PODS} pods admitted and released", stall=300, interval=1.0)

    def identity(pod: dict[str, Any]) -> str:
        meta = pod["metadata"]
        ref = {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
        spec = {"audiences": ["agentcred"], "expirationSeconds": 3600, "boundObjectRef": ref}
        path = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/agent/token"
        return str(lean.json("POST", path, {"spec": spec})["status"]["token"])

    tokens = [identity(pod) for pod in released()]
    ca = lean.json("GET", "/api/v1/namespaces/agentcred/configmaps/agentcred-ca-bundle")["data"][labels.CA_KEY]
    return tokens, str(ca)


async def issuance(operator: UnderTest, tokens: list[str], ca: str, seconds: float) -> dict[str, list[dict[str, Any]]]:
    """Each mode at each concurrency, bearer and DPoP side by side."""
    url = f"{operator.running.api_url}/oauth2/token"
    keys = [ProofKey() for _ in tokens]  # each pod its own key
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
    found: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cadata=ca), limit=200)
    async with aiohttp.ClientSession(connector=connector) as session:

        def caller(mode: str) -> Call:
            wanted = "DPoP" if mode == "dpop" else "Bearer"

            async def exchange(i: int) -> str:
                n = i % len(bodies)
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
                if mode == "dpop":
                    headers["DPoP"] = keys[n].proof("POST", url)
                async with session.post(url, data=bodies[n], headers=headers) as response:
                    answer = await response.json()
                    if response.status != 200:
                        return f"status:{response.status}:{answer.get('error')}"
                    return "ok" if answer["token_type"] == wanted else f"token_type:{answer['token_type']}"

            return exchange

        await run_callers(len(bodies), 2.0, caller("bearer"))  # warm: every pod's identity token reviewed
        for callers in CALLERS:
            for mode in MODES:
                p = await run_callers(callers, seconds, caller(mode))
                found[mode].append(p)
                print(f"  issuance {mode:>6} {callers:>4} callers: {p['per_second']:7.0f}/s  "
                      f"p50 {p['latency_ms']['p50']:7.2f} ms  p99 {p['latency_ms']['p99']:7.2f} ms  "
                      f"failed {p['failed']}", flush=True)  # fmt: skip
    return found


def verification(iterations: int) -> dict[str, float]:
    """Microseconds per call, in process, of the public verifier, the proof check, and making
    a proof."""
    ring = KeyRing.generate(dt.datetime.now(dt.timezone.utc))
    key = ProofKey()
    now, issuer = int(time.time()), "https://agentcred.bench"
    base = {
        "iss": issuer, "sub": "system:serviceaccount:agents:agent", "aud": AUDIENCE,
        "iat": now, "nbf": now, "exp": now + 3600, "jti": "t1",
        "agentcred": {"credential": CREDENTIAL, "namespace": "agents", "pod": "agent-0", "podUID": "u1"},
    }  # fmt: skip
    bearer = encode_jwt(base, ring.current("EdDSA"))
    bound = encode_jwt({**base, "cnf": {"jkt": key.jkt}}, ring.current("EdDSA"))
    url = "https://tools.bench.svc/mcp"
    proofs = [key.proof("POST", url, access_token=bound) for _ in range(iterations)]
    # One pod's proofs beyond its share of the replay cache (8192 within a minute) are refused:
    # room for every iteration here, the figure is the cost per call.
    room = ReplayCache(per_holder=iterations + 1, total=iterations + 1)
    verifier = Verifier(jwks=ring.jwks(), issuer=issuer, proofs=ProofChecker(replays=room))

    def timed(call: Callable[[int], object]) -> float:
        started = time.perf_counter()
        for i in range(iterations):
            call(i)
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
