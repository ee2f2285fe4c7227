"""`agentcred revoke`: ask the operator to revoke a credential's live values now.

The request is an annotation on the AgentCredential (so it needs only `patch` on that
resource, and the operator's audit log records who acted through the usual path); the
command waits until the operator reports the outcome in `status.lastRevocation`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

from kubernetes import client

from . import labels, model


class RevokeTimeout(Exception):
    pass


def request_revoke(
    api_client: client.ApiClient,
    namespace: str,
    credential: str,
    *,
    pod: str | None = None,
    reason: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api_client)
    request = {
        "id": uuid.uuid4().hex,
        "pod": pod,
        "reason": reason,
        "requestedAt": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    custom.patch_namespaced_custom_object(
        model.GROUP, model.VERSION, namespace, model.PLURAL, credential,
        {"metadata": {"annotations": {labels.REVOKE_ANNOTATION: json.dumps(request)}}},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = custom.get_namespaced_custom_object(model.GROUP, model.VERSION, namespace, model.PLURAL, credential)
        outcome = (current.get("status") or {}).get("lastRevocation") or {}
        if outcome.get("id") == request["id"]:
            return outcome
        time.sleep(0.2)
    raise RevokeTimeout(
        f"the operator did not confirm revoking {namespace}/{credential} within {timeout:.0f}s: is it running?"
    )
