"""`agentcred rotate-key`: ask the operator to rotate its signing keys, and wait for it.

The request is an annotation on the key ring Secret; the operator, which follows that
Secret, makes a new key current and keeps the old one published until its tokens expire.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from kubernetes import client

from ..api.labels import ROTATE_ANNOTATION, ROTATED_ANNOTATION, StateNames
from ..platform.keys import KeyRing

DEFAULT_NAMES = StateNames()


class RotationTimeout(Exception):
    pass


def request_rotation(
    api_client: client.ApiClient,
    namespace: str,
    algorithm: str,
    timeout: float = 30.0,
    names: StateNames = DEFAULT_NAMES,
) -> list[dict[str, Any]]:
    core = client.CoreV1Api(api_client)
    request_id = uuid.uuid4().hex
    core.patch_namespaced_secret(
        names.keyring,
        namespace,
        {"metadata": {"annotations": {ROTATE_ANNOTATION: json.dumps({"id": request_id, "algorithm": algorithm})}}},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        secret = core.read_namespaced_secret(names.keyring, namespace)
        if (secret.metadata.annotations or {}).get(ROTATED_ANNOTATION) == request_id:
            ring = KeyRing.from_secret_data(secret.data)
            return [
                {"alg": key.alg, "kid": key.kid, "retiredAt": key.retired_at.isoformat() if key.retired_at else None}
                for key in ring.keys
            ]
        time.sleep(0.5)
    raise RotationTimeout(f"the operator did not rotate the keys in {namespace} within {timeout:.0f}s: is it running?")
