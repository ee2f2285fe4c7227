"""Minted tokens tools can verify, key rotation with overlap, and the webhook (minting
service) source. The token service has its own tests (test_token_service)."""

import datetime as dt
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from agentcred.api import labels
from agentcred.platform.keys import KeyRing, b64url, b64url_decode, encode_jwt
from agentcred.rules.scope import Intent
from agentcred.verify import TokenRejected, Verifier
from agents import (
    condition,
    create_credential,
    create_pod,
    get_credential,
    pod_events,
    read_secret,
    running_pod,
    same_value,
    secret_name_of,
    service_account,
    start_agent,
    value_of,
)
from clusterkit import Cluster, OperatorProcess, wait_for
from minting_service import MintingService
from oauth import bound_token, details, exchange

AUDIENCE = "https://llm-gateway.internal"
SCOPE = {
    "tools": ["web-search", "fetch-*"],
    "resources": ["repo:acme/*"],
    "actions": ["read"],
    "deny": {"resources": ["repo:acme/secrets*"]},
}


def _agent(cluster: Cluster, namespace: str, name: str = "agent") -> tuple[dict, bytes]:
    pod = start_agent(cluster, namespace, name)
    return pod, value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm")


def _verifier(operator: OperatorProcess) -> Verifier:
    return Verifier.from_url(operator.api_url, cafile=operator.ca_file())


def _revoked(operator: OperatorProcess, token: str) -> bool:
    try:
        _verifier(operator).verify(token, audience=AUDIENCE, namespace=None)
    except TokenRejected as rejected:
        return rejected.reason == "revoked"
    return False


def _reason(verifier: Verifier, token: str, **kwargs) -> str:
    with pytest.raises(TokenRejected) as rejected:
        verifier.verify(token, **{"audience": AUDIENCE, "namespace": None, **kwargs})
    return rejected.value.reason


def test_projected_tokens_verify_and_each_refusal_has_its_own_reason(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, value = _agent(cluster, namespace)
    token = value.decode()
    verifier = _verifier(operator)
    claims = verifier.verify(
        token, audience=AUDIENCE, intent=Intent("web-search", "read", "repo:acme/app"), namespace=None
    )
    assert claims["agentcred"]["podUID"] == pod["metadata"]["uid"]

    header, payload, signature = token.split(".")
    tampered_claims = json.loads(b64url_decode(payload))
    tampered_claims["agentcred"]["scope"]["actions"] = ["write"]
    tampered = f"{header}.{b64url(json.dumps(tampered_claims).encode())}.{signature}"
    stranger = encode_jwt(
        json.loads(b64url_decode(payload)), KeyRing.generate(dt.datetime.now(dt.timezone.utc)).current("EdDSA")
    )
    none_alg = f"{b64url(json.dumps({'alg': 'none', 'typ': 'at+jwt'}).encode())}.{payload}."
    hs256_header = {"alg": "HS256", "typ": "at+jwt", "kid": json.loads(b64url_decode(header))["kid"]}
    id_token_header = {**json.loads(b64url_decode(header)), "typ": "JWT"}
    as_id_token = f"{b64url(json.dumps(id_token_header).encode())}.{payload}.{signature}"
    hs256 = f"{b64url(json.dumps(hs256_header).encode())}.{payload}.{signature}"
    reasons = {
        "wrong audience": _reason(verifier, token, audience="https://someone-else"),
        "tampered": _reason(verifier, tampered),
        "unknown kid": _reason(verifier, stranger),
        "alg none": _reason(verifier, none_alg),
        "HS256 confusion": _reason(verifier, hs256),
        "not an access token": _reason(verifier, as_id_token),
        "expired": _reason(verifier, token, now=claims["exp"] + 3600),
        "out of scope": _reason(verifier, token, intent=Intent("web-search", "write", "repo:acme/app")),
        "garbage": _reason(verifier, "not-a-token"),
    }
    assert reasons == {
        "wrong audience": "wrong-audience",
        "tampered": "bad-signature",
        "unknown kid": "unknown-kid",
        "alg none": "unsupported-algorithm",
        "HS256 confusion": "unsupported-algorithm",
        "not an access token": "wrong-type",
        "expired": "expired",
        "out of scope": "out-of-scope",
        "garbage": "malformed",
    }

    # The command line says the same, and reads the token from stdin (never from argv).
    def cli(token_text: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "agentcred",
                "verify",
                "--audience",
                AUDIENCE,
                "--namespace",
                namespace,
                "--url",
                operator.api_url,
                "--cafile",
                operator.ca_file(),
                "--tool",
                "web-search",
                "--action",
                "read",
                "--resource",
                "repo:acme/app",
            ],
            input=token_text,
            capture_output=True,
            text=True,
            timeout=30,
        )

    ok = cli(token)
    assert ok.returncode == 0 and ok.stdout.startswith("valid:") and pod["metadata"]["name"] in ok.stdout
    assert "  not narrowed: the credential's scope tools=web-search,fetch-* actions=read" in ok.stdout
    # A token narrowed at the token service (RFC 9068, `scope` claim): the grant it names.
    status, answer = exchange(
        operator,
        bound_token(cluster, namespace, pod),
        resource=AUDIENCE,
        scope="tool:web-search action:read resource:repo:acme/app",
    )
    assert status == 200, answer
    narrowed = cli(answer["access_token"])
    assert narrowed.returncode == 0, narrowed.stdout + narrowed.stderr
    assert narrowed.stdout.splitlines()[1:] == [
        f"  audience: {AUDIENCE}",
        "  scope: tool:web-search action:read resource:repo:acme/app",
    ]
    bad = cli(tampered)
    assert bad.returncode == 1 and "refused (bad-signature)" in bad.stdout
    # Without the operator's CA: a sentence, not a traceback; the issuer comes from discovery.
    no_ca = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentcred",
            "verify",
            "--audience",
            AUDIENCE,
            "--any-namespace",
            "--url",
            operator.api_url,
        ],
        input=token,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (
        no_ca.returncode == 4 and "could not read the keys" in no_ca.stderr
    )  # TLS refused: unreachable and "Traceback" not in no_ca.stderr

    # When the task ends the pod goes on the revocation list verifiers fetch: its tokens are refused.
    cluster.core.delete_namespaced_pod(pod["metadata"]["name"], namespace)
    wait_for(lambda: _revoked(operator, token), timeout=15, what="the pod's tokens on the revocation list")
    assert _reason(_verifier(operator), token) == "revoked"


