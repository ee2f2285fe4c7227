"""CSI delivery's decisions: what a publish request may receive, and the plugin's wire format.

agentcred's CSI node plugin publishes an inline volume for one pod: the kubelet names the pod
(its namespace, name, UID and ServiceAccount, `podInfoOnMount`) and passes a ServiceAccount
token it requested for that pod (audience `agentcred`, `tokenRequests`). The plugin forwards
both, with the volume's attributes, to the operator, authenticating itself with its own token
(bound to its node). The operator believes nothing the volume says until the pod is proven:
the pod's token reviewed by the API server and bound to the pod's UID, the pod admitted by the
webhook for this credential (its seal), delivered by CSI, its binding its own, scheduled on the
plugin's node, its task alive, its ServiceAccount still a subject. Everything else is refused
with a reason the kubelet shows in the pod's events.

The plugin and the operator speak JSON over the operator's HTTPS endpoint:

POST /v1/csi/publish  a volume to publish: the value, its expiry, the file mode, the CA
POST /v1/csi/sync     the volumes a plugin holds (and those it unpublished); answered, at
                      once or when something changes, with what each should hold now
                      (a renewed value, or nothing: revoked)

Pure: parsing with bounds, and verdicts; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from ..api import labels
from ..api.pods import PodTask
from ..api.schema import DNS_LABEL_RE
from .credentials import CredentialRecord

MAX_BODY = 1024 * 1024  # a sync names every volume of a node: 110 pods x 16 credentials fit easily
MAX_TOKEN = 16 * 1024
MAX_VOLUMES = 4096
MAX_WAIT = 30.0  # a sync may wait at most this long for a change
PUBLISH_PATH = "/v1/csi/publish"
SYNC_PATH = "/v1/csi/sync"

# What the kubelet puts in a NodePublishVolume's volume_context (podInfoOnMount, tokenRequests).
POD_NAME_KEY = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE_KEY = "csi.storage.k8s.io/pod.namespace"
POD_UID_KEY = "csi.storage.k8s.io/pod.uid"
SERVICE_ACCOUNT_KEY = "csi.storage.k8s.io/serviceAccount.name"
TOKENS_KEY = "csi.storage.k8s.io/serviceAccount.tokens"
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


class BadRequest(Exception):
    """The request is malformed; the message says what is wrong."""


class Refused(Exception):
    """The pod gets nothing; `reason` is bounded (audit, metrics), the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class KubeletPod:
    """The pod a NodePublishVolume is for, as the kubelet names it, and the token it passed."""

    namespace: str
    name: str
    uid: str
    service_account: str
    token: str

    def to_json(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid, "serviceAccount": self.service_account}


def kubelet_pod(context: dict[str, str], audience: str = labels.SERVICE_ACCOUNT_AUDIENCE) -> KubeletPod:
    """The pod and its token from a volume context, or BadRequest: the CSIDriver object must
    ask for pod info and a token for `audience`, and the volume must be inline (ephemeral)."""
    if context.get(EPHEMERAL_KEY) != "true":
        raise BadRequest(f"{labels.CSI_DRIVER} publishes inline (ephemeral) volumes only")
    missing = [
        key for key in (POD_NAMESPACE_KEY, POD_NAME_KEY, POD_UID_KEY, SERVICE_ACCOUNT_KEY) if not context.get(key)
    ]
    if missing:
        raise BadRequest(f"the kubelet passed no {', '.join(missing)}: the CSIDriver needs podInfoOnMount: true")
    try:
        tokens = json.loads(context.get(TOKENS_KEY) or "{}")
        token = tokens[audience]["token"]
    except (ValueError, KeyError, TypeError):
        raise BadRequest(
            f"the kubelet passed no ServiceAccount token for audience {audience}: the CSIDriver needs "
            f"tokenRequests: [{{audience: {audience}}}]"
        ) from None
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        raise BadRequest(f"the ServiceAccount token for audience {audience} is malformed")
    return KubeletPod(
        context[POD_NAMESPACE_KEY], context[POD_NAME_KEY], context[POD_UID_KEY], context[SERVICE_ACCOUNT_KEY], token
    )


