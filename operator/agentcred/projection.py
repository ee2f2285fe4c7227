"""What a pod asks for and what its Secret holds, read from and written to plain dicts.

A pod's task is read from its immutable spec (the volumes the webhook added), never from
its mutable annotations, so editing a pod after admission cannot widen what it receives.
The Secret's bookkeeping (expiries, token ids, fingerprints, revocations) lives in its
metadata, so the operator's state is derivable from the cluster after a restart.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from . import labels

EndReason = Literal["task-succeeded", "task-failed", "pod-deleted", "opted-out"]


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def fingerprint(value: bytes) -> str:
    """A short, one-way identifier of a value for logs and audit; never the value itself."""
    return "sha256:" + hashlib.sha256(value).hexdigest()[:16]


class _Bound:
    """Named by a namespace and a binding id: a pod's task and its Secret's state alike."""

    namespace: str
    binding: str

    @property
    def secret_name(self) -> str:
        return labels.secret_name(self.binding)

    @property
    def key(self) -> str:
        return projection_key(self.namespace, self.binding)


@dataclass(frozen=True)
class PodTask(_Bound):
    """An opted-in pod as the operator sees it: who it is and what it was admitted for."""

    namespace: str
    name: str
    uid: str
    service_account: str
    binding: str
    credentials: tuple[str, ...]
    job: str | None
    phase: str
    deleted: bool
    gated: bool
    opted_out: bool = False  # still there, but no longer labelled for agentcred
    admitted_at: dt.datetime | None = None
    admitted_text: str = ""  # the annotation as written (what the seal covers)
    seal: str | None = None
    created_at: dt.datetime | None = None

    @property
    def end_reason(self) -> EndReason | None:
        if self.deleted:
            return "pod-deleted"
        if self.opted_out:
            return "opted-out"
        if self.phase == "Succeeded":
            return "task-succeeded"
        if self.phase == "Failed":
            return "task-failed"
        return None


def projection_key(namespace: str, binding: str) -> str:
    """Bindings are random, but only unique together with their namespace: a tenant must
    not be able to alias another namespace's projection by reusing a binding id it saw."""
    return f"{namespace}/{binding}"


def split_key(key: str) -> tuple[str, str]:
    namespace, _, binding = key.partition("/")
    return namespace, binding