def test_key_rotation_keeps_old_tokens_valid(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    _, before = _agent(cluster, namespace, "before")
    old_kid = json.loads(b64url_decode(before.decode().split(".")[0]))["kid"]
    rotated = subprocess.run(
        [sys.executable, "-m", "agentcred", "rotate-key", "--algorithm", "EdDSA"],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=60,
    )
    assert rotated.returncode == 0, rotated.stderr
    assert f"EdDSA\t{old_kid}\tretired" in rotated.stdout

    def new_kid_in_use() -> str | None:
        jwks = _verifier(operator).jwks
        kids = {k["kid"] for k in jwks["keys"] if k["alg"] == "EdDSA"}
        return next(iter(kids - {old_kid}), None) if old_kid in kids and len(kids) == 2 else None

    new_kid = wait_for(new_kid_in_use, timeout=20, what="both EdDSA keys published")
    time.sleep(6)  # the operator follows the key ring every few seconds
    _, after = _agent(cluster, namespace, "after")
    assert json.loads(b64url_decode(after.decode().split(".")[0]))["kid"] == new_kid
    verifier = _verifier(operator)
    assert verifier.verify(before.decode(), audience=AUDIENCE, namespace=None)["jti"]
    assert verifier.verify(after.decode(), audience=AUDIENCE, namespace=None)["jti"]


@pytest.fixture
def minting_service():
    service = MintingService().start()
    yield service
    service.stop()


def _webhook_credential(cluster: Cluster, namespace: str, service: MintingService, name: str = "minted") -> None:
    create_credential(
        cluster,
        namespace,
        name=name,
        category="tool",
        source={"webhook": {"url": service.url, "caBundle": service.ca_pem, "timeout": "1s"}},
    )


def test_webhook_source_mints_and_revokes_at_the_service(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, minting_service: MintingService
) -> None:
    service_account(cluster, namespace)
    _webhook_credential(cluster, namespace, minting_service)
    create_pod(cluster, namespace, "agent", "minted")
    pod = wait_for(lambda: running_pod(cluster, namespace, name="agent"), what="pod Running")
    minted = minting_service.minted[-1]
    assert minted["pod"] == "agent" and minted["podUID"] == pod["metadata"]["uid"]
    assert minted["subject"] == f"system:serviceaccount:{namespace}:research-agent" and minted["ttlSeconds"] == 900
    value = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "minted")
    assert same_value(value, f"minted-{minted['id']}".encode())
    cluster.core.delete_namespaced_pod("agent", namespace)
    wait_for(lambda: minting_service.revoked, timeout=15, what="revoke call at the minting service")
    assert minting_service.revoked[0]["id"] == minted["id"] and minting_service.revoked[0]["reason"] == "pod-deleted"


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("slow", "MintingServiceTimeout"),
        ("error", "MintingServiceError"),
        ("malformed", "MintingServiceMalformedReply"),
        ("refuse", "MintingServiceRefused"),
        ("unreachable", "MintingServiceUnreachable"),
    ],
)
def test_minting_service_failures_give_a_condition_and_an_event_and_no_secret(
    cluster: Cluster,
    operator: OperatorProcess,
    kubelet,
    namespace: str,
    minting_service: MintingService,
    mode: str,
    reason: str,
) -> None:
    service_account(cluster, namespace)
    minting_service.mode = mode
    if mode == "unreachable":
        minting_service.stop()
    _webhook_credential(cluster, namespace, minting_service)
    created = create_pod(cluster, namespace, "agent", "minted")

    def failed() -> dict | None:
        found = condition(get_credential(cluster, namespace, "minted"), "SourceAvailable")
        return found if found and found["status"] == "False" else None

    found = wait_for(failed, timeout=30, what=f"SourceAvailable=False ({mode})")
    assert found["reason"] == reason, found
    # The list view says so, although the credential itself is Ready (no health check asked).
    header, row = cluster.kubectl("get", "acred", "minted", "-n", namespace).stdout.splitlines()[:2]
    starts = [header.index(name) for name in header.split()]
    cells = {n: row[a:b].strip() for n, a, b in zip(header.split(), starts, [*starts[1:], None], strict=True)}
    assert (cells["READY"], cells["PROBLEM"]) == ("True", reason)
    events = wait_for(
        lambda: [e for e in pod_events(cluster, namespace, "agent") if e.reason == reason],
        what="Warning Event on the pod",
    )
    assert minting_service.url.split("/mint")[0] in events[0].message
    assert read_secret(cluster, namespace, secret_name_of(created)) is None, "a Secret was written anyway"
    pod = cluster.core.read_namespaced_pod("agent", namespace)
    assert pod.spec.scheduling_gates and pod.spec.node_name is None
    assert labels.BINDING_ANNOTATION in pod.metadata.annotations


