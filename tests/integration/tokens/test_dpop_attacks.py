"""Attacks on DPoP (RFC 9449) and workload identity assertions at the real token endpoint, by
identities that are not cluster admins: the namespace admin of the pod's own tenant (who may
mint tokens of the tenant's ServiceAccounts) and the pod's own workload identity.

The credential requires DPoP. Each request below is otherwise valid -- the pod's own identity,
admitted, a subject, proofs by the pod's own key (its `dpop.jwk`, which its identity token is
bound to) -- so the refusal is the proof's or the assertion's alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

from agents import create_credential, dpop_key_of, service_account, start_agent
from clusterkit import Cluster, OperatorProcess
from identities import namespace_admin
from oauth import JWT_BEARER, JWT_TYPE, TOKEN_EXCHANGE, bound_token, token_request
from support.dpop import DPoPKey, b64url

AUDIENCE = "https://llm-gateway.internal"
SCOPE = {"tools": ["search_docs"], "actions": ["call"], "resources": ["docs:*"]}


def _shown(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer as a failure may print it: never the token."""
    return {k: v for k, v in answer.items() if k != "access_token"}


def _dpop_agent(cluster: Cluster, namespace: str) -> dict[str, Any]:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE, source={"jwt": {"audiences": [AUDIENCE], "dpop": "required"}})
    return start_agent(cluster, namespace)


def _assertion(api: client.ApiClient, namespace: str, pod: dict[str, Any], audience: str, seconds: int) -> str:
    spec = {
        "audiences": [audience],
        "expirationSeconds": seconds,
        "boundObjectRef": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
        },
    }
    answer = client.CoreV1Api(api).create_namespaced_service_account_token("research-agent", namespace, {"spec": spec})
    return str(answer.status.token)


def test_a_long_lived_workload_assertion_is_refused(
    cluster: Cluster, operator: OperatorProcess, kubelet: object, namespace: str, tmp_path: Path
) -> None:
    """Each workload assertion's jti is remembered until the assertion expires, in a memory
    every tenant shares. The tenant's namespace admin minted assertions for its pods living a
    year (the API server caps nothing by default): each held its room for a year, and enough of
    them left every other tenant's pods refused. An assertion living past an hour is refused."""
    pod = _dpop_agent(cluster, namespace)
    admin = namespace_admin(cluster, namespace, tmp_path)
    token_url = f"{operator.api_url}/oauth2/token"
    key = DPoPKey.from_private_jwk(dpop_key_of(cluster, pod))
    year = _assertion(admin, namespace, pod, token_url, 365 * 24 * 3600)
    fields = {"grant_type": JWT_BEARER, "assertion": year, "resource": AUDIENCE}
    status, answer, _ = token_request(operator, fields, DPoP=key.proof("POST", token_url))
    assert (status, answer.get("error")) == (400, "invalid_grant"), _shown(answer)
    assert "lives at most 3600 s" in answer["error_description"]
    # The kubelet's own (an hour at most, 10 minutes here): good once, with a proof; never without.
    hour = _assertion(admin, namespace, pod, token_url, 600)
    fields = {"grant_type": JWT_BEARER, "assertion": hour, "resource": AUDIENCE}
    status, answer, _ = token_request(operator, fields)
    assert (status, answer.get("error")) == (400, "invalid_dpop_proof"), _shown(
        answer
    )  # dpop: required holds on this path
    fresh = _assertion(admin, namespace, pod, token_url, 600)
    fields = {"grant_type": JWT_BEARER, "assertion": fresh, "resource": AUDIENCE}
    status, answer, _ = token_request(operator, fields, DPoP=key.proof("POST", token_url))
    assert status == 200 and answer["token_type"] == "DPoP", _shown(answer)


def _operator_keys(operator: OperatorProcess) -> list[dict[str, Any]]:
    context = ssl.create_default_context(cafile=operator.ca_file())
    with urllib.request.urlopen(f"{operator.api_url}/.well-known/jwks.json", context=context, timeout=10) as answer:
        return list(json.loads(answer.read())["keys"])


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    encode = lambda part: b64url(json.dumps(part).encode())  # noqa: E731
    return f"{encode(header)}.{encode(claims)}.{b64url(signature)}"


def test_forged_and_misdirected_proofs_are_refused_at_the_token_endpoint(
    cluster: Cluster, operator: OperatorProcess, kubelet: object, namespace: str
) -> None:
    """The pod's own identity token, with a proof that needs no key (alg none, HMAC keyed with
    a public key, the operator's own public key in the header, a private key embedded), or a
    proof by a key it holds made for another URL (a trailing slash, http, another path's case),
    too far in the future or too old. Every one refused; the RFC's own equivalences (scheme and
    host case, a query or fragment) accepted."""
    pod = _dpop_agent(cluster, namespace)
    token_url = f"{operator.api_url}/oauth2/token"
    key = DPoPKey.from_private_jwk(dpop_key_of(cluster, pod))
    now = int(time.time())
    claims = {"jti": "j", "htm": "POST", "htu": token_url, "iat": now}
    operator_key = next(k for k in _operator_keys(operator) if k["kty"] == "EC")
    public = {k: operator_key[k] for k in ("kty", "crv", "x", "y")}
    hs_header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": public}
    signing_input = f"{b64url(json.dumps(hs_header).encode())}.{b64url(json.dumps(claims).encode())}"
    hs256 = hmac.new(json.dumps(public).encode(), signing_input.encode(), hashlib.sha256).digest()
    private = {**key.public_jwk, "d": b64url(key.private_key.private_numbers().private_value.to_bytes(32, "big"))}
    refused = {
        "alg none": _unsigned({"typ": "dpop+jwt", "alg": "none", "jwk": key.public_jwk}, claims, b"x"),
        "HS256 keyed with the operator's public key": f"{signing_input}.{b64url(hs256)}",
        "the operator's public key, a signature it never made": _unsigned(
            {"typ": "dpop+jwt", "alg": "ES256", "jwk": public}, claims, b"\x01" * 64
        ),
        "a private key in the header": key.proof("POST", token_url, header={"jwk": private}),
        "a trailing slash": key.proof("POST", f"{token_url}/"),
        "http for https": key.proof("POST", token_url.replace("https://", "http://")),
        "another path's case": key.proof("POST", token_url.replace("oauth2", "OAuth2")),
        "made 30 s ahead": key.proof("POST", token_url, iat=now + 30),
        "made 5 minutes ago": key.proof("POST", token_url, iat=now - 300),
        "GET for POST": key.proof("GET", token_url),
    }
    fields = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT_TYPE, "resource": AUDIENCE}
    for case, proof in refused.items():
        fields["subject_token"] = bound_token(cluster, namespace, pod)
        status, answer, _ = token_request(operator, fields, DPoP=proof)
        assert (status, answer.get("error")) == (400, "invalid_dpop_proof"), (case, _shown(answer))
    for equivalent in (token_url.replace("https://", "HTTPS://"), f"{token_url}?q=1#f"):
        status, answer, _ = token_request(operator, fields, DPoP=key.proof("POST", equivalent))
        assert status == 200 and answer["token_type"] == "DPoP", (equivalent, _shown(answer))
        claims_of = json.loads(base64.urlsafe_b64decode(answer["access_token"].split(".")[1] + "==="))
        assert claims_of["cnf"] == {"jkt": key.jkt}
