"""`agentcred trace` and `agentcred leak`: ask the operator whose a suspected value is, or have
it contained, through its HTTPS intake (POST /v1/trace, /v1/leaks).

The caller is a leak reporter: a ServiceAccount the operator lists. Its token comes from a
file (`--token-file`, e.g. `kubectl create token scanner -n secops --audience agentcred`) or
is requested for it here with the kubeconfig's rights (`--as namespace/name`). The operator's
CA comes from `--cafile`, else from the `<instance>-ca-bundle` ConfigMap it publishes. The value
is read from stdin, so it never sits in a shell history or a process listing.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from ..api.labels import CA_KEY, SERVICE_ACCOUNT_AUDIENCE, StateNames
from .errors import NOT_FOUND, REFUSED, UNREACHABLE, USAGE, CommandFailed, api_message

NOT_LEADER_RETRIES = 20  # the Service may route to a follower: ask again


class IntakeError(CommandFailed):
    pass


def reporter_token(token_file: str | None, service_account: str | None, cluster: Any = None) -> str:
    """The reporter's token: from the file, or requested for `namespace/name` from `cluster`
    (an API client for the kubeconfig and context the command was given)."""
    if token_file:
        with open(token_file) as handle:
            return handle.read().strip()
    if not service_account or "/" not in service_account:
        raise IntakeError(USAGE, "say who reports: --token-file FILE or --as NAMESPACE/SERVICEACCOUNT")
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    namespace, _, name = service_account.partition("/")
    request = {"spec": {"audiences": [SERVICE_ACCOUNT_AUDIENCE], "expirationSeconds": 600}}
    try:
        issued = client.CoreV1Api(cluster).create_namespaced_service_account_token(name, namespace, request)
    except ApiException as error:
        if error.status == 404:
            raise IntakeError(NOT_FOUND, f"ServiceAccount {service_account} not found (--as)") from None
        if error.status in (401, 403):
            raise IntakeError(
                REFUSED, f"you may not request a token for {service_account} (--as): {api_message(error)}"
            ) from None
        raise
    return str(issued.status.token)


def operator_ca(cluster: Any, namespace: str, names: StateNames) -> str:
    """The operator's CA, from the ConfigMap it publishes for verifiers, written to a file of
    this process's own (removed when it exits)."""
    import atexit
    import os
    import tempfile

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        bundle = client.CoreV1Api(cluster).read_namespaced_config_map(names.ca_bundle, namespace)
    except ApiException as error:
        if error.status == 404:
            raise IntakeError(
                NOT_FOUND,
                f"no ConfigMap {names.ca_bundle} in namespace {namespace} to take the operator's CA from: "
                "give --cafile, or --operator-namespace/--instance",
            ) from None
        raise
    pem = (bundle.data or {}).get(CA_KEY)
    if not pem:
        raise IntakeError(UNREACHABLE, f"ConfigMap {namespace}/{names.ca_bundle} holds no CA yet: is the operator up?")
    handle, path = tempfile.mkstemp(prefix="agentcred-ca-", suffix=".crt")
    with os.fdopen(handle, "w") as out:
        out.write(pem)
    atexit.register(os.unlink, path)
    return path


def ask(url: str, path: str, token: str, items: list[dict[str, Any]], cafile: str | None) -> list[dict[str, Any]]:
    context = ssl.create_default_context(cafile=cafile)
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=json.dumps(items).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    for _ in range(NOT_LEADER_RETRIES):
        try:
            with urllib.request.urlopen(request, context=context, timeout=60) as response:
                answers: list[dict[str, Any]] = json.loads(response.read())
                return answers
        except urllib.error.HTTPError as error:
            body = error.read().decode(errors="replace")
            if error.code == 503:
                time.sleep(float(error.headers.get("Retry-After") or 1))
                continue
            try:
                detail = json.loads(body).get("message") or body
            except ValueError:
                detail = body
            raise IntakeError(REFUSED, f"the operator refused ({error.code}): {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise IntakeError(UNREACHABLE, f"could not reach the operator at {url}: {error}{_hint(url)}") from None
    raise IntakeError(UNREACHABLE, "no replica of the operator leads right now; try again")


def _hint(url: str) -> str:
    """Outside the cluster, its Service names do not resolve: say how to get there."""
    if ".svc" not in url:
        return ""
    return (
        " (from outside the cluster: kubectl -n <operator namespace> port-forward svc/<release> 8443, "
        "then --url https://localhost:8443)"
    )


# The holders' table: each field of an answer, and its heading (as the README shows it).
TRACE_COLUMNS = {
    "state": "STATE",
    "kind": "KIND",
    "namespace": "NAMESPACE",
    "credential": "CREDENTIAL",
    "category": "CATEGORY",
    "owner": "OWNER",
    "pod": "POD",
    "podUID": "POD-UID",
    "job": "JOB",
    "serviceAccount": "SERVICEACCOUNT",
    "issuedAt": "ISSUED",
    "expiresAt": "EXPIRES",
}


def render(answers: list[dict[str, Any]], contained: bool) -> str:
    lines = []
    for answer in answers:
        found = answer.get("verdict") == "ours"
        head = {
            "ours": "issued by agentcred",
            "not-ours": "NOT issued by agentcred",
            "unknown": "unknown to agentcred",
        }.get(str(answer.get("verdict")), str(answer.get("verdict")))
        lines.append(
            f"{head} (fingerprint {answer.get('fingerprint')})" + (f": {answer['why']}" if answer.get("why") else "")
        )
        if contained:
            lines.append(
                f"  outcome: {answer.get('outcome')}; revoked {answer.get('revoked', 0)} live copy(ies); "
                f"next: {', '.join(answer.get('next') or []) or 'none'}"
            )
        if found and answer.get("holders"):
            columns = tuple(TRACE_COLUMNS)
            rows = [list(TRACE_COLUMNS.values())] + [
                [str(holder.get(c) or "-") for c in columns] for holder in answer["holders"]
            ]
            widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
            lines += [
                "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
            ]
    return "\n".join(lines) + "\n"
