"""The commands people run against a cluster: revoke, renew, verify, rotate-key, inventory, trace, leak."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def api_client(args: argparse.Namespace) -> Any:
    """A client for the cluster the command's --kubeconfig and --context name (default: as kubectl)."""
    import os

    from kubernetes import config

    from .errors import USAGE, CommandFailed

    if args.kubeconfig and not os.path.isfile(args.kubeconfig):
        raise CommandFailed(USAGE, f"--kubeconfig {args.kubeconfig}: no such file")
    return config.new_client_from_config(config_file=args.kubeconfig, context=args.context)


def object_namespace(args: argparse.Namespace) -> str:
    """-n, else the namespace of the kubeconfig's context, else default (as kubectl)."""
    from kubernetes import config

    if args.namespace:
        return str(args.namespace)
    contexts, current = config.list_kube_config_contexts(config_file=args.kubeconfig)
    chosen = next((c for c in contexts if c["name"] == args.context), current) if args.context else current
    return str(chosen["context"].get("namespace") or "default")


def _ask_operator(
    args: argparse.Namespace, ask: Callable[..., dict[str, Any]], **fields: Any
) -> tuple[dict[str, Any], str]:
    """Send a request about one AgentCredential and wait for the operator's answer."""
    from kubernetes.client.exceptions import ApiException

    from .errors import NOT_FOUND, UNREACHABLE, CommandFailed
    from .requests import RequestTimeout

    namespace = object_namespace(args)
    try:
        return ask(api_client(args), namespace, args.credential, timeout=args.timeout, **fields), namespace
    except ApiException as error:
        if error.status != 404:
            raise
        raise CommandFailed(
            NOT_FOUND, f"AgentCredential {args.credential} not found in namespace {namespace}"
        ) from None
    except RequestTimeout as error:
        raise CommandFailed(UNREACHABLE, str(error)) from None


def _pod_exists(args: argparse.Namespace, namespace: str) -> None:
    """A pod named on the command line exists, or the command stops before asking anything."""
    from kubernetes import client

    from .errors import NOT_FOUND, CommandFailed

    # By list (the right --evict needs anyway), not get.
    core = client.CoreV1Api(api_client(args))
    if not core.list_namespaced_pod(namespace, field_selector=f"metadata.name={args.pod}").items:
        raise CommandFailed(NOT_FOUND, f"pod {args.pod} not found in namespace {namespace}: nothing revoked")


def cmd_revoke(args: argparse.Namespace) -> int:
    from .requests import request_revoke

    if args.pod:
        _pod_exists(args, object_namespace(args))
    outcome, namespace = _ask_operator(args, request_revoke, pod=args.pod, reason=args.reason)
    where = f"pod {args.pod}" if args.pod else "every pod"
    print(f"revoked {outcome['revoked']} live value(s) of {namespace}/{args.credential} in {where}")
    if args.pod and not outcome["revoked"]:
        print(f"pod {args.pod} held no live value of {args.credential}", file=sys.stderr)
    return _evict(args, namespace) if args.evict else 0


def _evict(args: argparse.Namespace, namespace: str) -> int:
    """Evict the pods that held the credential, as the caller (their rights, their PDBs)."""
    from .eviction import evict, holders

    cluster = api_client(args)
    outcomes = evict(cluster, namespace, holders(cluster, namespace, args.credential, args.pod))
    for outcome in outcomes:
        if outcome.evicted:
            print(f"evicted pod {outcome.pod}")
        else:
            print(f"pod {outcome.pod} not evicted: {outcome.detail}", file=sys.stderr)
    if not outcomes:
        print("no running pod holds it: nothing to evict", file=sys.stderr)
    return 0 if all(outcome.evicted for outcome in outcomes) else 3


