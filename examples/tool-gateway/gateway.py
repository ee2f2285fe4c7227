"""A minimal tool gateway: an OAuth 2.0 resource server that trusts only agentcred's tokens.

Every call is a POST carrying `Authorization: Bearer <agentcred access token>` for this
gateway's audience and naming the intent it wants (here in headers: `X-Tool`, `X-Action`,
`X-Resource`). `agentcred.verify.Verifier` checks the token -- RFC 9068 type, signature
from the JWKS, issuer, audience, expiry, revocation, the tenant's namespace -- and whether it
grants the intent: a narrowed token grants exactly the intents of its `scope`
(`tool:<t> action:<a> resource:<r>`, every combination) and `authorization_details`
(type `agentcred.dev/tool`); a token that names none (a pod's projected value) grants what its
credential's scope patterns allow. Keys and the revocation list are refreshed every 60 s.

Answers are the standard ones, so OAuth clients know what to do next:

- `GET /.well-known/oauth-protected-resource` (RFC 9728): this resource, and agentcred as its
  authorization server;
- 401 `WWW-Authenticate: Bearer resource_metadata="..."` without a token, with
  `error="invalid_token"` for a token that is not valid here (RFC 6750 §3.1);
- 403 `WWW-Authenticate: Bearer error="insufficient_scope", scope="tool:.. action:.. resource:.."`
  when the token does not grant the intent: the scope to ask agentcred for (by token
  exchange of the token held, or with the pod's identity);
- 400 `invalid_request` when the call names no complete intent.

    python gateway.py --operator https://agentcred.agentcred.svc:8443 --cafile ca.crt \
        --audience https://llm-gateway.agents.svc --namespace agents --port 8080
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from agentcred.verify import Intent, TokenRejected, Verifier

REFRESH_SECONDS = 60
METADATA_PATH = "/.well-known/oauth-protected-resource"
TOOL_DETAILS = "agentcred.dev/tool"


class Keys:
    """The current Verifier, refreshed in the background so requests never wait on it."""

    def __init__(self, url: str, cafile: str | None) -> None:
        self.url, self.cafile = url, cafile
        self.verifier = Verifier.from_url(url, cafile=cafile)
        threading.Thread(target=self._refresh, daemon=True).start()

    def _refresh(self) -> None:
        while True:
            time.sleep(REFRESH_SECONDS)
            try:
                self.verifier = Verifier.from_url(self.url, cafile=self.cafile)
            except OSError as error:  # keep the last good keys; tokens still expire on time
                print(f"could not refresh keys: {error}")


def metadata_location(audience: str) -> tuple[str, str] | None:
    """Where RFC 9728 §3.1 puts this resource's metadata: (absolute URL, local path), or None
    when the audience is not an http(s) URL (then there is no metadata to point at)."""
    parts = urlsplit(audience)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    path = METADATA_PATH + parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}", path


def needed_scope(intent: Intent) -> str:
    """The scope strings that grant `intent` and nothing else."""
    return f"tool:{intent.tool} action:{intent.action} resource:{intent.resource}"


def _quoted(text: str) -> str:
    # An auth-param value is a quoted-string: no quotes, backslashes or controls inside.
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


def make_handler(keys: Keys, audience: str, namespace: str | None) -> type[BaseHTTPRequestHandler]:
    """Requests for `audience`; with `namespace`, only tokens issued to agents of that namespace
    (the tenant this gateway serves), whatever audience another tenant's credential claims."""
    location = metadata_location(audience)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if location is None or self.path.split("?")[0] != location[1]:
                self._reply(404, {"error": "not_found"})
                return
            metadata = {
                "resource": audience,
                "authorization_servers": [keys.verifier.issuer],
                "bearer_methods_supported": ["header"],
                "authorization_details_types_supported": [TOOL_DETAILS],
            }
            self._reply(200, metadata)

        def do_POST(self) -> None:
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                # RFC 6750 §3.1: no error code when the request carries no credentials.
                self._challenge(401, {}, {"error_description": "send an agentcred access token: Authorization: Bearer"})
                return
            parts = [self.headers.get(name, "") for name in ("X-Tool", "X-Action", "X-Resource")]
            if not all(parts):
                self._reply(400, {"error": "invalid_request", "error_description": "name X-Tool, X-Action, X-Resource"})
                return
            intent = Intent(*parts)
            try:
                claims = keys.verifier.verify(token.strip(), audience=audience, intent=intent, namespace=namespace)
            except TokenRejected as rejected:
                self._refused(rejected, intent)
                return
            who = claims["agentcred"]
            # ... call the real tool here, on behalf of who["pod"] in who["namespace"] ...
            granted_by = [name for name in ("scope", "authorization_details") if name in claims] or ["credential"]
            self._reply(
                200, {"ok": intent.as_dict(), "pod": who["pod"], "namespace": who["namespace"], "grantedBy": granted_by}
            )

        def _refused(self, rejected: TokenRejected, intent: Intent) -> None:
            description = f"{rejected.reason}: {rejected.message}"
            if rejected.reason == "out-of-scope":
                # A valid token that does not grant this intent: say which scope would.
                scope = needed_scope(intent)
                params = {"error": "insufficient_scope", "scope": scope, "error_description": description}
                self._challenge(403, params, {"error": "insufficient_scope", "error_description": description})
                return
            # Anything else (signature, expiry, audience, revocation, another tenant...) is not
            # a token for this resource: RFC 6750's invalid_token.
            params = {"error": "invalid_token", "error_description": description}
            self._challenge(401, params, {"error": "invalid_token", "error_description": description})

        def _challenge(self, status: int, params: dict[str, str], body: dict[str, str]) -> None:
            if location is not None:
                params = {**params, "resource_metadata": location[0]}
            challenge = ", ".join(f'{name}="{_quoted(value)}"' for name, value in params.items())
            self._reply(status, body, {"WWW-Authenticate": f"Bearer {challenge}".strip()})

        def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operator", required=True, help="the operator's HTTPS endpoint (its issuer)")
    parser.add_argument("--cafile", help="CA bundle for the operator's endpoint")
    parser.add_argument("--audience", required=True, help="this gateway's resource URL: the tokens' audience")
    tenant = parser.add_mutually_exclusive_group(required=True)
    tenant.add_argument("--namespace", help="accept only tokens of agents in this namespace (the tenant served)")
    tenant.add_argument("--any-namespace", action="store_true", help="accept tokens of agents in any namespace")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    server = ThreadingHTTPServer(
        ("0.0.0.0", args.port), make_handler(Keys(args.operator, args.cafile), args.audience, args.namespace)
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
