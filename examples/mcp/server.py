"""A documentation MCP server that accepts only access tokens agentcred issued.

Built on the official `mcp` SDK (MCPServer over streamable HTTP) and PyJWT; nothing here is
agentcred's code. What makes it an OAuth 2.0 resource server:

- RFC 9728 protected-resource metadata at `/.well-known/oauth-protected-resource<path>`,
  naming agentcred's issuer as the authorization server (the SDK serves it);
- every request needs `Authorization: Bearer <token>`; without a valid one the answer is 401
  with `WWW-Authenticate: Bearer ..., resource_metadata="<that metadata>"` (the SDK's);
- a token is valid when PyJWT verifies it with a key from the `jwks_uri` of agentcred's
  RFC 8414 metadata, its header says `typ: at+jwt` (RFC 9068), `iss` is the issuer, `aud`
  is this server's resource URL, it has not expired, and (`--namespace`) its `sub` is a
  ServiceAccount of the tenant this server serves;
- each `tools/call` needs the tool granted by the token's `scope`
  (`tool:<tool> action:call resource:docs:<collection>`) or by an `authorization_details`
  entry of type `agentcred.dev/tool`; otherwise the answer is 403 with
  `WWW-Authenticate: Bearer error="insufficient_scope", scope="<the scope it needs>"`, which
  MCP clients answer by asking their authorization server for that scope (step-up).

Sender-constrained tokens (DPoP, RFC 9449): a token whose `cnf.jkt` binds it to a key is
accepted only as `Authorization: DPoP <token>` with a `DPoP` proof signed by that key for this
request (`htm`, `htu`, `iat` within a minute, a `jti` not seen before, `ath` = the token's
hash), checked with PyJWT; otherwise 401 with a `WWW-Authenticate: DPoP` challenge. A copy of
the token from a log or a transcript is useless without the key.

The metadata lists no `scopes_supported` on purpose: MCP clients ask for every scope listed
there at once, and agentcred refuses a request that asks for anything outside the agent's
credential, so an agent allowed one tool would get no token at all. Clients ask per tool,
when a call is refused.

    python server.py --issuer https://agentcred.agentcred.svc:8443 --cafile ca.crt \
        --resource http://docs-mcp.agents.svc:8000/mcp --namespace agents --port 8000
"""

from __future__ import annotations

import argparse
import base64
import contextvars
import hashlib
import hmac
import json
import logging
import ssl
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import jwt
import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("docs-mcp")

