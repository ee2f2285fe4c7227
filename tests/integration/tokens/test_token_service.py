"""The token service as OAuth clients and resource servers meet it: RFC 8414 metadata, token
exchange (RFC 8693), JWT bearer and client credentials (RFC 7523) with real pod-bound
ServiceAccount tokens, RFC 9068 access tokens judged by PyJWT, introspection (RFC 7662) and
revocation (RFC 7009), and every refusal an RFC error that is audited and issues nothing."""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from authlib.integrations.requests_client import OAuth2Session

from agentcred.platform.keys import KeyRing, encode_jwt
from agentcred.rules.scope import Intent
from agentcred.verify import TokenRejected, Verifier
from agents import audit_lines, create_credential, read_secret, secret_name_of, service_account, start_agent, value_of
from clusterkit import INTROSPECTOR, Cluster, OperatorProcess, ensure_namespace, wait_for
from oauth import (
    ACCESS_TOKEN_TYPE,
    CLIENT_ASSERTION_TYPE,
    JWT_BEARER,
    JWT_TYPE,
    TOKEN_EXCHANGE,
    bound_token,
    details,
    exchange,
    independently_verified,
    metadata,
    post,
    token_request,
)

AUDIENCE = "https://llm-gateway.internal"
SCOPE = {
    "tools": ["web-search", "fetch-*"],
    "resources": ["repo:acme/*"],
    "actions": ["read"],
    "deny": {"resources": ["repo:acme/secrets*"]},
}
READ_APP = details("web-search", ["read"], "repo:acme/app")


def _agent(cluster: Cluster, namespace: str, name: str = "agent") -> tuple[dict, str]:
    """An admitted, running agent pod and its projected agentcred token."""
    pod = start_agent(cluster, namespace, name)
    value = value_of(read_secret(cluster, namespace, secret_name_of(pod)), "research-llm")
    assert value is not None
    return pod, value.decode()


def _verifier(operator: OperatorProcess) -> Verifier:
    return Verifier.from_url(operator.api_url, cafile=operator.ca_file())


def _subject(namespace: str, sa: str = "research-agent") -> str:
    return f"system:serviceaccount:{namespace}:{sa}"


def test_metadata_names_every_endpoint_and_agrees_with_discovery(operator: OperatorProcess) -> None:
    found = metadata(operator)
    issuer = operator.api_url
    assert found["issuer"] == issuer
    assert {k: found[k] for k in ("token_endpoint", "introspection_endpoint", "revocation_endpoint", "jwks_uri")} == {
        "token_endpoint": f"{issuer}/oauth2/token",
        "introspection_endpoint": f"{issuer}/oauth2/introspect",
        "revocation_endpoint": f"{issuer}/oauth2/revoke",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
    }
    assert set(found["grant_types_supported"]) == {TOKEN_EXCHANGE, JWT_BEARER, "client_credentials"}
    assert found["authorization_details_types_supported"] == ["agentcred.dev/tool"]
    context = ssl.create_default_context(cafile=operator.ca_file())
    with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", context=context) as response:
        discovery = json.loads(response.read())
    assert {k: discovery[k] for k in found} == found
    with pytest.raises(urllib.error.HTTPError) as authorize:
        urllib.request.urlopen(f"{issuer}/oauth2/authorize?response_type=code", context=context)
    assert authorize.value.code == 400
    assert json.loads(authorize.value.read())["error"] == "unsupported_response_type"
    keys = json.loads(urllib.request.urlopen(found["jwks_uri"], context=context).read())["keys"]
    assert {key["alg"] for key in keys} >= {"EdDSA", "ES256", "RS256"}


