"""A tiny minting service for the `webhook` source, to run next to `agentcred dev up`.

It serves the contract the operator calls (README, "The webhook source") over HTTPS with a
certificate of its own, made at start:

  POST /mint          -> {"value": "<random>", "expiresAt": "<RFC 3339>", "id": "<id>"}
  POST /mint/revoke   -> {"revoked": "<id>"}
  GET  /mint/healthz  -> ok

and prints examples/webhook.yaml as it applies to it (its loopback URL, its CA bundle, a
health check), ready for kubectl:

    python examples/minting-service/minter.py --port 8444 > minter.yaml &
    kubectl apply -f minter.yaml

A real service decides whether the subject may have a value and mints one at its vendor; this
one hands out random strings. It logs ids and subjects, never a value.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import ssl
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from agentcred.platform import pki


async def mint(request: web.Request) -> web.Response:
    asked = await request.json()
    ttl = max(1, min(int(asked.get("ttlSeconds") or 900), 3600))
    token_id = secrets.token_hex(8)
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=ttl)
    print(f"minted {token_id} for {asked.get('subject')} (pod {asked.get('pod')}), {ttl}s", file=sys.stderr)
    value = "demo-" + secrets.token_urlsafe(24)
    return web.json_response(
        {"value": value, "expiresAt": expires.isoformat(timespec="seconds").replace("+00:00", "Z"), "id": token_id}
    )


async def revoke(request: web.Request) -> web.Response:
    asked = await request.json()
    print(f"revoked {asked.get('id')} ({asked.get('reason')})", file=sys.stderr)
    return web.json_response({"revoked": asked.get("id")})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def example(url: str, ca_pem: str) -> str:
    """examples/webhook.yaml, pointed at this service."""
    template = (Path(__file__).resolve().parent.parent / "webhook.yaml").read_text()
    ca = "\n".join(f"        {line}" for line in ca_pem.strip().splitlines())
    return (
        template.replace("https://minter.agents.svc:8443/mint", url)
        .replace("      # caBundle: |          # the PEM CA of the service's certificate, if not a public one\n", "")
        .replace("      #   -----BEGIN CERTIFICATE-----\n", f"      caBundle: |\n{ca}\n")
        .replace("# healthCheck: true    # probe GET <url>/healthz: not Ready while it fails", "healthCheck: true")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8444, help="port to listen on (default 8444)")
    args = parser.parse_args()

    ca = pki.new_ca("agentcred-example-minter")
    leaf = pki.issue(ca, "minter", ip_addresses=(args.host,), dns_names=("localhost",), server=True)
    folder = Path(tempfile.mkdtemp(prefix="minter-"))
    leaf.write(folder / "tls.crt", folder / "tls.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(folder / "tls.crt"), str(folder / "tls.key"))

    app = web.Application()
    app.router.add_post("/mint", mint)
    app.router.add_post("/mint/revoke", revoke)
    app.router.add_get("/mint/healthz", healthz)
    sys.stdout.write(example(f"https://{args.host}:{args.port}/mint", ca.cert_pem.decode()))
    sys.stdout.flush()
    print(json.dumps({"listening": f"https://{args.host}:{args.port}/mint"}), file=sys.stderr)
    web.run_app(app, host=args.host, port=args.port, ssl_context=context, print=None)


if __name__ == "__main__":
    main()
