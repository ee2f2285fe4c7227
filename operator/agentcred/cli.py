"""The `agentcred` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__
from .api.webhook_configuration import WEBHOOK_MODES
from .client.commands import cmd_inventory, cmd_leak, cmd_renew, cmd_revoke, cmd_rotate_key, cmd_trace, cmd_verify
from .devcluster.commands import add_dev_commands


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    import kopf

    from .app.config import OperatorConfig, parse_delay, parse_namespaces
    from .app.handlers import registry_for
    from .app.operator import Operator

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # read by Kopf's login and the operator's own client
    overrides = {
        "namespace": args.operator_namespace,
        "issuer": args.issuer,
        "webhook_address": args.webhook_address,
        "webhook_port": args.webhook_port,
        "webhook_url": args.webhook_url,
        "api_address": args.api_address,
        "api_port": args.api_port,
        "health_address": args.health_address,
        "health_port": args.health_port,
        "audit_log": args.audit_log,
        "leak_reporters": args.leak_reporters,
        "cluster_leak_reporters": args.cluster_leak_reporters,
    }
    try:
        config = OperatorConfig.from_env()
        if args.watch_namespace:
            config = dataclasses.replace(config, watch_namespaces=parse_namespaces(args.watch_namespace))
        delay = parse_delay(args.volume_refresh_delay or "")
        if delay is not None:
            config = dataclasses.replace(config, volume_refresh_delay=delay)
    except ValueError as error:  # AGENTCRED_WATCH_NAMESPACES, --watch-namespace, the refresh delay
        print(f"agentcred run: {error}", file=sys.stderr)
        return 2
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.webhook_config:
        config = dataclasses.replace(config, webhook_config=args.webhook_config)
    if args.introspector:
        config = dataclasses.replace(config, introspectors=tuple(args.introspector))
    if args.gateway:
        config = dataclasses.replace(config, gateways=tuple(args.gateway))
    if args.gateway_grpc_port is not None:
        config = dataclasses.replace(config, gateway_grpc_port=args.gateway_grpc_port)
    if args.standalone:
        config = dataclasses.replace(config, leader_election=False)
    if args.dpop_nonce:
        config = dataclasses.replace(config, dpop_nonce=True)
    verbose = args.verbose or args.log_level == "debug"
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if args.log_json else kopf.LogFormat.PLAIN)
    if args.log_level in ("warning", "error"):
        logging.getLogger().setLevel(args.log_level.upper())
    if not verbose:
        # A line per handler per event is noise at scale; warnings and errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Kopf's own peering is off: replicas coordinate through our Lease (see runtime.leader).
    # Namespace-scoped: Kopf watches pods, Secrets and AgentCredentials in each listed namespace
    # only (cluster-scoped objects -- policies, namespaces, the CRD -- as before).
    kopf.run(
        registry=registry_for(Operator(config)),
        clusterwide=not config.scoped,
        namespaces=list(config.watch_namespaces),
        standalone=True,
    )
    return 0


def cmd_csi_node(args: argparse.Namespace) -> int:
    import asyncio

    from .runtime.csi.node_plugin import serve

    asyncio.run(serve(args))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .devcluster.demo import run_demo

    return run_demo(keep=args.keep, mcp=args.mcp, stand_in=args.stand_in)


def cmd_crd(args: argparse.Namespace) -> int:
    from .api.crd import render_crd_yaml

    sys.stdout.write(render_crd_yaml(args.resource))
    return 0


REACHING_THE_OPERATOR = """From outside the cluster, forward the operator's HTTPS port first:
kubectl -n agentcred port-forward svc/agentcred 8443, then --url https://localhost:8443 (its
certificate names localhost); the CA comes from the cluster unless --cafile is given."""

EXIT_CODES = """exit codes: 0 done; 1 the answer is no (inventory --fail-on findings, a token refused,
a value not ours); 2 a wrong command line; 3 done in part (revoke --evict); 4 the cluster or
the operator could not be reached (no kubeconfig, no answer, TLS, no answer in time); 5 refused
(401, 403, or the request itself); 6 not found (credential, pod, ServiceAccount, namespace)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentcred", description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"agentcred {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    # Every command that talks to a cluster: which one, as kubectl says it.
    kubeconfig = argparse.ArgumentParser(add_help=False)
    kubeconfig.add_argument("--kubeconfig", help="the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    cluster = argparse.ArgumentParser(add_help=False, parents=[kubeconfig])
    cluster.add_argument("--context", help="the kubeconfig context to use (default: its current context)")

    run = commands.add_parser(
        "run", parents=[kubeconfig], help="run the operator (in a pod: its ServiceAccount; else the kubeconfig)"
    )
    run.add_argument("--standalone", action="store_true", help="no leader election: this is the only replica")
    run.add_argument(
        "--operator-namespace",
        "--namespace",
        dest="operator_namespace",
        help="the operator's namespace: its keys, certificate and revocation list (default agentcred)",
    )
    run.add_argument("--issuer", help="`iss` claim of minted tokens")
    run.add_argument("--webhook-address", help="address the admission webhook listens on")
    run.add_argument("--webhook-port", type=int, help="port the admission webhook listens on")
    run.add_argument("--webhook-url", help="URL the API server reaches the webhook at (local development)")
    run.add_argument("--api-address", help="address of the HTTPS endpoints (token service, JWKS, revocations)")
    run.add_argument("--api-port", type=int, help="port of the HTTPS endpoints (default 8443)")
    run.add_argument("--health-address", help="address of /healthz, /readyz and /metrics")
    run.add_argument("--health-port", type=int, help="port of /healthz, /readyz and /metrics (default 8080)")
    run.add_argument(
        "--webhook-config",
        choices=list(WEBHOOK_MODES),
        help="manage the MutatingWebhookConfiguration (default), only inject its CA bundle "
        "(the Helm chart owns it), or leave it alone",
    )
    run.add_argument(
        "--dpop-nonce",
        action="store_true",
        help="DPoP proofs at the token endpoint must carry a server nonce (RFC 9449 §8)",
    )
    run.add_argument(
        "--introspector",
        action="append",
        metavar="NAMESPACE/SERVICEACCOUNT",
        help="a ServiceAccount allowed to introspect tokens (RFC 7662); repeat for several",
    )
    run.add_argument(
        "--gateway",
        action="append",
        metavar="NAMESPACE/SERVICEACCOUNT",
        help="a gateway's ServiceAccount allowed to ask agentcred to decide calls (ext_authz, forward-auth); "
        "repeat for several (AGENTCRED_GATEWAYS, comma-separated)",
    )
    run.add_argument(
        "--gateway-grpc-port",
        type=int,
        help="port of Envoy's ext_authz gRPC service, served once a --gateway may ask "
        "(default 9191; 0: off; AGENTCRED_GATEWAY_GRPC_PORT)",
    )
    run.add_argument(
        "--audit-log",
        help="audit destination: - for stdout (default; stdout then carries audit JSON lines only) or a file path",
    )
    run.add_argument(
        "--leak-reporters",
        help="ServiceAccounts (namespace/name, comma-separated) that may report and trace leaked values "
        "in their own namespace (AGENTCRED_LEAK_REPORTERS)",
    )
    run.add_argument(
        "--cluster-leak-reporters",
        help="ServiceAccounts (namespace/name, comma-separated) that may report and trace leaked values "
        "in every namespace (AGENTCRED_CLUSTER_LEAK_REPORTERS)",
    )
    run.add_argument(
        "--watch-namespace",
        action="append",
        metavar="NAMESPACE",
        help="namespace-scoped mode: see pods, Secrets and AgentCredentials, and admit pods, only in this "
        "namespace; repeat for several (AGENTCRED_WATCH_NAMESPACES, comma-separated; default: every namespace)",
    )
    run.add_argument(
        "--volume-refresh-delay",
        metavar="DURATION",
        help="how late the cluster's kubelets may put a renewed value into a container: 1.5 x their "
        "syncFrequency plus a margin (default 95s, for the kubelet's default 1m; AGENTCRED_VOLUME_REFRESH_DELAY). "
        "Renewals start at least this long before expiry; a ttl under twice this is refused. 0: no kubelet",
    )
    run.add_argument("--verbose", action="store_true", help="log every handler call (logs go to stderr)")
    run.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="the operator's own logs (stderr): debug is --verbose; warning and error leave out the rest "
        "(default info)",
    )
    run.add_argument("--log-json", action="store_true", help="log as JSON lines (on stderr, as plain logs are)")
    run.set_defaults(func=cmd_run)

    revoke = commands.add_parser("revoke", parents=[cluster], help="revoke a credential's live values now (emergency)")
    revoke.add_argument("credential", help="AgentCredential name")
    revoke.add_argument("-n", "--namespace", help="its namespace (default: the kubeconfig context's)")
    revoke.add_argument("--pod", help="revoke only in this pod")
    revoke.add_argument(
        "--reason", help="why, in words: goes into the audit line, the pod's Event and the credential's status"
    )
    revoke.add_argument(
        "--evict",
        action="store_true",
        help="then evict the pods that held it, with your own rights (create pods/eviction): "
        "for when the agent itself is the threat; exit 3 if any could not be evicted",
    )
    revoke.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the operator's answer (default 30)"
    )
    revoke.set_defaults(func=cmd_revoke)

    renew = commands.add_parser(
        "renew", parents=[cluster], help="replace a credential's live values now (e.g. after rotating upstream)"
    )
    renew.add_argument("credential", help="AgentCredential name")
    renew.add_argument("-n", "--namespace", help="its namespace (default: the kubeconfig context's)")
    renew.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the operator's answer (default 30)"
    )
    renew.set_defaults(func=cmd_renew)

    demo = commands.add_parser("demo", help="local control plane + a real node + operator + an agent Job, end to end")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the control plane, the node and the operator running afterwards (print the "
        "kubeconfig; `agentcred dev down --name demo` stops them)",
    )
    demo.add_argument(
        "--mcp",
        action="store_true",
        help="instead, examples/mcp: its MCP server and agent (official SDK) with an agent pod's identity, "
        "printing what the agent prints (README of examples/mcp)",
    )
    demo.add_argument(
        "--stand-in",
        action="store_true",
        help="no real node: the scheduler/kubelet stand-in binds the agent's pod and completes it (the demo "
        "does this by itself on a host that cannot run a node)",
    )
    demo.set_defaults(func=cmd_demo)

    verify = commands.add_parser("verify", help="verify an agentcred token and say exactly why it is refused")
    verify.add_argument("token", nargs="?", help="the token, or - (default) to read it from stdin")
    verify.add_argument("--audience", required=True, help="the audience you expect (your service)")
    verify.add_argument("--url", help="the operator's HTTPS endpoint (JWKS and revocations)")
    verify.add_argument("--cafile", help="CA bundle for --url")
    verify.add_argument("--jwks-file", help="verify offline against this JWKS, with --issuer (no revocation check)")
    verify.add_argument("--issuer", help="the issuer to expect (default: what the operator's discovery document says)")
    tenant = verify.add_mutually_exclusive_group(required=True)
    tenant.add_argument(
        "-n", "--namespace", help="accept only tokens of agents in this namespace (the tenant you serve)"
    )
    tenant.add_argument("--any-namespace", action="store_true", help="accept tokens of any namespace")
    verify.add_argument("--tool", help="the tool the token must cover")
    verify.add_argument("--action", help="the action the token must cover")
    verify.add_argument("--resource", help="the resource the token must cover")
    verify.add_argument("--dpop-proof", help="the DPoP header the token came with (for a DPoP-bound token)")
    verify.add_argument("--method", help="the HTTP method of the request the proof is for")
    verify.add_argument("--request-url", help="the URL of the request the proof is for")
    verify.set_defaults(func=cmd_verify)

    rotate = commands.add_parser(
        "rotate-key", parents=[cluster], help="make new signing keys current; old ones stay published"
    )
    rotate.add_argument(
        "--operator-namespace", default="agentcred", help="the operator's namespace (default agentcred)"
    )
    rotate.add_argument(
        "--instance",
        default="agentcred",
        help="the operator's instance name (the Helm release's full name; default agentcred)",
    )
    rotate.add_argument(
        "--algorithm",
        choices=["EdDSA", "ES256", "RS256", "fingerprint", "all"],
        default="all",
        help="which key: a signing algorithm's, the fingerprint key, or all (default)",
    )
    rotate.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the operator (default 30)")
    rotate.set_defaults(func=cmd_rotate_key)

    for name, func, text in (
        ("trace", cmd_trace, "whose is a suspected value: credential, owner, pod, Job, ServiceAccount, state"),
        ("leak", cmd_leak, "report a leaked value: revoke every live copy, reissue or quarantine, flag static values"),
    ):
        leak = commands.add_parser(name, parents=[cluster], help=text, epilog=REACHING_THE_OPERATOR)
        what = leak.add_mutually_exclusive_group()
        what.add_argument("--fingerprint", help="a fingerprint from an audit line or Event (full or short form)")
        what.add_argument("--token", help="a token id (jti, or a minting service's id) from an audit line")
        leak.add_argument(
            "--url",
            required=True,
            help="the operator's HTTPS endpoint: https://agentcred.agentcred.svc:8443 in the cluster, "
            "https://localhost:8443 through a port-forward",
        )
        leak.add_argument(
            "--cafile", help="CA bundle for --url (default: the operator's, from its <instance>-ca-bundle ConfigMap)"
        )
        leak.add_argument(
            "--operator-namespace", default="agentcred", help="where the operator runs (default agentcred)"
        )
        leak.add_argument(
            "--instance",
            default="agentcred",
            help="the operator's instance (the release's full name; default agentcred)",
        )
        who = leak.add_mutually_exclusive_group()
        who.add_argument("--token-file", help="a leak reporter's ServiceAccount token (audience agentcred)")
        who.add_argument(
            "--as",
            dest="reporter",
            help="request a token for this reporter (NAMESPACE/SERVICEACCOUNT) with the kubeconfig's rights",
        )
        leak.add_argument("-o", "--output", choices=["table", "json"], default="table", help="table (default) or json")
        if name == "leak":
            leak.add_argument("--found-type", help="what kind of string it is, for the audit line")
            leak.add_argument("--found-url", help="where it was found, for the audit line")
            leak.add_argument("--found-source", help="what found it (a scanner, a transcript), for the audit line")
        leak.set_defaults(func=func)

    inventory = commands.add_parser(
        "inventory", parents=[cluster], help="every credential per category, exceptions, findings"
    )
    where = inventory.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", help="only this namespace")
    where.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (the default)")
    inventory.add_argument(
        "-o",
        "--output",
        choices=["table", "json", "yaml", "csv"],
        default="table",
        help="table (default), json or yaml (camelCase keys, as Kubernetes), or csv",
    )
    inventory.add_argument(
        "--fail-on", help="exit 1 if any finding of these kinds exists, e.g. expired-exception,overdue-review,orphan"
    )
    inventory.set_defaults(func=cmd_inventory)

    crd = commands.add_parser("crd", help="print a CRD generated from the models")
    crd.add_argument(
        "resource",
        nargs="?",
        default="agentcredentials",
        choices=["agentcredentials", "agentcredentialpolicies"],
        help="which CRD (default: agentcredentials)",
    )
    crd.set_defaults(func=cmd_crd)

    csi = commands.add_parser(
        "csi-node", help="agentcred's CSI node plugin (one per node): publishes `delivery: csi` values into pods' tmpfs"
    )
    csi.add_argument("--node-name", required=True, help="the Node this plugin serves (its kubelet's node name)")
    csi.add_argument("--driver", default="csi.agentcred.dev", help="the CSI driver name (default %(default)s)")
    csi.add_argument(
        "--kubelet-dir", default="/var/lib/kubelet", help="the kubelet's root directory (default %(default)s)"
    )
    csi.add_argument(
        "--state-dir", default="", help="where volumes are kept (default <kubelet-dir>/plugins/<driver>/state)"
    )
    csi.add_argument(
        "--operator-dir",
        default="/var/run/agentcred-csi",
        help="a folder holding the operator's ca.crt, the plugin's token (and url): read on every call",
    )
    csi.add_argument(
        "--operator-url", default="", help="the operator's HTTPS endpoint (e.g. https://agentcred.agentcred.svc:8443)"
    )
    csi.set_defaults(func=cmd_csi_node)

    add_dev_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .client.errors import explain

    args = build_parser().parse_args(argv)
    if args.func is cmd_run:  # Kopf configures logging for the operator itself, and reports its own failures
        return int(args.func(args) or 0)
    logging.basicConfig(
        level=os.environ.get("AGENTCRED_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # its retries: the failure says it once
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        failed = explain(error)
        if failed is None:
            raise  # a bug: its traceback is what its report needs
        print(f"agentcred {args.command}: {failed.message}", file=sys.stderr)
        return failed.code


if __name__ == "__main__":
    sys.exit(main())
