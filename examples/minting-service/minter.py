"""A tiny minting service for the `webhook` source, to run next to `agentcred dev up`.

It serves the contract the operator calls (README, "The webhook source") over HTTPS with a
certificate of its own, made at start:

  POST /mint          -> {"value": "<random>", "expiresAt": "<RFC 3339>", "id": "<id>"}
  POST /mint/revoke   -> {"revoked": "<id>"}
  GET  /mint/healthz  -> ok

and writes examples/webhook.yaml as it applies to it (its loopback URL, its CA bundle, a
health check) once it listens, ready for kubectl -- with the repository's .venv (it needs
agentcred and aiohttp):

    .venv/bin/python examples/minting-service/minter.py --port 8444 --write minter.yaml &
    while [ ! -s minter.yaml ]; do sleep 0.2; done    # written whole, once it listens
    kubectl apply -f minter.yaml

(without --write it prints the example on stdout).

A real service decides whether the subject may have a value and mints one at its vendor; this
one hands out random strings. It logs ids and subjects, never a value.
"""

from __future__ import annotations

import argparse
import asyncio
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
    parser.add_argument(
        "--write", metavar="FILE", help="write the example here, whole, once listening (default: print it)"
    )
    args = parser.parse_args()

    ca = pki.new_ca("agentcred-example-minter")
    leaf = pki.issue(ca, "minter", ip_addresses=(args.host,), dns_names=("localhost",), server=True)
    folder = Path(tempfile.mkdtemp(prefix="minter-"))
    leaf.write(folder / "tls.crt", folder / "tls.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(folder / "tls.crt"), str(folder / "tls.key"))

    url = f"https://{args.host}:{args.port}/mint"
    manifest = example(url, ca.cert_pem.decode())

    def announce() -> None:
        """The example, then a line on stderr. A file is written under another name and
        renamed, so whoever waits for it never reads half of it."""
        if args.write:
            partial = Path(f"{args.write}.partial")
            partial.write_text(manifest)
            partial.replace(args.write)
        else:
            sys.stdout.write(manifest)
            sys.stdout.flush()
        print(json.dumps({"listening": url}), file=sys.stderr)

    app = web.Application()
    app.router.add_post("/mint", mint)
    app.router.add_post("/mint/revoke", revoke)
    app.router.add_get("/mint/healthz", healthz)

    async def serve() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port, ssl_context=context).start()
        announce()  # only now: the operator's first health check must find it listening
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
