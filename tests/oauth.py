"""Talk to agentcred's token service the way any OAuth client does (form posts over HTTPS),
and judge what it issues with a JOSE library nobody here wrote (PyJWT), keys taken from the
`jwks_uri` its RFC 8414 metadata names."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import jwt

from clusterkit import Cluster, OperatorProcess

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOOL = "agentcred.dev/tool"


def bound_token(
    cluster: Cluster, namespace: str, pod: dict | None, audience: str = "agentcred", sa: str = "research-agent"
) -> str:
    """A TokenRequest token of `sa`, bound to `pod` (as the kubelet projects it) unless None."""
    spec: dict[str, Any] = {"audiences": [audience], "expirationSeconds": 600}
    if pod is not None:
        spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
        }
    return cluster.core.create_namespaced_service_account_token(sa, namespace, {"spec": spec}).status.token


def post(
    url: str, cafile: str, fields: dict[str, Any] | list[tuple[str, str]] | bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    """POST a form (or raw bytes); the status, the JSON answer (None if empty) and headers."""
    data = fields if isinstance(fields, bytes) else urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    )
    context = ssl.create_default_context(cafile=cafile)
    try:
        with urllib.request.urlopen(request, context=context, timeout=15) as response:
            body = response.read()
            return response.status, json.loads(body) if body else None, dict(response.headers)
    except urllib.error.HTTPError as error:
        body = error.read()
        return error.code, json.loads(body) if body else None, dict(error.headers)


def token_request(operator: OperatorProcess, fields: dict[str, Any] | list[tuple[str, str]] | bytes, **headers: str):
    return post(f"{operator.api_url}/oauth2/token", operator.ca_file(), fields, headers)


def exchange(operator: OperatorProcess, subject_token: str, subject_type: str = JWT_TYPE, **fields: Any):
    """A token exchange (RFC 8693): status and answer."""
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject_token, "subject_token_type": subject_type}
    status, answer, _ = token_request(operator, {**form, **fields})
    return status, answer


def details(tool: str, actions: list[str], identifier: str, **extra: Any) -> str:
    return json.dumps([{"type": TOOL, "tool": tool, "actions": actions, "identifier": identifier, **extra}])


def metadata(operator: OperatorProcess) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=operator.ca_file())
    url = f"{operator.api_url}/.well-known/oauth-authorization-server"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return json.loads(response.read())


def independently_verified(operator: OperatorProcess, token: str, audience: str) -> dict[str, Any]:
    """The claims, as PyJWT verifies them with the keys at the metadata's `jwks_uri`: the
    signature, `iss`, `aud`, `exp`, and the RFC 9068 header type."""
    found = metadata(operator)
    context = ssl.create_default_context(cafile=operator.ca_file())
    keys = jwt.PyJWKClient(found["jwks_uri"], cache_keys=False, ssl_context=context)
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt", header
    return jwt.decode(
        token,
        keys.get_signing_key_from_jwt(token).key,
        algorithms=["EdDSA", "ES256", "RS256"],
        audience=audience,
        issuer=found["issuer"],
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"]},
    )
