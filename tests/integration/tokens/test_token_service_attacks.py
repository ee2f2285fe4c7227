"""Attacks on what the token service grants, checks and revokes, by identities that are not
cluster admins (a pod creator, a namespace admin of another tenant, a pod's own workload
identity), on the real control plane. Each test performs the attack and asserts that it is
refused; those that once succeeded name the fix in SECURITY.md."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from agentcred.api import labels
from agentcred.platform.keys import b64url
from agentcred.platform.revocations import served_key
from agentcred.verify import TokenRejected, Verifier
from agents import (
    admitted_copy,
    create_credential,
    pod_events,
    read_secret,
    running_pod,
    secret_name_of,
    service_account,
    start_agent,
    value_of,
)
from clusterkit import INTROSPECTOR, REPORTER_ENV, Cluster, OperatorProcess, ensure_namespace, operator_paused, wait_for
from identities import PODS_ONLY, namespace_admin, narrow_user
from oauth import (
    ACCESS_TOKEN_TYPE,
    JWT_BEARER,
    JWT_TYPE,
    TOKEN_EXCHANGE,
    bound_token,
    details,
    exchange,
    post,
    token_request,
)
from samples import credential

AUDIENCE = "https://llm-gateway.internal"
SCOPE = {"tools": ["web-search"], "resources": ["repo:acme/*"], "actions": ["read"]}
READ_APP = details("web-search", ["read"], "repo:acme/app")


def _agent(
    cluster: Cluster, namespace: str, name: str = "agent", credentials: str = "research-llm"
) -> tuple[dict, str]:
    """An admitted, running agent pod and its projected agentcred token (its first credential)."""
    pod = start_agent(cluster, namespace, name, credentials)
    value = value_of(read_secret(cluster, namespace, secret_name_of(pod)), credentials.split(",")[0])
    assert value is not None
    return pod, value.decode()


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _served_revocations(operator: OperatorProcess) -> str:
    """The revocation list as anyone who reaches the token service reads it: no token, no identity."""
    context = ssl.create_default_context(cafile=operator.ca_file())
    with urllib.request.urlopen(f"{operator.api_url}/v1/revocations", context=context, timeout=10) as answer:
        return answer.read().decode()


def _revocations(operator: OperatorProcess, pod_uid: str) -> list[dict]:
    pod, _ = served_key(pod_uid, "")
    return [e for e in json.loads(_served_revocations(operator))["revoked"] if e["pod"] == pod]


def _revoke(operator: OperatorProcess, token: str) -> tuple[int, dict | None, dict[str, str]]:
    return post(f"{operator.api_url}/oauth2/revoke", operator.ca_file(), {"token": token})


def _caller(cluster: Cluster, namespace: str, name: str) -> str:
    ensure_namespace(cluster, namespace)
    try:
        service_account(cluster, namespace, name)
    except ApiException as error:
        if error.status != 409:
            raise
    return bound_token(cluster, namespace, None, sa=name)


def _introspect(operator: OperatorProcess, token: str, caller: str) -> tuple[int, dict]:
    status, body, _ = post(
        f"{operator.api_url}/oauth2/introspect",
        operator.ca_file(),
        {"token": token},
        {"Authorization": f"Bearer {caller}"},
    )
    return status, body


def _reviews(operator: OperatorProcess) -> float:
    return sum(v for (name, _), v in operator.metrics().items() if name == "agentcred_token_reviews_total")


def _jws(header: dict, claims: dict, signature: bytes = b"x" * 64) -> str:
    encode = lambda part: b64url(json.dumps(part, separators=(",", ":")).encode())  # noqa: E731
    return f"{encode(header)}.{encode(claims)}.{b64url(signature)}"


def _jwks(operator: OperatorProcess) -> list[dict]:
    context = ssl.create_default_context(cafile=operator.ca_file())
    with urllib.request.urlopen(f"{operator.api_url}/.well-known/jwks.json", context=context, timeout=10) as answer:
        return json.loads(answer.read())["keys"]


# -- revocation ---------------------------------------------------------------------------


def test_one_pod_cannot_grow_the_revocation_list_by_revoking_its_own_tokens(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """Every holder revocation (RFC 7009) used to add an entry of its own, and a pod may be
    issued 5 tokens a second: one pod revoking what it is issued kept ~1,650 entries alive
    (each lives until its token's expiry), all in its pod's shard -- a handful of pods and the
    900 KiB shard cannot be saved, every replica turns not ready, and no revocation in that
    shard (any tenant's) reaches the other replicas. A pod's own entries are now bounded."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, _ = _agent(cluster, namespace)
    uid = pod["metadata"]["uid"]
    token = bound_token(cluster, namespace, pod)
    answers: list[tuple[int, dict | None, dict[str, str]]] = []
    revoked: list[str] = []
    for _ in range(400):
        status, body = exchange(operator, token, authorization_details=READ_APP)
        if status == 429:
            time.sleep(0.2)  # the per-pod rate limit
            continue
        assert status == 200, body
        answers.append(_revoke(operator, body["access_token"]))
        if answers[-1][0] == 200:
            revoked.append(body["access_token"])
        if len(answers) >= 48:
            break
    assert len(answers) >= 48
    entries = _revocations(operator, uid)
    assert len(entries) <= 32, f"one pod holds {len(entries)} entries of the revocation list"
    refused = [(status, body, headers) for status, body, headers in answers if status != 200]
    assert refused, "every revocation was accepted"
    status, body, headers = refused[0]
    assert status == 503 and body["error"] == "temporarily_unavailable" and int(headers["Retry-After"]) > 0
    # What was accepted is revoked, as promised.
    gateway = _caller(cluster, *INTROSPECTOR)
    assert revoked and all(_introspect(operator, t, gateway)[1] == {"active": False} for t in revoked[-3:])


def test_revocation_needs_the_token_itself(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """Someone who knows a token's claims (its jti, its pod) but does not hold it cannot revoke
    it: a copy with another signature is not ours; nor does a token exchanged from it revoke it."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, _ = _agent(cluster, namespace)
    status, granted = exchange(operator, bound_token(cluster, namespace, pod), authorization_details=READ_APP)
    assert status == 200, granted
    header, claims, _ = granted["access_token"].split(".")
    forged = f"{header}.{claims}.{b64url(b'x' * 64)}"
    assert _revoke(operator, forged)[0] == 200  # RFC 7009: unknown tokens are answered the same way
    gateway = _caller(cluster, *INTROSPECTOR)
    assert _introspect(operator, granted["access_token"], gateway)[1]["active"] is True
    assert _revocations(operator, pod["metadata"]["uid"]) == []
    # Holding a token exchanged from it is not holding it: revoking the child leaves the parent.
    status, child = exchange(operator, granted["access_token"], ACCESS_TOKEN_TYPE)
    assert status == 200, child
    assert _revoke(operator, child["access_token"])[0] == 200
    assert _introspect(operator, child["access_token"], gateway)[1] == {"active": False}
    assert _introspect(operator, granted["access_token"], gateway)[1]["active"] is True


HA_NAMESPACE = "agentcred-ha-revoke"
HA_ISSUER = "https://agentcred.agentcred-ha-revoke.svc:8443"
LEASE = {"AGENTCRED_LEASE_DURATION": "6", "AGENTCRED_LEASE_RENEW": "1"}


def _lease_holder(cluster: Cluster) -> str | None:
    try:
        lease = client.CoordinationV1Api(cluster.api_client).read_namespaced_lease("agentcred-leader", HA_NAMESPACE)
    except ApiException:
        return None
    return lease.spec.holder_identity


def test_a_token_its_holder_revoked_at_a_follower_is_revoked_at_the_leader(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """Behind one Service, a holder's RFC 7009 revocation lands at whichever replica answers.
    A follower saves it to the shared list; the leader never read the list back (only
    followers reload), so at the leader the revoked token stayed live -- it exchanged for
    fresh tokens, and the leader's /v1/revocations (what verifiers fetch) did not name it."""
    with operator_paused(operator):
        replicas = {
            name: OperatorProcess(
                cluster,
                "--issuer",
                HA_ISSUER,
                *(() if name == "replica-e" else ("--webhook-config", "none")),
                namespace=HA_NAMESPACE,
                standalone=False,
                env={**LEASE, "POD_NAME": name},
            )
            for name in ("replica-e", "replica-f")
        }
        try:
            for replica in replicas.values():
                replica.start()
            leader_name = wait_for(lambda: _lease_holder(cluster), what="a leader")
            leader = replicas[leader_name]
            follower = next(r for name, r in replicas.items() if name != leader_name)
            cafile = leader.ca_file()
            service_account(cluster, namespace)
            create_credential(cluster, namespace, scope=SCOPE)
            pod = start_agent(cluster, namespace)
            form = {"grant_type": JWT_BEARER, "assertion": bound_token(cluster, namespace, pod)}
            status, granted, _ = post(
                f"{leader.api_url}/oauth2/token", cafile, {**form, "authorization_details": READ_APP}
            )
            assert status == 200, granted
            token = granted["access_token"]
            assert post(f"{follower.api_url}/oauth2/revoke", cafile, {"token": token})[0] == 200

            def refused_by(replica: OperatorProcess) -> bool:
                status, answer, _ = post(
                    f"{replica.api_url}/oauth2/token",
                    cafile,
                    {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": ACCESS_TOKEN_TYPE},
                )
                return status == 400 and "was revoked" in answer["error_description"]

            assert refused_by(follower)
            wait_for(lambda: refused_by(leader), timeout=10, what="the leader refusing the revoked token")
            verifier = Verifier.from_url(leader.api_url, issuer=HA_ISSUER, cafile=cafile)
            with pytest.raises(TokenRejected) as rejected:
                verifier.verify(token, AUDIENCE, namespace=namespace)
            assert rejected.value.reason == "revoked"
        finally:
            for replica in replicas.values():
                replica.cleanup()
            cluster.delete_namespace(HA_NAMESPACE)


# -- admission and the identity volume --------------------------------------------------


def test_a_copied_admission_ungated_by_its_creator_gets_no_token(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    """A pod creator copies an admitted pod (its sealed annotations, volumes and gate) within
    the webhook's reinvocation window, then removes the gate itself (Kubernetes lets anyone
    who may update pods remove a scheduling gate). The operator never gives the copy a value
    -- the binding belongs to the first pod -- but the token service used to issue it tokens
    on its own pod-bound identity, even after an emergency revoke or once the original was gone."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    developer = client.CoreV1Api(narrow_user(cluster, namespace, "developer", PODS_ONLY, tmp_path))
    original, _ = _agent(cluster, namespace, "original")
    copy = admitted_copy(original)
    try:
        developer.create_namespaced_pod(namespace, copy)
    except ApiException as refused:
        assert refused.status == 403  # refused outright is fine too
        return
    wait_for(
        lambda: [e for e in pod_events(cluster, namespace, "copy") if e.reason == "BindingInUse"],
        what="the copy told the binding is taken",
    )
    copied = cluster.api_client.sanitize_for_serialization(cluster.core.read_namespaced_pod("copy", namespace))
    status, gated = exchange(operator, bound_token(cluster, namespace, copied), authorization_details=READ_APP)
    assert (status, gated["error"]) == (400, "invalid_request")

    ungate = {"spec": {"schedulingGates": [{"$patch": "delete", "name": labels.SCHEDULING_GATE}]}}
    developer.patch_namespaced_pod("copy", namespace, ungate)
    wait_for(lambda: running_pod(cluster, namespace, name="copy"), what="the ungated copy Running")
    token = bound_token(cluster, namespace, copied)
    status, answer = exchange(operator, token, authorization_details=READ_APP)
    assert (status, answer.get("error")) == (400, "invalid_request"), "the copy was issued a token"
    assert "another pod" in answer["error_description"]

    # Nor once the pod that owns the binding is gone.
    cluster.core.delete_namespaced_pod("original", namespace)
    wait_for(lambda: read_secret(cluster, namespace, secret_name_of(original)) is None, what="the original revoked")
    status, answer = exchange(operator, token, authorization_details=READ_APP)
    assert (status, answer.get("error")) == (400, "invalid_request"), "the copy was issued a token"


def test_a_pod_that_brings_its_own_identity_volume_is_refused(
    cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    """A pod creator who writes the `agentcred-identity` volume (say, with a token for another
    audience, or another pod's Secret as its CA) is refused at admission."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    developer = client.CoreV1Api(narrow_user(cluster, namespace, "developer", PODS_ONLY, tmp_path))
    body = {
        "metadata": {
            "name": "own-identity",
            "labels": {labels.INJECT_LABEL: "true"},
            "annotations": {labels.CREDENTIALS_ANNOTATION: "research-llm"},
        },
        "spec": {
            "serviceAccountName": "research-agent",
            "containers": [{"name": "c", "image": "x"}],
            "volumes": [
                {
                    "name": labels.IDENTITY_VOLUME,
                    "projected": {"sources": [{"serviceAccountToken": {"audience": "kubernetes", "path": "token"}}]},
                }
            ],
        },
    }
    with pytest.raises(ApiException) as refused:
        developer.create_namespaced_pod(namespace, body)
    assert refused.value.status == 403 and labels.IDENTITY_VOLUME in refused.value.body


# -- rate limits --------------------------------------------------------------------------


def test_garbage_actor_tokens_cost_the_caller_not_the_api_server(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """One admitted pod sends a valid subject token and a fresh garbage `actor_token` each
    time: every actor token used to be reviewed by the API server, and the refusal cost
    neither the address's budget (a subject was established) nor the pod's (counted only
    later, at issuing) -- unlimited TokenReviews for the price of one identity."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, projected = _agent(cluster, namespace)
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": projected,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "actor_token_type": JWT_TYPE,
        "authorization_details": READ_APP,
    }
    url, cafile = f"{operator.api_url}/oauth2/token", operator.ca_file()
    post(url, cafile, {**form, "actor_token": "garbage-first"})
    before = _reviews(operator)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda i: post(url, cafile, {**form, "actor_token": f"garbage-{i}"}), range(200)))
    reviews = _reviews(operator) - before
    statuses = {status for status, _, _ in answers}
    assert statuses <= {400, 429}, statuses
    assert reviews <= 60, f"{reviews:.0f} TokenReviews for 200 garbage actor tokens"
    time.sleep(5)  # every test calls from 127.0.0.1: let the address's refused-token budget refill


# -- hostile input ------------------------------------------------------------------------


def test_deeply_nested_json_is_an_rfc_error_not_a_server_error(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """JSON nested a thousand deep (in `authorization_details`, or in a token's header, which
    is read before any signature is checked) made Python's parser raise RecursionError: a 500
    at the token, introspection and revocation endpoints, with no audit line and nothing
    charged to the sender; and `Verifier.verify` raised it instead of TokenRejected."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, projected = _agent(cluster, namespace)
    deep = "[" * 1500 + "]" * 1500  # well under the body limit, percent-encoded
    deep_header = f"{b64url(deep.encode())}.{b64url(b'{}')}.{b64url(b'x')}"
    status, body = exchange(operator, projected, ACCESS_TOKEN_TYPE, authorization_details=deep)
    assert (status, body["error"]) == (400, "invalid_authorization_details")
    status, body = exchange(operator, deep_header, ACCESS_TOKEN_TYPE)
    assert (status, body["error"]) == (400, "invalid_request")
    status, body = exchange(
        operator, projected, ACCESS_TOKEN_TYPE, actor_token=deep_header, actor_token_type=ACCESS_TOKEN_TYPE
    )
    assert (status, body["error"]) == (400, "invalid_request")
    assert _revoke(operator, deep_header)[0] == 200
    gateway = _caller(cluster, *INTROSPECTOR)
    assert _introspect(operator, deep_header, gateway) == (200, {"active": False})
    verifier = Verifier.from_url(operator.api_url, cafile=operator.ca_file())
    with pytest.raises(TokenRejected) as rejected:
        verifier.verify(deep_header, AUDIENCE, namespace=namespace)
    assert rejected.value.reason == "malformed"


# -- algorithm and type confusion -----------------------------------------------------------


def _rsa_public_pem(jwk: dict) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from agentcred.platform.keys import b64url_decode

    numbers = rsa.RSAPublicNumbers(
        int.from_bytes(b64url_decode(jwk["e"]), "big"), int.from_bytes(b64url_decode(jwk["n"]), "big")
    )
    return numbers.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_algorithm_and_type_confusion_is_refused_everywhere(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """Forgeries that need no private key: HS256 keyed with the published RSA public key (the
    classic confusion), `alg: none`, a published key under another algorithm's name, and a
    Kubernetes ServiceAccount token passed off as an access token -- at the token endpoint,
    at introspection, and by the verifier gateways run."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, projected = _agent(cluster, namespace)
    good = json.loads(base64.urlsafe_b64decode(projected.split(".")[1] + "==="))
    claims = {**good, "scope": "tool:anything action:write resource:repo:acme/secrets", "exp": good["exp"] + 3600}
    keys = _jwks(operator)
    rsa_key = next(k for k in keys if k["alg"] == "RS256")
    ed_key = next(k for k in keys if k["alg"] == "EdDSA")

    def hs256(secret: bytes, kid: str) -> str:
        header = b64url(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": kid}).encode())
        payload = b64url(json.dumps(claims).encode())
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{b64url(mac)}"

    forgeries = {
        "HS256 keyed with the RSA public key (PEM)": hs256(_rsa_public_pem(rsa_key), rsa_key["kid"]),
        "HS256 keyed with the RSA modulus": hs256(rsa_key["n"].encode(), rsa_key["kid"]),
        "HS256 keyed with the Ed25519 public key": hs256(ed_key["x"].encode(), ed_key["kid"]),
        "alg none": _jws({"alg": "none", "typ": "at+jwt", "kid": rsa_key["kid"]}, claims, b""),
        "RS256 named for the EdDSA key": _jws({"alg": "RS256", "typ": "at+jwt", "kid": ed_key["kid"]}, claims),
        "a ServiceAccount token": bound_token(cluster, namespace, pod),
    }
    gateway = _caller(cluster, *INTROSPECTOR)
    verifier = Verifier.from_url(operator.api_url, cafile=operator.ca_file())
    for case, forged in forgeries.items():
        status, body = exchange(operator, forged, ACCESS_TOKEN_TYPE, authorization_details=READ_APP)
        assert (status, body.get("error")) == (400, "invalid_request"), case
        assert "not issued by agentcred" in body["error_description"], case
        assert _introspect(operator, forged, gateway) == (200, {"active": False}), case
        with pytest.raises(TokenRejected) as rejected:
            verifier.verify(forged, AUDIENCE, namespace=namespace)
        assert rejected.value.reason in {"unsupported-algorithm", "algorithm-mismatch", "wrong-type"}, case
    # ...and the other way round: an agentcred token is not a ServiceAccount token.
    status, body = exchange(operator, projected, JWT_TYPE, authorization_details=READ_APP)
    assert (status, body.get("error")) == (400, "invalid_request")
    status, body, _ = token_request(operator, {"grant_type": JWT_BEARER, "assertion": projected})
    assert (status, body.get("error")) == (400, "invalid_grant")


# -- tenants ------------------------------------------------------------------------------


def test_a_pod_gets_nothing_for_another_tenants_credential_and_learns_nothing_of_it(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    """Tenant B's admin runs an admitted pod of their own and asks, with its identity, for a
    token for tenant A's audience, for A's credential by another of B's credentials, with A's
    ServiceAccount as client_id, or narrows A's token it was handed: refused every time,
    and no refusal names what A has. B's ServiceAccounts cannot introspect."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE, source={"jwt": {"audiences": ["https://tenant-a.internal"]}})
    victim, victim_value = _agent(cluster, namespace, "victim")
    other = cluster.create_namespace("b")
    try:
        admin = client.CoreV1Api(namespace_admin(cluster, other, tmp_path))
        service_account(cluster, other)
        create_credential(cluster, other, scope=SCOPE, source={"jwt": {"audiences": ["https://tenant-b.internal"]}})
        create_credential(
            cluster, other, "second", scope=SCOPE, source={"jwt": {"audiences": ["https://tenant-b2.internal"]}}
        )
        body = {
            "metadata": {
                "name": "mine",
                "labels": {labels.INJECT_LABEL: "true"},
                "annotations": {labels.CREDENTIALS_ANNOTATION: "research-llm,second"},
            },
            "spec": {"serviceAccountName": "research-agent", "containers": [{"name": "c", "image": "x"}]},
        }
        admin.create_namespaced_pod(other, body)
        mine = wait_for(lambda: running_pod(cluster, other, name="mine"), what="tenant B's pod Running")
        token = bound_token(cluster, other, mine)
        cases = {
            "A's audience": {"resource": "https://tenant-a.internal"},
            "A's audience beside B's": {"resource": ["https://tenant-b.internal", "https://tenant-a.internal"]},
            "A's ServiceAccount as client": {
                "resource": "https://tenant-b.internal",
                "client_id": f"system:serviceaccount:{namespace}:research-agent",
            },
        }
        for case, fields in cases.items():
            form = [("grant_type", JWT_BEARER), ("assertion", token)]
            for name, value in fields.items():
                form += [(name, v) for v in (value if isinstance(value, list) else [value])]
            status, answer, _ = token_request(operator, form)
            assert status in (400, 401), (case, answer)
            # What the caller sent may be echoed back; nothing else of A's.
            said = answer["error_description"]
            for sent in (v for value in fields.values() for v in (value if isinstance(value, list) else [value])):
                said = said.replace(sent, "")
            assert namespace not in said and "victim" not in said and "tenant-a" not in said, case
        # A's token, handed to B's pod: narrowed for B's audience? No, and B learns nothing more.
        status, answer = exchange(operator, victim_value, ACCESS_TOKEN_TYPE, resource="https://tenant-b.internal")
        assert (status, answer["error"]) == (400, "invalid_target")
        assert "tenant-b" not in answer["error_description"].replace("https://tenant-b.internal", "")
        # B's admin's own ServiceAccount is not an introspector.
        b_caller = bound_token(cluster, other, None, sa="tenant-admin")
        assert _introspect(operator, victim_value, b_caller)[0] == 401
    finally:
        cluster.delete_namespace(other)


def test_a_pod_gets_nothing_for_a_credential_it_was_not_admitted_for(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    create_credential(
        cluster, namespace, "payments", scope=SCOPE, source={"jwt": {"audiences": ["https://payments.internal"]}}
    )
    pod, projected = _agent(cluster, namespace)
    token = bound_token(cluster, namespace, pod)
    status, answer, _ = token_request(
        operator, {"grant_type": JWT_BEARER, "assertion": token, "resource": "https://payments.internal"}
    )
    assert (status, answer["error"]) == (400, "invalid_target")
    assert "payments" not in answer["error_description"].replace("https://payments.internal", "")


def test_an_ended_pods_own_tokens_get_nothing(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """Once a pod's task ended, its projected value and the tokens it exchanged are no
    subject, no actor, and not active -- whoever holds them."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, projected = _agent(cluster, namespace)
    other, other_value = _agent(cluster, namespace, "other")
    status, granted = exchange(operator, projected, ACCESS_TOKEN_TYPE, authorization_details=READ_APP)
    assert status == 200, granted
    kubelet.succeed(namespace, pod["metadata"]["name"])
    gateway = _caller(cluster, *INTROSPECTOR)
    wait_for(
        lambda: _introspect(operator, projected, gateway)[1] == {"active": False}, what="the ended pod's value inactive"
    )
    for token in (projected, granted["access_token"]):
        status, answer = exchange(operator, token, ACCESS_TOKEN_TYPE)
        assert (status, answer["error"]) == (400, "invalid_request"), _fingerprint(token)
        assert "was revoked" in answer["error_description"] or "has ended" in answer["error_description"]
        status, answer = exchange(
            operator, other_value, ACCESS_TOKEN_TYPE, actor_token=token, actor_token_type=ACCESS_TOKEN_TYPE
        )
        assert (status, answer["error"]) == (400, "invalid_request"), _fingerprint(token)
        assert _introspect(operator, token, gateway)[1] == {"active": False}
    status, answer = exchange(operator, bound_token(cluster, namespace, pod), authorization_details=READ_APP)
    assert (status, answer["error"]) == (400, "invalid_request") and "ended" in answer["error_description"]


# -- widening through an agentcred subject token ----------------------------------------------


def test_an_exchanged_token_cannot_widen_or_chain_without_end(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """Through its own tokens a pod cannot gain lifetime, audience or intents, nor chain
    exchanges beyond the limit; an actor's `act` comes only from a token we verified."""
    service_account(cluster, namespace)
    create_credential(
        cluster,
        namespace,
        scope={**SCOPE, "tools": ["web-search", "fetch-page"]},
        source={"jwt": {"audiences": [AUDIENCE, "https://second.internal"]}},
        ttl="10m",
    )
    pod, projected = _agent(cluster, namespace)
    status, narrowed = exchange(
        operator, projected, ACCESS_TOKEN_TYPE, resource=AUDIENCE, authorization_details=READ_APP
    )
    assert status == 200, narrowed
    narrowed_claims = json.loads(base64.urlsafe_b64decode(narrowed["access_token"].split(".")[1] + "==="))
    refusals = {
        "another audience": {"resource": "https://second.internal"},
        "both audiences": {"audience": AUDIENCE, "resource": "https://second.internal"},
        "another tool": {"authorization_details": details("fetch-page", ["read"], "repo:acme/app")},
        "another action": {"scope": "tool:web-search action:write resource:repo:acme/app"},
        "a forged actor": {
            "actor_token": _jws({"alg": "EdDSA", "typ": "at+jwt", "kid": "x"}, {"sub": "system:admin"}),
            "actor_token_type": ACCESS_TOKEN_TYPE,
        },
    }
    for case, fields in refusals.items():
        status, answer = exchange(operator, narrowed["access_token"], ACCESS_TOKEN_TYPE, **fields)
        assert status == 400, (case, answer)
    current = narrowed["access_token"]
    depth = 1
    while True:
        status, answer = exchange(operator, current, ACCESS_TOKEN_TYPE)
        if status != 200:
            break
        claims = json.loads(base64.urlsafe_b64decode(answer["access_token"].split(".")[1] + "==="))
        assert claims["exp"] <= narrowed_claims["exp"] and claims["aud"] == AUDIENCE
        current, depth = answer["access_token"], depth + 1
        assert depth < 10, "exchanges chain without end"
    assert answer["error"] == "invalid_request" and "exchanges deep" in answer["error_description"]


def test_the_public_revocation_list_names_no_tenant_pod_or_credential(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """Another tenant reading /v1/revocations (anonymous, as any agent may) once learned the pod
    UIDs and credential names of every revoked pod. Now it finds neither, while a verifier
    holding the token still refuses it as revoked."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, "quarterly-merger-plans", scope=SCOPE)
    pod, value = _agent(cluster, namespace, credentials="quarterly-merger-plans")
    uid = pod["metadata"]["uid"]
    cluster.core.delete_namespaced_pod("agent", namespace, grace_period_seconds=0)
    entry = wait_for(lambda: _revocations(operator, uid), what="the ended pod's revocation")[0]
    assert entry["credential"] in ("*", served_key(uid, "quarterly-merger-plans")[1])
    served = _served_revocations(operator)
    assert uid not in served and "quarterly-merger-plans" not in served and namespace not in served
    verifier = Verifier.from_url(operator.api_url, cafile=operator.ca_file())
    with pytest.raises(TokenRejected) as refused:
        verifier.verify(value, audience=AUDIENCE, namespace=namespace)
    assert refused.value.reason == "revoked"


def _reviews_by(operator: OperatorProcess, caller: str) -> float:
    return sum(
        v
        for (name, labels_), v in operator.metrics().items()
        if name == "agentcred_token_reviews_total" and dict(labels_).get("caller", caller) == caller
    )


def test_concurrent_garbage_tokens_buy_no_more_token_reviews_than_sequential_ones(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    """The per-address budget of refused tokens was checked before the TokenReview and charged
    after it: garbage tokens sent at once all passed the check, so 128 of them in flight bought
    a review each -- 241 TokenReviews where the same tokens one by one bought 41, and at the
    leak intake 516 against 21. Each review is now paid for before it is sent. (An operator of
    its own, whose budget barely refills: what is counted is the budget, not the clock.)"""
    with operator_paused(operator):
        own = OperatorProcess(
            cluster, env={"AGENTCRED_SOURCE_RATE": "0.001", "AGENTCRED_SOURCE_BURST": "10", **REPORTER_ENV}
        )
        try:
            own.start()
            url, cafile = f"{own.api_url}/oauth2/token", own.ca_file()
            form = {"grant_type": JWT_BEARER, "authorization_details": READ_APP}
            before = _reviews_by(own, "token-service")
            with ThreadPoolExecutor(128) as pool:
                answers = list(pool.map(lambda i: post(url, cafile, {**form, "assertion": f"garbage-{i}"}), range(256)))
            reviews = _reviews_by(own, "token-service") - before
            assert {status for status, _, _ in answers} <= {400, 429}
            assert reviews <= 10 + 1, f"{reviews:.0f} TokenReviews for a budget of 10 refused tokens"

            def report(i: int) -> int:
                request = urllib.request.Request(
                    f"{own.api_url}/v1/trace",
                    data=b'[{"token": "x"}]',
                    method="POST",
                    headers={"Content-Type": "application/json", "Authorization": f"Bearer garbage-{i}"},
                )
                try:
                    with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=cafile), timeout=60):
                        return 200
                except urllib.error.HTTPError as error:
                    return error.code

            before = _reviews_by(own, "leak-intake")
            began = time.monotonic()
            with ThreadPoolExecutor(128) as pool:
                statuses = set(pool.map(report, range(256)))
            elapsed = time.monotonic() - began
            reviews = _reviews_by(own, "leak-intake") - before
            assert statuses <= {401, 429}
            # The intake's budget: 20 refused tokens, then 2 a second.
            assert reviews <= 20 + 2 * elapsed + 1, f"{reviews:.0f} TokenReviews in {elapsed:.0f}s at the leak intake"
        finally:
            own.cleanup()


def test_other_spellings_of_a_denied_resource_are_refused(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """With `deny: repo:acme/vault`, tokens were issued for `repo:acme/vault/`, `... ` (a
    trailing space), `%76ault`, `vault%2F`, `vault;`, `vault#` and `vault.`: names a tool may
    decode, trim or normalise into the denied one. Each is refused now; plain names still pass."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope={**SCOPE, "deny": {"resources": ["repo:acme/vault"]}})
    pod, projected = _agent(cluster, namespace)
    token = bound_token(cluster, namespace, pod)
    status, granted = exchange(operator, token, authorization_details=READ_APP)
    assert status == 200, granted
    status, denied = exchange(operator, token, authorization_details=details("web-search", ["read"], "repo:acme/vault"))
    assert (status, denied["error"]) == (400, "invalid_authorization_details")
    spellings = [
        "repo:acme/vault/",
        "repo:acme/vault ",
        "repo:acme/%76ault",
        "repo:acme/vault%2F",
        "repo:acme/vault;",
        "repo:acme/vault#",
        "repo:acme/vault.",
        " repo:acme/vault",
    ]
    for spelling in spellings:
        status, answer = exchange(operator, token, authorization_details=details("web-search", ["read"], spelling))
        assert (status, answer.get("error")) == (400, "invalid_authorization_details"), f"{spelling!r} was granted"
        status, answer = exchange(operator, token, scope=f"tool:web-search action:read resource:{spelling}")
        assert status == 400, f"{spelling!r} was granted through scope"
        time.sleep(0.25)  # the pod's own rate limit: 5 requests a second


def test_costly_scope_patterns_cost_their_own_tenant_not_another(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """A tenant writes the costliest scope it may (deny patterns slow to match) and has its pods
    ask for 64 intents a request, each pod within its own rate limit: every request held the
    token service's one event loop for the whole match, and another tenant's token latency rose
    from 6 ms to 10.4 s. Intents are now judged one a turn of the loop, a namespace that has spent
    its share of scope matching is told to slow down while the other tenant is answered, and
    patterns past 8 wildcards are refused by the API server. (An operator of its own, with a
    share of 20 ms a second: a loaded machine slows the flood as much as the loop, and the
    default quarter of the loop was then never spent.)"""
    with operator_paused(operator):
        own = OperatorProcess(
            cluster, env={"AGENTCRED_SCOPE_MS_PER_SECOND": "20", "AGENTCRED_SCOPE_MS_BURST": "200", **REPORTER_ENV}
        )
        try:
            own.start()
            costly = [f"*?a?a?a?a?a?a?a{'a' * (85 + i % 10)}b" for i in range(64)]
            service_account(cluster, namespace)
            deny = {"tools": costly, "actions": costly, "resources": costly}
            create_credential(
                cluster, namespace, scope={"tools": ["*"], "actions": ["*"], "resources": ["*"], "deny": deny}
            )
            pods = [_agent(cluster, namespace, f"costly-{i}")[0] for i in range(4)]
            tokens = [bound_token(cluster, namespace, pod) for pod in pods]
            # 4 x 4 x 4 = 64 intents, each matched against 192 deny patterns slow to match.
            heavy = " ".join(f"{kind}:{'a' * 180}{i:03d}" for kind in ("tool", "action", "resource") for i in range(4))

            other = cluster.create_namespace("calm")
            try:
                service_account(cluster, other)
                create_credential(cluster, other, scope=SCOPE)
                calm = bound_token(cluster, other, _agent(cluster, other, "calm")[0])

                url, cafile = f"{own.api_url}/oauth2/token", own.ca_file()  # written once, read by every thread
                form = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": JWT_TYPE, "scope": heavy}

                def flood(index: int) -> list[tuple[int, str]]:
                    answers = []
                    for _ in range(12):
                        status, body, _ = post(url, cafile, {**form, "subject_token": tokens[index % len(tokens)]})
                        answers.append((status, (body or {}).get("error_description", "")))
                        time.sleep(0.25)  # within the pod's own rate limit
                    return answers

                with ThreadPoolExecutor(8) as pool:
                    running = pool.map(flood, range(8))
                    time.sleep(2)
                    calm_form = {"grant_type": JWT_BEARER, "assertion": calm, "authorization_details": READ_APP}
                    calm_answers = [post(url, cafile, calm_form)[0] for _ in range(3)]
                    flooded = [answer for answers in running for answer in answers]
                assert calm_answers == [200, 200, 200], calm_answers
                slowed = [said for status, said in flooded if status == 429 and "share of scope checks" in said]
                statuses = {status: [s for s, _ in flooded].count(status) for status, _ in flooded}
                assert slowed, (
                    f"64 costly intents x {len(flooded)} requests, never slowed down: {statuses}, {flooded[:2]}"
                )
            finally:
                cluster.delete_namespace(other)

            # Costlier patterns still are refused where they are written.
            body = credential(
                name="costlier", scope={"tools": ["*"], "actions": ["read"], "resources": ["*a?a?a?a?a?a?a?a?a*"]}
            )
            with pytest.raises(ApiException) as refused:
                cluster.custom.create_namespaced_custom_object(
                    "agentcred.dev", "v1alpha1", namespace, "agentcredentials", body
                )
            assert refused.value.status == 422 and "at most 8 wildcards" in refused.value.body
        finally:
            own.cleanup()


def test_one_tenants_churn_stays_within_its_share_of_the_revocation_list(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    """A namespace admin ran ~3,400 short pods with 16 credentials each (seven minutes of work):
    each ended pod left an entry per credential on the shared revocation list until its values
    expired, shards grew past what a ConfigMap holds, the leader stopped being ready and later
    revocations -- any tenant's -- no longer reached the other replicas. Now an ended pod leaves
    one entry whatever it held, and a namespace at its budget (here 12) waits for its entries to
    lapse before its next pods get values; another tenant is not held back."""
    names = [f"cred-{i}" for i in range(4)]
    with operator_paused(operator):
        own = OperatorProcess(cluster, env={"AGENTCRED_REVOCATION_BUDGET": "12", **REPORTER_ENV})
        try:
            own.start()
            admin = client.CoreV1Api(namespace_admin(cluster, namespace, tmp_path))
            service_account(cluster, namespace)
            for name in names:
                create_credential(cluster, namespace, name, scope=SCOPE)
            ended: list[str] = []
            for round_ in range(16):
                name = f"short-{round_}"
                admin.create_namespaced_pod(
                    namespace,
                    {
                        "metadata": {
                            "name": name,
                            "labels": {labels.INJECT_LABEL: "true"},
                            "annotations": {labels.CREDENTIALS_ANNOTATION: ",".join(names)},
                        },
                        "spec": {"serviceAccountName": "research-agent", "containers": [{"name": "c", "image": "x"}]},
                    },
                )

                def outcome(name: str = name) -> str | None:
                    if running_pod(cluster, namespace, name=name):
                        return "ran"
                    waits = [e for e in pod_events(cluster, namespace, name) if e.reason == "RevocationBudget"]
                    return "waits" if waits else None

                if wait_for(outcome, what=f"pod {name} given its values or told to wait") == "waits":
                    break
                uid = cluster.core.read_namespaced_pod(name, namespace).metadata.uid
                kubelet.succeed(namespace, name)
                wait_for(lambda uid=uid: _revocations(own, uid), what=f"{name}'s task-end revocation listed")
                ended.append(uid)
            entries = sum(len(_revocations(own, uid)) for uid in ended)
            assert entries <= 12, f"{len(ended)} short pods left {entries} entries"
            assert len(ended) < 16, "the namespace was never held back"
            # Another tenant is not held back by this one's churn.
            other = cluster.create_namespace("other-tenant")
            try:
                service_account(cluster, other)
                create_credential(cluster, other, scope=SCOPE)
                start_agent(cluster, other)
            finally:
                cluster.delete_namespace(other)
        finally:
            own.cleanup()


def test_another_tenants_tool_server_cannot_use_up_a_tenants_revocation_budget(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """Found attacking the budget of the revocation list: whoever holds a tenant's tokens -- a
    tool server of another tenant its agents call -- may revoke them (RFC 7009), and those
    entries counted against the tenant's budget, so the tool server could hold back the
    tenant's new pods. Holder revocations now count apart: past the budget they are refused
    (503, the token lapses at its expiry), and the tenant's next pods run."""
    with operator_paused(operator):
        own = OperatorProcess(cluster, env={"AGENTCRED_REVOCATION_BUDGET": "4", **REPORTER_ENV})
        try:
            own.start()
            service_account(cluster, namespace)
            create_credential(cluster, namespace, scope=SCOPE)
            pod, _ = _agent(cluster, namespace)
            token = bound_token(cluster, namespace, pod)
            handed = []
            for _ in range(6):
                status, body = exchange(own, token, authorization_details=READ_APP)
                assert status == 200, body
                handed.append(body["access_token"])
            # The tool server revokes every token it was handed.
            answers = [_revoke(own, t)[0] for t in handed]
            assert answers.count(200) == 4 and answers.count(503) == 2, answers
            # The tenant's next pod is not held back by entries someone else made.
            start_agent(cluster, namespace, "next")
        finally:
            own.cleanup()
