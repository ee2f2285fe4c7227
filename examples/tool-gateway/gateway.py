"""A minimal tool gateway that trusts nothing but the agentcred JWKS.

Every request must carry `Authorization: Bearer <agentcred token>` for this gateway's
audience and name the tool, action and resource it wants (here: headers). The token's
signature, issuer, audience, expiry, revocation and scope are checked with
`agentcred.verify`; the keys and the revocation list are refreshed every 60 seconds.

    python gateway.py --operator https://agentcred.agentcred.svc:8443 --cafile ca.crt \
        --audience https://llm-gateway.agents.svc --namespace agents --port 8080
"""

from __future__ import annotations

import argparse
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agentcred.client.verify import TokenRejected, Verifier
from agentcred.rules.scope import Intent

REFRESH_SECONDS = 60


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


def make_handler(keys: Keys, audience: str, namespace: str | None) -> type[BaseHTTPRequestHandler]:
    """Requests for `audience`; with `namespace`, only tokens issued to agents of that namespace
    (the tenant this gateway serves), whatever audience another tenant's credential claims."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            intent = Intent(
                self.headers.get("X-Tool", ""), self.headers.get("X-Action", ""), self.headers.get("X-Resource", "")
            )
            try:
                if scheme.lower() != "bearer":
                    raise TokenRejected("missing-token", "send an agentcred token as a Bearer token")
                claims = keys.verifier.verify(token, audience=audience, intent=intent, namespace=namespace)
            except TokenRejected as rejected:
                self._reply(
                    401 if rejected.reason in ("missing-token", "malformed") else 403,
                    f"refused ({rejected.reason}): {rejected.message}\n",
                )
                return
            who = claims["agentcred"]
            # ... call the real tool here, on behalf of who["pod"] in who["namespace"] ...
            self._reply(200, f"ok: {intent.tool} {intent.action} {intent.resource} for pod {who['pod']}\n")

        def _reply(self, status: int, text: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(text.encode())

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operator", required=True, help="the operator's HTTPS endpoint")
    parser.add_argument("--cafile", help="CA bundle for the operator's endpoint")
    parser.add_argument("--audience", required=True)
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