ALGORITHMS = ["EdDSA", "ES256", "RS256"]  # what agentcred signs with; never none or HMAC
ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")  # RFC 9068 §2.1
TOOL_DETAILS = "agentcred.dev/tool"  # the authorization_details type agentcred documents
ACTION = "call"  # every tool here is one MCP `tools/call`
MAX_BODY = 1024 * 1024  # what the scope check reads of a request before it refuses it
LEEWAY = 30  # seconds of clock skew tolerated on exp
PROOF_ALGORITHMS = ["ES256", "ES384", "EdDSA", "PS256", "RS256"]  # asymmetric only (RFC 9449 §4.2)
PROOF_MAX_AGE = 60  # seconds a proof is accepted after it was made
# The token a DPoP proof was checked for in this request, and its claims (set by DPoPProofs,
# read by the token verifier in the same request).
PROVEN: contextvars.ContextVar[tuple[str, dict[str, Any]] | None] = contextvars.ContextVar("proven", default=None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 over the key's required members, sorted, without whitespace."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


class ProofRefused(Exception):
    pass


class Proofs:
    """RFC 9449 §4.3 with PyJWT: the proof's own key, its claims against the request, each jti once."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def check(self, proof: str, method: str, url: str, token: str, jkt: str) -> None:
        try:
            header = jwt.get_unverified_header(proof)
            jwk = header.get("jwk")
            if header.get("typ") != "dpop+jwt" or header.get("alg") not in PROOF_ALGORITHMS:
                raise ProofRefused("the proof's typ must be dpop+jwt and its alg asymmetric")
            if not isinstance(jwk, dict) or {"d", "p", "q", "k"} & set(jwk):
                raise ProofRefused("the proof's jwk must be a public key")
            if thumbprint(jwk) != jkt:
                raise ProofRefused("the proof is not signed by the key the token is bound to")
            claims = jwt.decode(
                proof,
                jwt.PyJWK(jwk, header["alg"]).key,
                algorithms=[header["alg"]],
                leeway=5,
                options={"require": ["jti", "htm", "htu", "iat"], "verify_aud": False},
            )
        except (jwt.PyJWTError, KeyError, ValueError, TypeError) as error:
            raise ProofRefused(f"the proof does not verify: {error}") from None
        now = time.time()
        if claims["htm"] != method or str(claims["htu"]).split("?")[0].rstrip("/") != url.rstrip("/"):
            raise ProofRefused("the proof is for another request")
        if not now - PROOF_MAX_AGE <= claims["iat"] <= now + 5:
            raise ProofRefused("the proof is stale")
        if not hmac.compare_digest(str(claims.get("ath", "")), b64url(hashlib.sha256(token.encode()).digest())):
            raise ProofRefused("the proof is for another token")
        self.seen = {jti: until for jti, until in self.seen.items() if until > now}
        if f"{jkt}:{claims['jti']}" in self.seen:
            raise ProofRefused("the proof was used before")
        self.seen[f"{jkt}:{claims['jti']}"] = now + PROOF_MAX_AGE + 5


def authorization_server_metadata(issuer: str, context: ssl.SSLContext) -> dict[str, Any]:
    """RFC 8414 metadata of `issuer`, from the well-known URL built as §3.1 says."""
    parts = urlsplit(issuer)
    url = f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path.rstrip('/')}"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        metadata = json.loads(response.read())
    if not isinstance(metadata, dict) or metadata.get("issuer") != issuer:  # RFC 8414 §3.3
        raise ValueError(f"{url} is not the metadata of issuer {issuer}")
    return metadata


def tenant_problem(claims: dict[str, Any], namespace: str | None) -> str | None:
    """Why a token is not from the tenant this server serves, or None. agentcred's `sub` is the
    agent's ServiceAccount, `system:serviceaccount:<namespace>:<name>`; another namespace whose
    AgentCredential names this server as an audience (if a policy lets it) is another tenant."""
    if namespace is None or str(claims.get("sub", "")).startswith(f"system:serviceaccount:{namespace}:"):
        return None
    return f"sub {claims.get('sub')!r} is not a ServiceAccount of namespace {namespace}"


class AgentcredTokens(TokenVerifier):
    """Verifies RFC 9068 access tokens with PyJWT and the issuer's published keys."""

    def __init__(self, issuer: str, resource: str, context: ssl.SSLContext, namespace: str | None = None) -> None:
        self.issuer, self.resource, self.namespace = issuer, resource, namespace
        metadata = authorization_server_metadata(issuer, context)
        # The key set is cached and fetched again when a token names a key it does not hold
        # (agentcred rotates keys with overlap).
        self.keys = jwt.PyJWKClient(metadata["jwks_uri"], cache_jwk_set=True, lifespan=300, ssl_context=context)

    def claims(self, token: str) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        if str(header.get("typ", "")).lower() not in ACCESS_TOKEN_TYPES:
            raise jwt.InvalidTokenError(f"typ {header.get('typ')!r} is not at+jwt")
        key = self.keys.get_signing_key_from_jwt(token)
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=ALGORITHMS,
            audience=self.resource,
            issuer=self.issuer,
            leeway=LEEWAY,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"]},
        )
        problem = tenant_problem(claims, self.namespace)
        if problem is not None:
            raise jwt.InvalidTokenError(problem)
        return claims

    async def verify_token(self, token: str) -> AccessToken | None:
        proven = PROVEN.get()
        if proven is not None and proven[0] == token:
            claims = proven[1]
        else:
            try:
                # PyJWKClient fetches keys with blocking I/O: off the event loop.
                claims = await anyio.to_thread.run_sync(self.claims, token)
            except (jwt.PyJWTError, OSError) as error:
                log.info("refused a token: %s", error)  # the reason, never the token
                return None
            if isinstance(claims.get("cnf"), dict):
                log.info("refused a DPoP-bound token sent without its proof")
                return None
        return AccessToken(
            token=token,
            client_id=str(claims["client_id"]),
            scopes=str(claims.get("scope") or "").split(),
            expires_at=int(claims["exp"]),
            resource=self.resource,
            subject=str(claims["sub"]),
            claims=claims,
        )