def cmd_renew(args: argparse.Namespace) -> int:
    from .requests import request_renew

    outcome, namespace = _ask_operator(args, request_renew)
    print(f"renewed {outcome['renewed']} live value(s) of {namespace}/{args.credential}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import datetime as dt
    import json
    import ssl
    import urllib.error

    from ..api.times import format_time
    from ..rules.scope import Intent
    from .errors import UNREACHABLE, USAGE
    from .verify import Presented, TokenRejected, Verifier, describe_grant

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
        return UNREACHABLE if args.url and not isinstance(error, FileNotFoundError) else USAGE
    intent_parts = (args.tool, args.action, args.resource)
    if any(intent_parts) and not all(intent_parts):
        print("an intent needs all of --tool, --action and --resource", file=sys.stderr)
        return 2
    intent = Intent(*intent_parts) if all(intent_parts) else None
    namespace = None if args.any_namespace else args.namespace
    presented = None
    if args.dpop_proof:
        if not (args.method and args.request_url):
            print("a DPoP proof is checked against its request: give --method and --request-url", file=sys.stderr)
            return USAGE
        presented = Presented(args.method, args.request_url, scheme="DPoP", proof=args.dpop_proof)
    try:
        claims = verifier.verify(token, audience=args.audience, intent=intent, namespace=namespace, presented=presented)
    except TokenRejected as rejected:
        print(f"refused ({rejected.reason}): {rejected.message}")
        return 1
    facts = claims.get("agentcred") or {}
    expires = format_time(dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc))
    print(
        f"valid: sub={claims['sub']} namespace={facts.get('namespace')} credential={facts.get('credential')} "
        f"pod={facts.get('pod')} jti={claims['jti']} expires={expires}"
    )
    if isinstance(claims.get("cnf"), dict):
        print(f"bound to DPoP key {claims['cnf'].get('jkt')} (the proof matched)")
    for line in describe_grant(claims):
        print(f"  {line}")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from ..api.labels import StateNames
    from .errors import UNREACHABLE, CommandFailed
    from .keyrotation import RotationTimeout, request_rotation

    try:
        ring = request_rotation(
            api_client(args), args.operator_namespace, args.algorithm, args.timeout, StateNames(args.instance)
        )
    except RotationTimeout as error:
        raise CommandFailed(UNREACHABLE, str(error)) from None
    for key in ring:
        state = f"retired {key['retiredAt']}" if key["retiredAt"] else "current"
        print(f"{key['alg']}\t{key['kid']}\t{state}")
    return 0


def cmd_inventory(args: argparse.Namespace) -> int:
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
    inventory = read_cluster(api_client(args), namespace=None if args.all_namespaces else args.namespace)
    sys.stdout.write(RENDERERS[args.output](inventory))
    needing_action = inventory.needs_action(fail_on)
    if needing_action:
        print(
            f"{len(needing_action)} finding(s) need action: {', '.join(sorted({f.kind for f in needing_action}))}",
            file=sys.stderr,
        )
        return 1
    return 0


def _leak_items(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """What to ask about: a fingerprint, a token id, or the value from stdin (never argv)."""
    if getattr(args, "fingerprint", None):
        return [{"fingerprint": args.fingerprint}]
    if getattr(args, "token", None):
        return [{"tokenId": args.token}]
    value = sys.stdin.read()
    if value.endswith("\n") and "\n" not in value[:-1]:
        value = value[:-1]  # `echo` and editors add one; a value never ends with it (tried both anyway)
    if not value:
        print("paste the suspected value on stdin, or give --fingerprint or --token", file=sys.stderr)
        return None
    item: dict[str, Any] = {"token": value}
    for key in ("type", "url", "source"):
        if getattr(args, f"found_{key}", None):
            item[key] = getattr(args, f"found_{key}")
    return [item]


def _intake(args: argparse.Namespace, path: str) -> tuple[int, list[dict[str, Any]]]:
    from ..api.labels import StateNames
    from .leaks import ask, operator_ca, reporter_token

    items = _leak_items(args)
    if items is None:
        return 2, []
    # With --as or without --cafile, the kubeconfig's cluster is asked: for a token, for the CA.
    cluster = api_client(args) if args.reporter or not args.cafile else None
    token = reporter_token(args.token_file, args.reporter, cluster)
    cafile = args.cafile or operator_ca(cluster, args.operator_namespace, StateNames(args.instance))
    return 0, ask(args.url, path, token, items, cafile)


def cmd_trace(args: argparse.Namespace) -> int:
    import json

    from .leaks import render

    status, answers = _intake(args, "/v1/trace")
    if status:
        return status
    sys.stdout.write(json.dumps(answers, indent=2) + "\n" if args.output == "json" else render(answers, False))
    return 0 if all(a.get("verdict") == "ours" for a in answers) else 1


def cmd_leak(args: argparse.Namespace) -> int:
    import json

    from .leaks import render

    status, answers = _intake(args, "/v1/leaks")
    if status:
        return status
    sys.stdout.write(json.dumps(answers, indent=2) + "\n" if args.output == "json" else render(answers, True))
    return 0 if all(a.get("verdict") == "ours" for a in answers) else 1
