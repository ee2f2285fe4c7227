"""An opted-in pod as the operator sees it: who it is and what it was admitted for.

A pod's task is read from its immutable spec (the volumes the webhook added), never from its
mutable annotations, so editing a pod after admission cannot widen what it receives.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from . import labels
from .times import parse_time

EndReason = Literal["task-succeeded", "task-failed", "pod-deleted", "opted-out"]


class Bound:
    """Named by a namespace and a binding id: a pod's task and its Secret's state alike."""

    __slots__ = ()

    namespace: str
    binding: str

    @property
    def secret_name(self) -> str:
        return labels.secret_name(self.binding)

    @property
    def key(self) -> str:
        return projection_key(self.namespace, self.binding)


@dataclass(frozen=True)
class PodTask(Bound):
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
    gateway: tuple[str, ...] = ()  # of `credentials`, those admitted gateway-only (never written into it)
    csi: tuple[str, ...] = ()  # of `credentials`, those admitted for agentcred's CSI plugin (no Secret)
    node: str = ""  # where it is scheduled (spec.nodeName), once it is
    pod_labels: tuple[tuple[str, str], ...] = ()  # mutable by pod editors: conditions read them as hints

    def gateway_only(self, credential: str) -> bool:
        return credential in self.gateway

    @property
    def by_csi(self) -> bool:
        """Its values are written by agentcred's CSI node plugin (a pod's in-pod values share one delivery)."""
        return bool(self.csi)

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
    gateway: list[str] = []
    csi: list[str] = []
    for volume in spec.get("volumes") or []:
        if not str(volume.get("name", "")).startswith(labels.VOLUME_PREFIX):
            continue
        if "csi" in volume:
            found, name = _csi_volume(volume.get("csi"))
            if found is None or binding not in (None, found) or name in credentials:
                return None  # not a volume the webhook made: not ours to act on
            binding = found
            credentials.append(name)
            csi.append(name)
            continue
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "secret" not in source:
                continue  # the identity volume's ServiceAccount token
            secret = source.get("secret") or {}
            found = labels.binding_of_secret_name(secret.get("name"))
            if found is None or binding not in (None, found):
                return None  # not a volume the webhook made: not ours to act on
            binding = found
            for item in secret.get("items") or []:
                key = str(item.get("key", ""))
                for suffix in (f".{labels.VALUE_FILE}", f".{labels.GATEWAY_SUFFIX}"):
                    name = key[: -len(suffix)]
                    if key.endswith(suffix) and name not in credentials:
                        credentials.append(name)
                        if suffix == f".{labels.GATEWAY_SUFFIX}":
                            gateway.append(name)
    if binding is None or not credentials:
        return None
    job = next((ref.get("name") for ref in meta.get("ownerReferences") or [] if ref.get("kind") == "Job"), None)
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
        gateway=tuple(gateway),
        csi=tuple(csi),
        node=str(spec.get("nodeName") or ""),
        pod_labels=tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items())),
    )


def _csi_volume(source: Any) -> tuple[str | None, str]:
    """The binding and credential an agentcred CSI volume names, or (None, "") for any other."""
    if not isinstance(source, dict) or source.get("driver") != labels.CSI_DRIVER:
        return None, ""
    attributes = source.get("volumeAttributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    binding, credential = attributes.get(labels.CSI_BINDING_ATTRIBUTE), attributes.get(labels.CSI_CREDENTIAL_ATTRIBUTE)
    if not labels.is_binding(binding) or not isinstance(credential, str) or not credential:
        return None, ""
    return str(binding), credential


def _time(text: Any) -> dt.datetime | None:
    try:
        return parse_time(text)
    except (ValueError, TypeError, AttributeError):
        return None


def pod_ref(namespace: str, name: str, uid: str) -> dict[str, Any]:
    """Enough of a pod to name it in an Event."""
    return {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": name, "uid": uid}
