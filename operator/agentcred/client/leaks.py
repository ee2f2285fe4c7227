"""`agentcred trace` and `agentcred leak`: ask the operator whose a suspected value is, or have
it contained, through its HTTPS intake (POST /v1/trace, /v1/leaks).

The caller is a leak reporter: a ServiceAccount the operator lists. Its token comes from a
file (`--token-file`, e.g. `kubectl create token scanner -n secops --audience agentcred`) or
is requested for it here with the kubeconfig's rights (`--as namespace/name`). The value is
read from stdin, so it never sits in a shell history or a process listing.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from ..api.labels import SERVICE_ACCOUNT_AUDIENCE

NOT_LEADER_RETRIES = 20  # the Service may route to a follower: ask again


class IntakeError(Exception):
    pass


def reporter_token(token_file: str | None, service_account: str | None) -> str:
    if token_file:
        with open(token_file) as handle:
            return handle.read().strip()
    if not service_account or "/" not in service_account:
        raise IntakeError("say who reports: --token-file FILE or --as NAMESPACE/SERVICEACCOUNT")
    from kubernetes import client, config

    namespace, _, name = service_account.partition("/")
    core = client.CoreV1Api(config.new_client_from_config())
    request = {"spec": {"audiences": [SERVICE_ACCOUNT_AUDIENCE], "expirationSeconds": 600}}
    return str(core.create_namespaced_service_account_token(name, namespace, request).status.token)


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
            raise IntakeError(f"the operator refused ({error.code}): {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise IntakeError(f"could not reach the operator at {url}: {error}") from None
    raise IntakeError("no replica of the operator leads right now; try again")


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
            columns = ("state", "kind", "namespace", "credential", "category", "owner", "pod", "podUID", "job",
                       "serviceAccount", "issuedAt", "expiresAt")  # fmt: skip
            rows = [[c.upper() for c in columns]] + [
                [str(holder.get(c) or "-") for c in columns] for holder in answer["holders"]
            ]
            widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
            lines += [
                "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
            ]
    return "\n".join(lines) + "\n"