@dataclass(frozen=True)
class PublishRequest:
    volume_id: str
    credential: str
    binding: str
    pod: KubeletPod

    def to_json(self) -> dict[str, Any]:
        return {
            "volumeId": self.volume_id,
            "credential": self.credential,
            "binding": self.binding,
            "pod": self.pod.to_json(),
            "podToken": self.pod.token,
        }


def _text(data: dict[str, Any], name: str, limit: int = 253) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadRequest(f"{name} must be a non-empty string of at most {limit} characters")
    return value


def _object(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise BadRequest(f"the body is larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body is not a JSON object")
    return data


def parse_publish(body: bytes) -> PublishRequest:
    data = _object(body)
    pod = data.get("pod")
    if not isinstance(pod, dict):
        raise BadRequest("pod must be an object: namespace, name, uid, serviceAccount")
    credential, binding = _text(data, "credential", 63), _text(data, "binding", 16)
    if not DNS_LABEL_RE.fullmatch(credential):
        raise BadRequest("credential is not an AgentCredential name")
    if not labels.is_binding(binding):
        raise BadRequest("binding is not a binding id")
    return PublishRequest(
        volume_id=_text(data, "volumeId", 128),
        credential=credential,
        binding=binding,
        pod=KubeletPod(
            _text(pod, "namespace", 63),
            _text(pod, "name"),
            _text(pod, "uid", 64),
            _text(pod, "serviceAccount"),
            _text(data, "podToken", MAX_TOKEN),
        ),
    )


@dataclass(frozen=True)
class HeldVolume:
    """A volume a plugin holds: its id, the operator's sealed record of it, what it holds."""

    volume_id: str
    record: str
    fingerprint: str  # of the value it holds; "" when it holds none (revoked)


@dataclass(frozen=True)
class SyncRequest:
    volumes: tuple[HeldVolume, ...]
    unpublished: tuple[HeldVolume, ...]
    wait: float


def _held(items: Any, what: str) -> tuple[HeldVolume, ...]:
    if not isinstance(items, list) or len(items) > MAX_VOLUMES:
        raise BadRequest(f"{what} must be a list of at most {MAX_VOLUMES} volumes")
    held = []
    for item in items:
        if not isinstance(item, dict):
            raise BadRequest(f"{what} must be a list of objects")
        fingerprint = item.get("fingerprint") or ""
        if not isinstance(fingerprint, str) or len(fingerprint) > 128:
            raise BadRequest("fingerprint must be a string")
        held.append(HeldVolume(_text(item, "volumeId", 128), _text(item, "record", 8192), fingerprint))
    return tuple(held)


def parse_sync(body: bytes) -> SyncRequest:
    data = _object(body)
    wait = data.get("wait", 0)
    if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait <= MAX_WAIT:
        raise BadRequest(f"wait must be a number of seconds from 0 to {MAX_WAIT:.0f}")
    return SyncRequest(
        _held(data.get("volumes", []), "volumes"), _held(data.get("unpublished", []), "unpublished"), wait
    )


def judge_publish(
    request: PublishRequest,
    plugin_node: str,
    reviewed_uid: str | None,
    task: PodTask | None,
    owns_binding: bool,
    record: CredentialRecord | None,
) -> None:
    """Refused unless the pod the kubelet names is the one the token proves, admitted for this
    credential by CSI, its own binding, on the plugin's node, alive, and a subject still.
    `reviewed_uid`: the pod UID the reviewed token is bound to; `task`: the admitted pod of that
    UID (None: not admitted, or not yet seen)."""
    pod = request.pod
    where = f"pod {pod.name} in {pod.namespace}"
    if reviewed_uid is None:
        raise Refused("token-unbound", f"the token the kubelet passed for {where} is not bound to a pod")
    if reviewed_uid != pod.uid:
        raise Refused("token-mismatch", f"the token the kubelet passed is bound to another pod than {where}")
    if task is None or task.uid != pod.uid:
        raise Refused(
            "not-admitted",
            f"{where} was not admitted by agentcred: only pods its webhook admitted are published values",
        )
    if not owns_binding:
        raise Refused("binding-taken", f"{where} carries the admission of another pod (binding {task.binding})")
    if request.binding != task.binding or request.credential not in task.credentials:
        raise Refused(
            "not-requested",
            f"{where} was not admitted for AgentCredential {request.credential} with this volume (its credentials: "
            f"{', '.join(task.credentials)})",
        )
    if request.credential not in task.csi:
        raise Refused("not-csi", f"{where} was admitted for {request.credential} by another delivery than csi")
    if task.node != plugin_node:
        raise Refused("wrong-node", f"{where} is not scheduled on node {plugin_node}, the plugin's")
    if task.end_reason is not None:
        raise Refused("ended", f"{where} has ended ({task.end_reason})")
    if record is None or record.spec is None:
        raise Refused("credential-missing", f"AgentCredential {request.credential} does not exist in {pod.namespace}")
    if not record.allows(task.service_account):
        raise Refused(
            "not-a-subject",
            f"ServiceAccount {task.service_account} is not a subject of AgentCredential {request.credential} "
            f"in {pod.namespace}",
        )


@dataclass(frozen=True)
class Published:
    """What a publish answers: the value and what goes with it into the volume."""

    value: bytes
    expires_at: str
    fingerprint: str
    file_mode: int
    ca: str
    record: str

    def to_json(self) -> dict[str, Any]:
        return {
            "value": base64.b64encode(self.value).decode(),
            "expiresAt": self.expires_at,
            "fingerprint": self.fingerprint,
            "fileMode": self.file_mode,
            "ca": self.ca,
            "record": self.record,
        }

    @classmethod
    def from_json(cls, data: Any) -> Published:
        if not isinstance(data, dict):
            raise BadRequest("the answer is not a JSON object")
        try:
            value = base64.b64decode(_text(data, "value", 4 * MAX_TOKEN), validate=True)
        except binascii.Error:
            raise BadRequest("value is not base64") from None
        mode = data.get("fileMode")
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
            raise BadRequest("fileMode must be a file mode")
        ca = data.get("ca") or ""
        if not isinstance(ca, str):
            raise BadRequest("ca must be a PEM string")
        return cls(
            value, _text(data, "expiresAt", 64), _text(data, "fingerprint", 128), mode, ca, _text(data, "record", 8192)
        )


@dataclass(frozen=True)
class Update:
    """What one held volume should hold now: a new value (with its expiry, fingerprint and
    record), or nothing (`revoked` says why)."""

    volume_id: str
    value: bytes | None = None
    expires_at: str = ""
    fingerprint: str = ""
    record: str = ""
    revoked: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.value is None:
            return {"volumeId": self.volume_id, "revoked": self.revoked or "revoked"}
        return {
            "volumeId": self.volume_id,
            "value": base64.b64encode(self.value).decode(),
            "expiresAt": self.expires_at,
            "fingerprint": self.fingerprint,
            "record": self.record,
        }

    @classmethod
    def from_json(cls, data: Any) -> Update:
        if not isinstance(data, dict):
            raise BadRequest("an update is not a JSON object")
        volume_id = _text(data, "volumeId", 128)
        if "value" not in data:
            return cls(volume_id, revoked=str(data.get("revoked") or "revoked")[:64])
        try:
            value = base64.b64decode(_text(data, "value", 4 * MAX_TOKEN), validate=True)
        except binascii.Error:
            raise BadRequest("value is not base64") from None
        return cls(
            volume_id, value, _text(data, "expiresAt", 64), _text(data, "fingerprint", 128), _text(data, "record", 8192)
        )


CA_FILE_MODE = 0o444  # the operator's CA is public


def volume_files(value: bytes, expires_at: str, file_mode: int, ca: str = "") -> list[tuple[str, bytes, int]]:
    """What a published volume holds, as a Secret volume would: the value and its expiry with
    the mode asked, and (for the token service) the operator's CA. A renewal rewrites the
    first two; a revocation removes them (`REVOKED_FILES`)."""
    files = [(labels.VALUE_FILE, value, file_mode), (labels.EXPIRY_FILE, expires_at.encode(), file_mode)]
    if ca:
        files.append((labels.CA_KEY, ca.encode(), CA_FILE_MODE))
    return files


REVOKED_FILES = (labels.VALUE_FILE, labels.EXPIRY_FILE)