def test_a_pod_token_exchanges_for_a_narrowed_rfc_9068_token(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE, ttl="10m")
    pod, _ = _agent(cluster, namespace)
    token = bound_token(cluster, namespace, pod)

    status, answer, headers = token_request(
        operator,
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": token,
            "subject_token_type": JWT_TYPE,
            "resource": AUDIENCE,
            "authorization_details": READ_APP,
        },
    )
    assert status == 200, answer
    assert headers["Cache-Control"] == "no-store"
    assert answer["token_type"] == "Bearer" and answer["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert 0 < answer["expires_in"] <= 300
    assert answer["authorization_details"] == json.loads(READ_APP)
    claims = independently_verified(operator, answer["access_token"], AUDIENCE)
    assert claims["sub"] == claims["client_id"] == _subject(namespace)
    assert claims["authorization_details"] == json.loads(READ_APP) and "scope" not in claims
    assert claims["agentcred"]["podUID"] == pod["metadata"]["uid"] and "scope" not in claims["agentcred"]
    # Our own verifier agrees, and holds the token to exactly what it grants.
    verifier = _verifier(operator)
    assert verifier.verify(
        answer["access_token"], AUDIENCE, Intent("web-search", "read", "repo:acme/app"), namespace=namespace
    )
    with pytest.raises(TokenRejected) as other:
        verifier.verify(
            answer["access_token"], AUDIENCE, Intent("fetch-page", "read", "repo:acme/app"), namespace=namespace
        )
    assert other.value.reason == "out-of-scope"
    line = audit_lines(operator, "exchange", podUID=pod["metadata"]["uid"])[0]
    assert line["grant"] == TOKEN_EXCHANGE and line["tokenId"] == claims["jti"]
    assert line["intents"] == [{"tool": "web-search", "action": "read", "resource": "repo:acme/app"}]
    assert token not in json.dumps(line) and answer["access_token"] not in json.dumps(line)


def test_jwt_bearer_and_client_credentials_through_an_oauth_library(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    """authlib, configured only with the metadata's token endpoint, obtains tokens by both
    RFC 7523 grants; MCP's workload-identity clients send the second form."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, _ = _agent(cluster, namespace)
    endpoint = metadata(operator)["token_endpoint"]
    session = OAuth2Session(client_id=_subject(namespace), token_endpoint_auth_method="none")
    cafile = operator.ca_file()

    bearer = session.fetch_token(
        endpoint,
        grant_type=JWT_BEARER,
        assertion=bound_token(cluster, namespace, pod),
        scope="tool:web-search tool:fetch-page action:read resource:repo:acme/app",
        resource=AUDIENCE,
        verify=cafile,
    )
    assert bearer["scope"] == "tool:web-search tool:fetch-page action:read resource:repo:acme/app"
    claims = independently_verified(operator, bearer["access_token"], AUDIENCE)
    assert claims["scope"] == bearer["scope"] and claims["client_id"] == _subject(namespace)
    verifier = _verifier(operator)
    assert verifier.verify(
        bearer["access_token"], AUDIENCE, Intent("fetch-page", "read", "repo:acme/app"), namespace=namespace
    )

    # RFC 7523bis: a client assertion addressed to the issuer itself is accepted too.
    assertion = bound_token(cluster, namespace, pod, audience=metadata(operator)["issuer"])
    client = session.fetch_token(
        endpoint,
        grant_type="client_credentials",
        client_assertion=assertion,
        client_assertion_type=CLIENT_ASSERTION_TYPE,
        resource=AUDIENCE,
        verify=cafile,
    )
    full = independently_verified(operator, client["access_token"], AUDIENCE)
    # Nothing asked for: the credential's own scope, as the projected value has it.
    assert full["agentcred"]["scope"]["tools"] == SCOPE["tools"] and "scope" not in client
    assert full["agentcred"]["scope"]["deny"]["resources"] == SCOPE["deny"]["resources"]
    assert "issued_token_type" not in client  # only token exchange answers with one

    # A client_id that is not the pod's ServiceAccount: the client is unknown.
    status, refused, headers = token_request(
        operator, {"grant_type": JWT_BEARER, "assertion": bound_token(cluster, namespace, pod), "client_id": "someone"}
    )
    assert (status, refused["error"]) == (401, "invalid_client") and "WWW-Authenticate" in headers


def test_an_agentcred_token_narrows_further_and_records_who_acts(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    service_account(cluster, namespace, "planner")
    create_credential(cluster, namespace, scope=SCOPE, subjects={"serviceAccounts": ["research-agent", "planner"]})
    pod, projected = _agent(cluster, namespace)
    projected_jti = independently_verified(operator, projected, AUDIENCE)["jti"]

    # The pod's projected value is itself an access token it may narrow; an actor (another
    # workload acting through it) is recorded as `act`.
    actor = bound_token(cluster, namespace, None, sa="planner")
    status, narrowed = exchange(
        operator,
        projected,
        ACCESS_TOKEN_TYPE,
        authorization_details=details("fetch-page", ["read"], "repo:acme/docs"),
        actor_token=actor,
        actor_token_type=JWT_TYPE,
    )
    assert status == 200, narrowed
    claims = independently_verified(operator, narrowed["access_token"], AUDIENCE)
    assert claims["act"] == {"sub": _subject(namespace, "planner")}
    assert claims["agentcred"]["derivedFrom"] == [projected_jti]

    # Exchanged again with nothing asked: the same grant, the actor kept, the lineage grown.
    status, again = exchange(operator, narrowed["access_token"], ACCESS_TOKEN_TYPE)
    assert status == 200, again
    second = independently_verified(operator, again["access_token"], AUDIENCE)
    assert second["authorization_details"] == claims["authorization_details"] and second["act"] == claims["act"]
    assert second["agentcred"]["derivedFrom"] == [projected_jti, claims["jti"]]
    assert second["exp"] <= claims["exp"]

    # It can never widen: another intent, another audience.
    status, wider = exchange(operator, narrowed["access_token"], ACCESS_TOKEN_TYPE, authorization_details=READ_APP)
    assert (status, wider["error"]) == (400, "invalid_authorization_details")
    assert "outside the subject token's grant" in wider["error_description"]
    status, elsewhere = exchange(operator, narrowed["access_token"], ACCESS_TOKEN_TYPE, audience="https://other")
    assert (status, elsewhere["error"]) == (400, "invalid_target")


def test_refusals_are_rfc_errors_audited_and_issue_nothing(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    service_account(cluster, namespace, "bystander")
    create_credential(cluster, namespace, scope=SCOPE)
    pod, projected = _agent(cluster, namespace)
    token = bound_token(cluster, namespace, pod)
    bystander = cluster.api_client.sanitize_for_serialization(
        cluster.core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "bystander"},
                "spec": {"serviceAccountName": "bystander", "containers": [{"name": "c", "image": "x"}]},
            },
        )
    )
    forged = encode_jwt(
        {"iss": operator.api_url, "sub": _subject(namespace), "agentcred": {"podUID": pod["metadata"]["uid"]}},
        KeyRing.generate(dt.datetime.now(dt.timezone.utc)).current("EdDSA"),
    )
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": JWT_TYPE}
    cases = {
        "token for another audience": {**form, "subject_token": bound_token(cluster, namespace, pod, "kubernetes")},
        "unbound token": {**form, "subject_token": bound_token(cluster, namespace, None)},
        "a pod admitted for nothing": {
            **form,
            "subject_token": bound_token(cluster, namespace, bystander, sa="bystander"),
        },
        "forged token naming our issuer": {**form, "subject_token": forged, "subject_token_type": ACCESS_TOKEN_TYPE},
        "denied resource": {**form, "authorization_details": details("web-search", ["read"], "repo:acme/secrets-x")},
        "tool not allowed": {**form, "scope": "tool:delete-repo action:read resource:repo:acme/app"},
        "audience it does not hold": {**form, "resource": "https://payments.internal"},
        "bad assertion": {"grant_type": JWT_BEARER, "assertion": "not-a-token"},
        "bad client assertion": {
            "grant_type": "client_credentials",
            "client_assertion": "x.y.z",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
        },
        "unsupported grant": {"grant_type": "password", "username": "u", "password": "p"},
        "repeated parameter": [*form.items(), ("scope", "tool:a"), ("scope", "tool:b")],
        "oversized": {**form, "scope": "tool:" + "x" * 20000},
    }
    issued_before = len(audit_lines(operator, "exchange", namespace=namespace))
    answers = {case: token_request(operator, fields) for case, fields in cases.items()}
    answers["wrong content type"] = post(
        f"{operator.api_url}/oauth2/token",
        operator.ca_file(),
        json.dumps(form).encode(),
        {"Content-Type": "application/json"},
    )
    summary = {case: (status, body["error"]) for case, (status, body, _) in answers.items()}
    assert summary == {
        "token for another audience": (400, "invalid_request"),
        "unbound token": (400, "invalid_request"),
        "a pod admitted for nothing": (400, "invalid_request"),
        "forged token naming our issuer": (400, "invalid_request"),
        "denied resource": (400, "invalid_authorization_details"),
        "tool not allowed": (400, "invalid_scope"),
        "audience it does not hold": (400, "invalid_target"),
        "bad assertion": (400, "invalid_grant"),
        "bad client assertion": (401, "invalid_client"),
        "unsupported grant": (400, "unsupported_grant_type"),
        "repeated parameter": (400, "invalid_request"),
        "oversized": (400, "invalid_request"),
        "wrong content type": (400, "invalid_request"),
    }
    descriptions = {case: body["error_description"] for case, (_, body, _) in answers.items()}
    assert "did not accept the token" in descriptions["token for another audience"]
    assert "not bound to a pod" in descriptions["unbound token"]
    assert "bystander" in descriptions["a pod admitted for nothing"]
    assert "not issued by agentcred" in descriptions["forged token naming our issuer"]
    assert "denied by pattern 'repo:acme/secrets*'" in descriptions["denied resource"]
    assert "'delete-repo' is not in the credential's scope" in descriptions["tool not allowed"]
    assert "https://payments.internal" in descriptions["audience it does not hold"]
    for _, body, headers in answers.values():
        assert token not in json.dumps(body) and projected not in json.dumps(body)
        assert headers["Cache-Control"] == "no-store"
    assert len(audit_lines(operator, "exchange", namespace=namespace)) == issued_before
    denials = [line for line in operator.audit() if line["action"] == "deny" and line.get("grant")]
    assert {"invalid_scope", "invalid_target", "invalid_authorization_details"} <= {d["reason"] for d in denials}
    assert not any(token in json.dumps(d) for d in denials)

    # A token handed out before the pod ended dies with it; the pod's token is refused.
    status, granted = exchange(operator, token, authorization_details=READ_APP)
    assert status == 200, granted
    kubelet.succeed(namespace, pod["metadata"]["name"])

    def revoked() -> bool:
        try:
            _verifier(operator).verify(granted["access_token"], AUDIENCE, namespace=namespace)
        except TokenRejected as rejected:
            return rejected.reason == "revoked"
        return False

    wait_for(revoked, timeout=15, what="the exchanged token on the revocation list")
    status, ended = exchange(operator, token, authorization_details=READ_APP)
    assert (status, ended["error"]) == (400, "invalid_request") and "has ended" in ended["error_description"]


def test_token_requests_are_rate_limited_per_pod(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, _ = _agent(cluster, namespace)
    token = bound_token(cluster, namespace, pod)
    form = {"grant_type": JWT_BEARER, "assertion": token, "scope": "tool:web-search action:read resource:repo:acme/x"}
    answers = [token_request(operator, form) for _ in range(40)]
    statuses = [status for status, _, _ in answers]
    assert statuses[0] == 200 and 429 in statuses and set(statuses) <= {200, 429}
    status, body, headers = next(a for a in answers if a[0] == 429)
    assert body["error"] == "temporarily_unavailable" and headers["Retry-After"] == "1"


def _caller_token(cluster: Cluster, namespace: str, name: str) -> str:
    ensure_namespace(cluster, namespace)
    try:
        service_account(cluster, namespace, name)
    except Exception as error:  # already there from an earlier test
        assert "AlreadyExists" in str(error)
    return bound_token(cluster, namespace, None, sa=name)


def test_introspection_for_allowed_servers_and_revocation_by_the_holder(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str
) -> None:
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, projected = _agent(cluster, namespace)
    status, granted = exchange(operator, bound_token(cluster, namespace, pod), authorization_details=READ_APP)
    assert status == 200, granted
    status, child = exchange(operator, granted["access_token"], ACCESS_TOKEN_TYPE)
    assert status == 200, child
    gateway = _caller_token(cluster, *INTROSPECTOR)
    stranger = _caller_token(cluster, namespace, "stranger")
    url = f"{operator.api_url}/oauth2/introspect"

    def introspect(token: str, caller: str | None = gateway) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {caller}"} if caller else {}
        status, body, _ = post(url, operator.ca_file(), {"token": token}, headers)
        return status, body

    status, active = introspect(granted["access_token"])
    assert status == 200 and active["active"] is True
    assert active["client_id"] == _subject(namespace) and active["token_type"] == "Bearer"
    assert active["authorization_details"] == json.loads(READ_APP) and active["aud"] == AUDIENCE
    assert introspect("garbage") == (200, {"active": False})
    forged = encode_jwt({"iss": operator.api_url}, KeyRing.generate(dt.datetime.now(dt.timezone.utc)).current("RS256"))
    assert introspect(forged) == (200, {"active": False})
    assert introspect(granted["access_token"], caller=stranger)[1]["error"] == "invalid_client"
    assert introspect(granted["access_token"], caller=None)[0] == 401

    # The holder revokes it (RFC 7009): it and what was exchanged from it are gone at once;
    # the pod's projected value is not.
    revoke = f"{operator.api_url}/oauth2/revoke"
    assert post(revoke, operator.ca_file(), {"token": granted["access_token"]})[0] == 200
    assert introspect(granted["access_token"]) == (200, {"active": False})
    assert introspect(child["access_token"]) == (200, {"active": False})
    assert introspect(projected)[1]["active"] is True
    with pytest.raises(TokenRejected) as rejected:
        _verifier(operator).verify(child["access_token"], AUDIENCE, namespace=namespace)
    assert rejected.value.reason == "revoked"
    status, refused = exchange(operator, granted["access_token"], ACCESS_TOKEN_TYPE)
    assert (status, refused["error"]) == (400, "invalid_request") and "was revoked" in refused["error_description"]
    assert post(revoke, operator.ca_file(), {"token": "unknown"})[0] == 200  # as RFC 7009 says
    assert audit_lines(operator, "revoke-token", podUID=pod["metadata"]["uid"])[0]["reason"] == "holder"


def test_a_pod_reaches_the_token_service_with_nothing_set_up(
    cluster: Cluster, operator: OperatorProcess, kubelet, namespace: str, tmp_path: Path
) -> None:
    """The webhook gives a pod with a minted credential its audience-`agentcred` token, the
    operator's CA and the endpoint's address: what it mounts is all it needs."""
    service_account(cluster, namespace)
    create_credential(cluster, namespace, scope=SCOPE)
    pod, _ = _agent(cluster, namespace)
    identity = next(v for v in pod["spec"]["volumes"] if v["name"] == "agentcred-identity")
    token_source = identity["projected"]["sources"][0]["serviceAccountToken"]
    assert token_source == {"audience": "agentcred", "expirationSeconds": 600, "path": "token"}
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["AGENTCRED_TOKEN_ENDPOINT"] == f"{operator.api_url}/oauth2/token"
    assert env["AGENTCRED_IDENTITY_TOKEN_FILE"] == "/var/run/secrets/agentcred/token"
    # What the pod's CA file holds (its Secret's ca.crt) is the published bundle, and it is
    # enough to reach the endpoint; the token is what the kubelet would project there.
    secret = read_secret(cluster, namespace, secret_name_of(pod))
    ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
    published = cluster.core.read_namespaced_config_map("agentcred-ca-bundle", operator.namespace).data["ca.crt"]
    assert ca == published and "PRIVATE KEY" not in ca
    (tmp_path / "ca.crt").write_text(ca)
    status, answer, _ = post(
        env["AGENTCRED_TOKEN_ENDPOINT"],
        str(tmp_path / "ca.crt"),
        {
            "grant_type": JWT_BEARER,
            "assertion": bound_token(cluster, namespace, pod, audience=token_source["audience"]),
        },
    )
    assert status == 200, answer
