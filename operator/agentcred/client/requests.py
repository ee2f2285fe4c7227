"""`agentcred revoke` and `agentcred renew`: ask the operator to act on a credential now.

A request is an annotation on the AgentCredential (so it needs only `patch` on that
resource, and the operator's audit log records the act through the usual path); the
command waits until the operator reports the outcome in the credential's status.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

from kubernetes import client

from ..api import labels, model


class RequestTimeout(Exception):
    pass


def _request(
    api_client: client.ApiClient,
    namespace: str,
    credential: str,
    annotation: str,
    status_field: str,
    fields: dict[str, Any],
    timeout: float,
) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api_client)
    request = {
        "id": uuid.uuid4().hex,
        **fields,
        "requestedAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    custom.patch_namespaced_custom_object(
        model.GROUP,
        model.VERSION,
        namespace,
        model.PLURAL,
        credential,
        {"metadata": {"annotations": {annotation: json.dumps(request)}}},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = custom.get_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, credential)
        outcome = (current.get("status") or {}).get(status_field) or {}
        if outcome.get("id") == request["id"]:
            return outcome
        time.sleep(0.2)
    raise RequestTimeout(
        f"the operator did not confirm the request on {namespace}/{credential} within {timeout:.0f}s: is it running?"
    )


def request_revoke(
    api_client: client.ApiClient,
    namespace: str,
    credential: str,
    *,
    pod: str | None = None,
    reason: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Revoke the credential's live values (in one pod, or everywhere) now."""
    return _request(
        api_client,
        namespace,
        credential,
        labels.REVOKE_ANNOTATION,
        "lastRevocation",
        {"pod": pod, "reason": reason},
        timeout,
    )


def request_renew(
    api_client: client.ApiClient, namespace: str, credential: str, *, timeout: float = 30.0
) -> dict[str, Any]:
    """Replace every live value of the credential now (after rotating a static upstream key)."""
    return _request(api_client, namespace, credential, labels.RENEW_ANNOTATION, "lastRenewal", {}, timeout)
