"""The commands people run against a cluster: revoke, renew, verify, rotate-key, inventory."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def _ask_operator(args: argparse.Namespace, ask: Callable[..., dict], **fields: Any) -> tuple[int, dict, str]:
    """Send a request about one AgentCredential and wait for the operator's answer."""
    from kubernetes import config
    from kubernetes.client.exceptions import ApiException

    from .requests import RequestTimeout

    namespace = args.namespace or config.list_kube_config_contexts()[1]["context"].get("namespace", "default")
    try:
        return (
            0,
            ask(config.new_client_from_config(), namespace, args.credential, timeout=args.timeout, **fields),
            namespace,
        )
    except ApiException as error:
        if error.status != 404:
            raise
        print(f"AgentCredential {args.credential} not found in namespace {namespace}", file=sys.stderr)
        return 1, {}, namespace
    except RequestTimeout as error:
        print(str(error), file=sys.stderr)
        return 2, {}, namespace


def cmd_revoke(args: argparse.Namespace) -> int:
    from .requests import request_revoke

    status, outcome, namespace = _ask_operator(args, request_revoke, pod=args.pod, reason=args.reason)
    if status == 0:
        where = f"pod {args.pod}" if args.pod else "every pod"
        print(f"revoked {outcome['revoked']} live value(s) of {namespace}/{args.credential} in {where}")
    return status


def cmd_renew(args: argparse.Namespace) -> int:
    from .requests import request_renew

    status, outcome, namespace = _ask_operator(args, request_renew)
    if status == 0:
        print(f"renewed {outcome['renewed']} live value(s) of {namespace}/{args.credential}")
    return status


def cmd_verify(args: argparse.Namespace) -> int:
    import datetime as dt
    import json
    import ssl
    import urllib.error

    from ..api.times import format_time
    from ..rules.scope import Intent
    from .verify import TokenRejected, Verifier, describe_grant

    token = sys.stdin.read() if args.token in (None, "-") else args.token
    if args.jwks_file and not args.issuer:
        # Offline there is no discovery document to learn the issuer from, and a token whose
        # issuer is not checked could come from anyone holding a key in that file.
        print("with --jwks-file, say which issuer to expect: --issuer https://<operator>:8443", file=sys.stderr)
        return 2
    try:
        if args.jwks_file:
            with open(args.jwks_file) as handle:
                verifier = Verifier(jwks=json.load(handle), issuer=args.issuer or "")
        elif args.url:
            verifier = Verifier.from_url(args.url, issuer=args.issuer, cafile=args.cafile)
        else:
            print("say where the keys are: --url https://<operator>:8443 or --jwks-file", file=sys.stderr)
            return 2
    except (OSError, ValueError, ssl.SSLError, urllib.error.URLError) as error:
        where = args.jwks_file or args.url
        hint = (
            " (is --cafile the operator's CA?)"
            if isinstance(error, ssl.SSLError) or "CERTIFICATE" in str(error)
            else ""
        )
        print(f"could not read the keys from {where}: {error}{hint}", file=sys.stderr)
        return 2
    intent_parts = (args.tool, args.action, args.resource)
    if any(intent_parts) and not all(intent_parts):
        print("an intent needs all of --tool, --action and --resource", file=sys.stderr)
        return 2
    intent = Intent(*intent_parts) if all(intent_parts) else None
    namespace = None if args.any_namespace else args.namespace
    try:
        claims = verifier.verify(token, audience=args.audience, intent=intent, namespace=namespace)
    except TokenRejected as rejected:
        print(f"refused ({rejected.reason}): {rejected.message}")
        return 1
    facts = claims.get("agentcred") or {}
    expires = format_time(dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc))
    print(
        f"valid: sub={claims['sub']} namespace={facts.get('namespace')} credential={facts.get('credential')} "
        f"pod={facts.get('pod')} jti={claims['jti']} expires={expires}"
    )
    for line in describe_grant(claims):
        print(f"  {line}")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from kubernetes import config

    from ..api.labels import StateNames
    from .keyrotation import RotationTimeout, request_rotation

    try:
        ring = request_rotation(
            config.new_client_from_config(), args.namespace, args.algorithm, args.timeout, StateNames(args.instance)
        )
    except RotationTimeout as error:
        print(str(error), file=sys.stderr)
        return 2
    for key in ring:
        state = f"retired {key['retiredAt']}" if key["retiredAt"] else "current"
        print(f"{key['alg']}\t{key['kid']}\t{state}")
    return 0


def cmd_inventory(args: argparse.Namespace) -> int:
    from kubernetes import config

    from .inventory import FINDING_KINDS, RENDERERS, read_cluster

    fail_on = {kind.strip() for kind in (args.fail_on or "").split(",") if kind.strip()}
    unknown = fail_on - set(FINDING_KINDS)
    if unknown:
        print(
            f"unknown finding kind(s) for --fail-on: {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(FINDING_KINDS)}",
            file=sys.stderr,
        )
        return 2
    inventory = read_cluster(config.new_client_from_config())
    sys.stdout.write(RENDERERS[args.output](inventory))
    needing_action = inventory.needs_action(fail_on)
    if needing_action:
        print(
            f"{len(needing_action)} finding(s) need action: {', '.join(sorted({f.kind for f in needing_action}))}",
            file=sys.stderr,
        )
        return 1
    return 0