class DPoPProofs:
    """ASGI middleware, outermost: `Authorization: DPoP <token>` with a proof by the token's key
    for this request becomes the bearer the SDK's authentication reads (the token's claims kept
    for its verifier); a missing or wrong proof is answered 401 with a DPoP challenge."""

    def __init__(self, app: ASGIApp, *, path: str, resource: str, tokens: AgentcredTokens) -> None:
        self.app, self.path, self.resource, self.tokens = app, path, resource, tokens
        self.proofs = Proofs()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        kind, _, token = headers.get("authorization", "").partition(" ")
        if kind.lower() != "dpop":
            await self.app(scope, receive, send)
            return
        token = token.strip()
        try:
            claims = await anyio.to_thread.run_sync(self.tokens.claims, token)
            jkt = (claims.get("cnf") or {}).get("jkt")
            if not isinstance(jkt, str):
                raise ProofRefused("the token is not bound to a key: send it as Bearer")
            self.proofs.check(headers.get("dpop", ""), scope["method"], self.resource, token, jkt)
        except (jwt.PyJWTError, OSError, ProofRefused) as error:
            log.info("refused a DPoP request: %s", error)  # the reason, never the token
            body = json.dumps({"error": "invalid_dpop_proof", "error_description": str(error)[:200]}).encode()
            challenge = f'DPoP error="invalid_dpop_proof", algs="{" ".join(PROOF_ALGORITHMS)}"'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", challenge.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        # The SDK authenticates bearer tokens: hand it this one, proven, with its claims.
        rest = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in (b"authorization", b"dpop")]
        scope = {**scope, "headers": [*rest, (b"authorization", f"Bearer {token}".encode())]}
        PROVEN.set((token, claims))
        await self.app(scope, receive, send)


class Tools:
    """Which tool calls a token's claims grant, and the scope each one needs."""

    def __init__(self, names: set[str], collection: str, resource: str) -> None:
        self.names, self.resource = names, resource
        self.identifier = f"docs:{collection}"

    def needed_scope(self, tool: str) -> str:
        return f"tool:{tool} action:{ACTION} resource:{self.identifier}"

    def granted(self, claims: dict[str, Any], tool: str) -> bool:
        # `scope` grants every combination of the tools, actions and resources it names.
        named: dict[str, set[str]] = {"tool": set(), "action": set(), "resource": set()}
        for item in str(claims.get("scope") or "").split():
            kind, _, value = item.partition(":")
            if kind in named and value:
                named[kind].add(value)
        if tool in named["tool"] and ACTION in named["action"] and self.identifier in named["resource"]:
            return True
        details = claims.get("authorization_details")
        for detail in details if isinstance(details, list) else []:
            if not isinstance(detail, dict) or detail.get("type") != TOOL_DETAILS:
                continue
            actions, locations = detail.get("actions"), detail.get("locations", [self.resource])
            if (
                detail.get("tool") == tool
                and isinstance(actions, list)  # lists, or `in` would match substrings
                and ACTION in actions
                and detail.get("identifier") == self.identifier
                and isinstance(locations, list)
                and self.resource in locations
            ):
                return True
        return False

    def require(self, tool: str) -> None:
        """Inside a tool: the call is refused unless the current token grants it (the HTTP
        check below answers first; this holds even if a request reached the tool some other way)."""
        token = get_access_token()
        if token is None or not self.granted(token.claims or {}, tool):
            raise ToolError(f"the access token does not grant {self.needed_scope(tool)}")