def pod_task(pod: dict[str, Any], deleted: bool = False) -> PodTask | None:
    """The task of a pod the webhook admitted, or None for any other pod."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    binding = None
    credentials: list[str] = []
    for volume in spec.get("volumes") or []:
        if not str(volume.get("name", "")).startswith(labels.VOLUME_PREFIX):
            continue
        for source in (volume.get("projected") or {}).get("sources") or []:
            secret = source.get("secret") or {}
            found = labels.binding_of_secret_name(secret.get("name"))
            if found is None or binding not in (None, found):
                return None  # not a volume the webhook made: not ours to act on
            binding = found
            for item in secret.get("items") or []:
                key = str(item.get("key", ""))
                suffix = f".{labels.VALUE_FILE}"
                if key.endswith(suffix) and key[: -len(suffix)] not in credentials:
                    credentials.append(key[: -len(suffix)])
    if binding is None or not credentials:
        return None
    job = next(
        (ref.get("name") for ref in meta.get("ownerReferences") or [] if ref.get("kind") == "Job"),
        None,
    )
    annotations = meta.get("annotations") or {}
    return PodTask(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        service_account=spec.get("serviceAccountName") or "default",
        binding=binding,
        credentials=tuple(credentials),
        job=job,
        phase=(pod.get("status") or {}).get("phase") or "Pending",
        deleted=deleted or bool(meta.get("deletionTimestamp")),
        gated=any(g.get("name") == labels.SCHEDULING_GATE for g in spec.get("schedulingGates") or []),
        admitted_at=_time(annotations.get(labels.ADMITTED_ANNOTATION)),
        admitted_text=str(annotations.get(labels.ADMITTED_ANNOTATION) or ""),
        seal=annotations.get(labels.SEAL_ANNOTATION),
        created_at=_time(meta.get("creationTimestamp")),
    )


def _time(text: Any) -> dt.datetime | None:
    try:
        return parse_time(text)
    except (ValueError, TypeError, AttributeError):
        return None


@dataclass(frozen=True)
class IssuedValue:
    """Bookkeeping of one live value (never the value itself)."""

    credential: str
    category: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    task_started_at: dt.datetime  # first issuance in this task: maxLifetime counts from here
    fingerprint: str
    token_id: str | None = None  # a JWT's jti, or the minting service's id for the value
    renewals: int = 0
    source: str = "jwt"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "category": self.category,
            "issuedAt": format_time(self.issued_at),
            "expiresAt": format_time(self.expires_at),
            "taskStartedAt": format_time(self.task_started_at),
            "fingerprint": self.fingerprint,
            "tokenId": self.token_id,
            "renewals": self.renewals,
        }

    @classmethod
    def from_json(cls, credential: str, data: dict[str, Any]) -> "IssuedValue":
        return cls(
            credential=credential,
            category=data["category"],
            issued_at=parse_time(data["issuedAt"]),
            expires_at=parse_time(data["expiresAt"]),
            task_started_at=parse_time(data["taskStartedAt"]),
            fingerprint=data["fingerprint"],
            token_id=data.get("tokenId"),
            renewals=int(data.get("renewals", 0)),
            source=str(data.get("source", "jwt")),
        )


@dataclass(frozen=True)
class ProjectionState(_Bound):
    """A managed Secret read back: whose it is, what is live in it, what was revoked."""

    namespace: str
    binding: str
    pod_name: str
    pod_uid: str
    job: str | None
    values: dict[str, IssuedValue] = field(default_factory=dict)
    revoked: dict[str, str] = field(default_factory=dict)  # credential -> reason
    resource_version: str | None = None


def parse_projection(secret: dict[str, Any]) -> ProjectionState | None:
    meta = secret.get("metadata") or {}
    tags = meta.get("labels") or {}
    if tags.get(labels.MANAGED_LABEL) != "true" or not labels.is_binding(tags.get(labels.BINDING_LABEL)):
        return None
    annotations = meta.get("annotations") or {}
    try:
        state = json.loads(annotations.get(labels.STATE_ANNOTATION) or "{}")
        values = {
            name: IssuedValue.from_json(name, data) for name, data in (state.get("values") or {}).items()
        }
        revoked = {str(k): str(v) for k, v in (state.get("revoked") or {}).items()}
    except (ValueError, KeyError, TypeError):
        # Damaged bookkeeping: treat as holding unknown values, which the planner revokes.
        values, revoked = {}, {"*": "unreadable-state"}
    return ProjectionState(
        namespace=meta.get("namespace", ""),
        binding=tags[labels.BINDING_LABEL],
        pod_name=annotations.get(labels.POD_ANNOTATION, ""),
        pod_uid=tags.get(labels.POD_UID_LABEL, ""),
        job=tags.get(labels.JOB_LABEL),
        values=values,
        revoked=revoked,
        resource_version=meta.get("resourceVersion"),
    )


def new_projection(task: PodTask) -> ProjectionState:
    return ProjectionState(
        namespace=task.namespace, binding=task.binding, pod_name=task.name, pod_uid=task.uid, job=task.job
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _metadata(state: ProjectionState) -> dict[str, Any]:
    tags = {
        labels.MANAGED_LABEL: "true",
        labels.BINDING_LABEL: state.binding,
        labels.POD_UID_LABEL: state.pod_uid,
    }
    if state.job:
        tags[labels.JOB_LABEL] = state.job
    for value in state.values.values():
        tags[labels.credential_label(value.credential)] = value.category
    body = {
        "values": {name: value.to_json() for name, value in sorted(state.values.items())},
        "revoked": dict(sorted(state.revoked.items())),
    }
    return {
        "labels": tags,
        "annotations": {
            labels.POD_ANNOTATION: state.pod_name,
            labels.STATE_ANNOTATION: json.dumps(body, separators=(",", ":")),
        },
    }


def secret_body(state: ProjectionState, new_values: dict[str, bytes], pod_uid: str) -> dict[str, Any]:
    """A new Secret holding `new_values`, owned by the pod so the cluster's GC backs us up."""
    metadata = _metadata(state)
    metadata.update(
        name=state.secret_name,
        namespace=state.namespace,
        ownerReferences=[
            {"apiVersion": "v1", "kind": "Pod", "name": state.pod_name, "uid": pod_uid,
             "blockOwnerDeletion": False}
        ],
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": False,
        "metadata": metadata,
        "data": _data(state, new_values),
    }


def secret_patch(
    state: ProjectionState, new_values: dict[str, bytes], removed: tuple[str, ...], previous: ProjectionState
) -> dict[str, Any]:
    """A merge patch that writes `new_values`, drops `removed`, and fails on a stale base."""
    metadata = _metadata(state)
    stale_labels = {
        labels.credential_label(name): None for name in previous.values if name not in state.values
    }
    metadata["labels"].update(stale_labels)
    metadata["resourceVersion"] = previous.resource_version
    data: dict[str, Any] = dict(_data(state, new_values))
    for name in removed:
        data[labels.value_key(name)] = None
        data[labels.expiry_key(name)] = None
    return {"metadata": metadata, "data": data}


def _data(state: ProjectionState, new_values: dict[str, bytes]) -> dict[str, str]:
    data = {}
    for name, value in new_values.items():
        data[labels.value_key(name)] = _b64(value)
        data[labels.expiry_key(name)] = _b64(format_time(state.values[name].expires_at).encode())
    return data


def with_values(state: ProjectionState, values: dict[str, IssuedValue]) -> ProjectionState:
    return replace(state, values={**state.values, **values})


def without(state: ProjectionState, revoked: dict[str, str]) -> ProjectionState:
    return replace(
        state,
        values={k: v for k, v in state.values.items() if k not in revoked},
        revoked={**state.revoked, **revoked},
    )