def test_example_tool_gateway_speaks_rfc_6750_and_rfc_9728(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """examples/tool-gateway: RFC 9728 metadata naming agentcred, 401 with its location, 403
    insufficient_scope naming the scope to ask for; a narrowed token grants exactly its
    scope or authorization_details, a projected value its credential's scope."""
    import importlib.util
    import threading
    from http.server import ThreadingHTTPServer

    from agentcred.devcluster.controlplane import free_port
    from clusterkit import REPO

    spec = importlib.util.spec_from_file_location("gateway", REPO / "examples" / "tool-gateway" / "gateway.py")
    gateway = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gateway)
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, value = _agent(cluster, namespace)
    projected = value.decode()
    port = free_port()
    server = ThreadingHTTPServer(
        ("127.0.0.1", port),
        gateway.make_handler(gateway.Keys(operator.api_url, operator.ca_file()), AUDIENCE, namespace),
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    metadata_url = f"{AUDIENCE}/.well-known/oauth-protected-resource"

    def call(token: str | None, tool: str, resource: str = "repo:acme/app") -> tuple[int, dict, str]:
        headers = {"X-Tool": tool, "X-Action": "read", "X-Resource": resource}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read()), response.headers.get("WWW-Authenticate", "")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), error.headers.get("WWW-Authenticate", "")

    def narrowed(**fields: str) -> str:
        status, answer = exchange(operator, bound_token(cluster, namespace, pod), resource=AUDIENCE, **fields)
        assert status == 200, answer
        return str(answer["access_token"])

    try:
        local = f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource"
        with urllib.request.urlopen(local, timeout=10) as response:
            metadata = json.loads(response.read())
        assert metadata["resource"] == AUDIENCE and metadata["authorization_servers"] == [operator.api_url]

        # No token: 401 and where to learn more, no error code (RFC 6750 §3.1).
        status, _, challenge = call(None, "web-search")
        assert (status, challenge) == (401, f'Bearer resource_metadata="{metadata_url}"')
        status, body, challenge = call("forged.token.here", "web-search")
        assert (status, body["error"]) == (401, "invalid_token")
        assert challenge.startswith('Bearer error="invalid_token"')
        assert f'resource_metadata="{metadata_url}"' in challenge

        # A projected value grants what its credential's scope allows.
        status, body, _ = call(projected, "web-search")
        assert (status, body["grantedBy"]) == (200, ["credential"])
        status, body, challenge = call(projected, "delete-repo")
        assert (status, body["error"]) == (403, "insufficient_scope") and "out-of-scope" in body["error_description"]
        assert challenge.startswith(
            'Bearer error="insufficient_scope", scope="tool:delete-repo action:read resource:repo:acme/app"'
        )
        assert f'resource_metadata="{metadata_url}"' in challenge

        # A narrowed token grants exactly its scope, or its authorization details: fetch-page
        # is in the credential's scope, but not in what this token was narrowed to.
        by_scope = narrowed(scope="tool:web-search action:read resource:repo:acme/app")
        status, body, _ = call(by_scope, "web-search")
        assert (status, body["grantedBy"]) == (200, ["scope"])
        status, body, challenge = call(by_scope, "fetch-page")
        assert status == 403 and 'scope="tool:fetch-page action:read resource:repo:acme/app"' in challenge
        by_details = narrowed(authorization_details=details("fetch-page", ["read"], "repo:acme/docs"))
        status, body, _ = call(by_details, "fetch-page", "repo:acme/docs")
        assert (status, body["grantedBy"]) == (200, ["authorization_details"])
        assert call(by_details, "fetch-page", "repo:acme/app")[0] == 403

        # An intent that is not named: 400.
        incomplete = urllib.request.Request(
            f"http://127.0.0.1:{port}/", data=b"", method="POST", headers={"Authorization": f"Bearer {projected}"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(incomplete, timeout=10)
        assert refused.value.code == 400 and json.loads(refused.value.read())["error"] == "invalid_request"
    finally:
        server.shutdown()