class ToolScopes:
    """ASGI middleware: a `tools/call` for a tool the token does not grant is answered 403
    `insufficient_scope` (RFC 6750 §3.1) with the scope it needs, before the MCP session sees it.
    Runs after the SDK's bearer authentication; unauthenticated requests pass on to its 401."""

    def __init__(self, app: ASGIApp, *, path: str, tools: Tools, resource_metadata: str) -> None:
        self.app, self.path, self.tools, self.resource_metadata = app, path, tools, resource_metadata

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        if not isinstance(user, AuthenticatedUser):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                await self._reply(send, 413, {"error": "invalid_request", "error_description": "request too large"})
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        disagreement = self._disagreement(body, scope)
        if disagreement is not None:
            await self._reply(send, 400, {"error": "invalid_request", "error_description": disagreement})
            return
        for tool in self._called(body):
            if tool in self.tools.names and not self.tools.granted(user.access_token.claims or {}, tool):
                log.info("refused %s to %s: the token does not grant it", tool, user.access_token.subject)
                await self._insufficient_scope(send, tool)
                return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _disagreement(body: bytes, scope: Scope) -> str | None:
        """Headers that name the call (Mcp-Method, Mcp-Name or Mcp-Tool-Name, as MCP 2026-07-28 and
        gateways send them) must name this body's call: a gateway that decided from the headers
        alone then decided this call (the route's `mcp.headerAgreement` in agentcred)."""
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        said_method, said_names = headers.get("mcp-method"), {headers.get("mcp-name"), headers.get("mcp-tool-name")}
        said_names.discard(None)
        if said_method is None and not said_names:
            return None
        try:
            parsed = json.loads(body)
        except ValueError:
            return "the body is not JSON"
        if not isinstance(parsed, dict):
            return "headers name one call, the body is not one message"
        if said_method is not None and said_method != parsed.get("method"):
            return "Mcp-Method disagrees with the body"
        name = (parsed.get("params") or {}).get("name") if isinstance(parsed.get("params"), dict) else None
        if said_names and (parsed.get("method") != "tools/call" or said_names != {name}):
            return "Mcp-Name disagrees with the body"
        return None

    @staticmethod
    def _called(body: bytes) -> list[str]:
        try:
            parsed = json.loads(body)
        except ValueError:
            return []  # not JSON: the transport refuses it
        calls = parsed if isinstance(parsed, list) else [parsed]
        return [
            str((call.get("params") or {}).get("name"))
            for call in calls
            if isinstance(call, dict) and call.get("method") == "tools/call" and isinstance(call.get("params"), dict)
        ]

    async def _insufficient_scope(self, send: Send, tool: str) -> None:
        needed = self.tools.needed_scope(tool)
        description = f"{tool} needs scope {needed}"
        challenge = (
            f'Bearer error="insufficient_scope", scope="{needed}", '
            f'resource_metadata="{self.resource_metadata}", error_description="{description}"'
        )
        body = {"error": "insufficient_scope", "error_description": description, "scope": needed}
        await self._reply(send, 403, body, challenge)

    @staticmethod
    async def _reply(send: Send, status: int, body: dict[str, str], challenge: str | None = None) -> None:
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        if challenge is not None:
            headers.append((b"www-authenticate", challenge.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


DOCS = {
    "rotation": "Credentials rotate every 15 minutes; agents never see long-lived keys.",
    "onboarding": "New agents get a ServiceAccount and an AgentCredential, nothing else.",
    "incident": "Revoke a pod's credentials with agentcred revoke; its tokens die with it.",
}


def build(
    issuer: str,
    resource: str,
    collection: str,
    context: ssl.SSLContext,
    host: str = "0.0.0.0",
    namespace: str | None = None,
) -> Starlette:
    """The server's ASGI application; with `namespace`, only that tenant's agents get in."""
    docs = dict(DOCS)
    tools = Tools({"search_docs", "delete_docs"}, collection, resource)
    verifier = AgentcredTokens(issuer, resource, context, namespace)
    server = MCPServer(
        "docs",
        token_verifier=verifier,
        # Strings, not AnyHttpUrl objects: the settings keep a path-less issuer as it is
        # spelled, where AnyHttpUrl would add a "/" and the issuer would no longer match.
        auth=AuthSettings.model_validate(
            {
                "issuer_url": issuer,
                "resource_server_url": resource,
                "validate_token_resource": True,  # PyJWT checked `aud` already; the SDK agrees
            }
        ),
    )

    @server.tool()
    def search_docs(query: str) -> list[str]:
        """Titles and text of the documents that mention `query`."""
        tools.require("search_docs")
        return [f"{title}: {text}" for title, text in docs.items() if query.lower() in f"{title} {text}".lower()]

    @server.tool()
    def delete_docs(titles: list[str]) -> str:
        """Delete documents by title."""
        tools.require("delete_docs")
        deleted = [title for title in titles if docs.pop(title, None) is not None]
        return f"deleted {len(deleted)} documents"

    path = urlsplit(resource).path or "/"
    app = server.streamable_http_app(streamable_http_path=path, host=host)
    resource_metadata = str(build_resource_metadata_url(AnyHttpUrl(resource)))
    # Innermost of the app's middleware, so after the SDK's bearer authentication: it sees
    # the verified token. (Starlette's add_middleware would put it first, before that.)
    app.user_middleware.append(Middleware(ToolScopes, path=path, tools=tools, resource_metadata=resource_metadata))
    # Outermost: a DPoP proof is checked before anything reads the token.
    app.user_middleware.insert(0, Middleware(DPoPProofs, path=path, resource=resource, tokens=verifier))
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuer", required=True, help="agentcred's issuer (AGENTCRED_ISSUER in its pods)")
    parser.add_argument("--cafile", help="CA bundle for the issuer's HTTPS (agentcred's ca-bundle ConfigMap)")
    parser.add_argument("--resource", required=True, help="this server's MCP endpoint URL: the tokens' audience")
    parser.add_argument("--collection", default="handbook", help="the document collection served")
    tenant = parser.add_mutually_exclusive_group(required=True)
    tenant.add_argument("--namespace", help="accept only agents of this namespace (the tenant served)")
    tenant.add_argument("--any-namespace", action="store_true", help="accept agents of any namespace")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    context = ssl.create_default_context(cafile=args.cafile)
    app = build(args.issuer, args.resource, args.collection, context, args.host, args.namespace)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
