"""What a pod's Secret holds, read from and written to plain dicts: its bookkeeping (expiries,
token ids, fingerprints, revocations) lives in the Secret's metadata, so the operator's state
is derivable from the cluster after a restart; values live only in its data.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from . import labels
from .pods import Bound, PodTask
from .times import format_time, parse_time

# A Secret's bookkeeping is sealed (see rules.seal.Bookkeeping): whoever may edit Secrets in
# the namespace must not be able to make the operator believe a value, an expiry, a pod or a
# revocation that it did not write.
Sign = Callable[[bytes], str]
Verify = Callable[[bytes, object], bool]


@dataclass(frozen=True)
class Subject:
    """Whose value it is: one pod of one namespace (and its Job and ServiceAccount)."""

    namespace: str
    pod: str | None
    pod_uid: str | None
    job: str | None = None
    service_account: str | None = None
    removed_by: str | None = None  # who took the Secret away, when it was not the operator

    admitted_at: dt.datetime | None = None  # sealed at admission: the task's lifetime counts from here

    @classmethod
    def of_task(cls, task: PodTask) -> Subject:
        return cls(task.namespace, task.name, task.uid, task.job, task.service_account, admitted_at=task.admitted_at)

    @classmethod
    def of_state(cls, state: ProjectionState) -> Subject:
        return cls(state.namespace, state.pod_name, state.pod_uid, state.job)

    def removed(self, by: str) -> Subject:
        return replace(self, removed_by=by)

    def fields(self) -> dict[str, Any]:
        """As audit lines and minting-service calls name them."""
        return {
            "namespace": self.namespace,
            "podName": self.pod,
            "podUID": self.pod_uid,
            "job": self.job,
            "serviceAccount": self.service_account,
            "removedBy": self.removed_by,
        }


@dataclass(frozen=True, slots=True)
class IssuedValue:
    """Bookkeeping of one live value (never the value itself)."""

    credential: str
    category: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    task_started_at: dt.datetime  # first issuance in this task: maxLifetime counts from here
    fingerprint: str  # keyed (platform.fingerprints): never the value, no guessing oracle
    token_id: str | None = None  # a JWT's jti, or the minting service's id for the value
    renewals: int = 0
    source: str = "jwt"
    # The thumbprint (RFC 7638) of the DPoP key written beside the value (`dpop.jwk`): the pod's
    # own key, which its identity token must be presented with. None: the value is not bound.
    jkt: str | None = None
    # The key of the value this one replaced: the kubelet may put the new `dpop.jwk` into the
    # container up to a volume refresh later, so the old key is the pod's until its value expires.
    previous_jkt: str | None = None
    previous_until: dt.datetime | None = None

    def pod_keys(self, now: dt.datetime) -> tuple[str, ...]:
        """The thumbprints of the DPoP keys the pod may hold for this value now."""
        keys: tuple[str, ...] = (self.jkt,) if self.jkt else ()
        if self.previous_jkt and self.previous_until is not None and now < self.previous_until:
            keys += (self.previous_jkt,)
        return keys

    def replacing(self, old: IssuedValue) -> IssuedValue:
        """This value as the renewal of `old`: old's key is remembered while old lives."""
        if self.jkt is None or old.jkt is None or old.jkt == self.jkt:
            return self
        return replace(self, previous_jkt=old.jkt, previous_until=old.expires_at)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "source": self.source,
            "category": self.category,
            "issuedAt": format_time(self.issued_at),
            "expiresAt": format_time(self.expires_at),
            "taskStartedAt": format_time(self.task_started_at),
            "fingerprint": self.fingerprint,
            "tokenId": self.token_id,
            "renewals": self.renewals,
        }
        if self.jkt is not None:
            body["jkt"] = self.jkt
        if self.previous_jkt is not None and self.previous_until is not None:
            body["previousJkt"], body["previousUntil"] = self.previous_jkt, format_time(self.previous_until)
        return body

    @classmethod
    def from_json(cls, credential: str, data: dict[str, Any]) -> IssuedValue:
        """ValueError unless every field has its type."""
        text = {k: data.get(k) for k in ("category", "issuedAt", "expiresAt", "taskStartedAt", "fingerprint")}
        if not all(isinstance(v, str) for v in text.values()) or not isinstance(data.get("renewals", 0), int):
            raise ValueError(f"bookkeeping of {credential} is malformed")
        token_id = data.get("tokenId")
        keys = {k: data.get(k) for k in ("jkt", "previousJkt", "previousUntil")}
        if not all(v is None or isinstance(v, str) for v in keys.values()):
            raise ValueError(f"bookkeeping of {credential} is malformed")
        previous_until = keys["previousUntil"]
        return cls(
            credential=credential,
            category=str(text["category"]),
            issued_at=parse_time(str(text["issuedAt"])),
            expires_at=parse_time(str(text["expiresAt"])),
            task_started_at=parse_time(str(text["taskStartedAt"])),
            fingerprint=str(text["fingerprint"]),
            token_id=token_id if isinstance(token_id, str) else None,
            renewals=int(data.get("renewals", 0)),
            source=str(data.get("source", "jwt")),
            jkt=keys["jkt"],
            previous_jkt=keys["previousJkt"] if previous_until else None,
            previous_until=parse_time(previous_until) if previous_until else None,
        )


@dataclass(frozen=True, slots=True)
class ProjectionState(Bound):
    """A managed Secret read back: whose it is, what is live in it, what was revoked."""

    namespace: str
    binding: str
    pod_name: str
    pod_uid: str
    job: str | None
    values: dict[str, IssuedValue] = field(default_factory=dict)
    revoked: dict[str, str] = field(default_factory=dict)  # credential -> reason
    resource_version: str | None = None
    sealed: bool = True  # False: the bookkeeping did not verify (damaged or forged): nothing in it counts
    csi: bool = False  # delivered by agentcred's CSI node plugin: no Secret, the bookkeeping is kept on the node


def parse_projection(secret: dict[str, Any], verify: Verify | None = None) -> ProjectionState | None:
    """A managed Secret's bookkeeping, or None for any other Secret. With `verify`, a Secret
    whose bookkeeping does not carry a valid seal is returned damaged: no values, no pod UID,
    everything revoked (the planner then removes it and starts afresh). Never raises."""
    meta = secret.get("metadata") or {}
    tags = meta.get("labels") or {}
    if not isinstance(tags, dict) or tags.get(labels.MANAGED_LABEL) != "true":
        return None
    binding = tags.get(labels.BINDING_LABEL)
    if not labels.is_binding(binding):
        return None
    found = meta.get("annotations")
    annotations: dict[str, Any] = found if isinstance(found, dict) else {}
    namespace, pod_name = str(meta.get("namespace") or ""), str(annotations.get(labels.POD_ANNOTATION) or "")
    pod_uid, job = str(tags.get(labels.POD_UID_LABEL) or ""), tags.get(labels.JOB_LABEL)
    text = annotations.get(labels.STATE_ANNOTATION)
    damaged = ProjectionState(
        namespace=namespace,
        binding=str(binding),
        pod_name=pod_name,
        pod_uid="",
        job=None,
        revoked={"*": "unreadable-state"},
        resource_version=meta.get("resourceVersion"),
        sealed=False,
    )
    message = _bookkeeping_message(namespace, str(binding), pod_uid, pod_name, job, text)
    if verify is not None and not verify(message, annotations.get(labels.STATE_SEAL_ANNOTATION)):
        return damaged
    try:
        state = orjson.loads(text or "{}")
        listed, crossed = state.get("values", {}), state.get("revoked", {})
        if not isinstance(listed, dict) or not isinstance(crossed, dict):
            raise ValueError("values and revoked are maps")
        values = {str(name): IssuedValue.from_json(str(name), data) for name, data in listed.items()}
        revoked = {str(k): str(v) for k, v in crossed.items()}
    except Exception:  # whatever the annotation holds, it is not bookkeeping we wrote
        return damaged
    return ProjectionState(
        namespace=namespace,
        binding=str(binding),
        pod_name=pod_name,
        pod_uid=pod_uid,
        job=str(job) if job else None,
        values=values,
        revoked=revoked,
        resource_version=meta.get("resourceVersion"),
    )


def _bookkeeping_message(
    namespace: str, binding: str, pod_uid: str, pod_name: str, job: object, state: object
) -> bytes:
    fields = ("agentcred-bookkeeping-v1", namespace, binding, pod_uid, pod_name, str(job or ""), str(state or ""))
    return "\n".join(fields).encode()


def new_projection(task: PodTask) -> ProjectionState:
    return ProjectionState(
        namespace=task.namespace, binding=task.binding, pod_name=task.name, pod_uid=task.uid, job=task.job
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _metadata(state: ProjectionState, sign: Sign) -> dict[str, Any]:
    tags = {labels.MANAGED_LABEL: "true", labels.BINDING_LABEL: state.binding, labels.POD_UID_LABEL: state.pod_uid}
    if state.job:
        tags[labels.JOB_LABEL] = state.job
    for value in state.values.values():
        tags[labels.credential_label(value.credential)] = value.category
    body = {
        "values": {name: value.to_json() for name, value in sorted(state.values.items())},
        "revoked": dict(sorted(state.revoked.items())),
    }
    text = orjson.dumps(body).decode()
    message = _bookkeeping_message(state.namespace, state.binding, state.pod_uid, state.pod_name, state.job, text)
    return {
        "labels": tags,
        "annotations": {
            labels.POD_ANNOTATION: state.pod_name,
            labels.STATE_ANNOTATION: text,
            labels.STATE_SEAL_ANNOTATION: sign(message),
        },
    }


def secret_body(
    state: ProjectionState,
    new_values: dict[str, bytes],
    pod_uid: str,
    sign: Sign,
    ca: bytes = b"",
    keys: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """A new Secret holding `new_values` (and the operator's CA, for the pod to reach the
    token service), owned by the pod so the cluster's GC backs us up."""
    metadata = _metadata(state, sign)
    metadata.update(
        name=state.secret_name,
        namespace=state.namespace,
        ownerReferences=[
            {"apiVersion": "v1", "kind": "Pod", "name": state.pod_name, "uid": pod_uid, "blockOwnerDeletion": False}
        ],
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": False,
        "metadata": metadata,
        "data": _data(state, new_values, ca, keys or {}),
    }


def secret_patch(
    state: ProjectionState,
    new_values: dict[str, bytes],
    removed: tuple[str, ...],
    previous: ProjectionState,
    sign: Sign,
    ca: bytes = b"",
    keys: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """A merge patch that writes `new_values` (with the DPoP `keys` they are bound to, and the
    current CA), drops `removed`, and fails on a stale base. A value renewed without a key
    loses the key it had."""
    metadata = _metadata(state, sign)
    stale_labels = {labels.credential_label(name): None for name in previous.values if name not in state.values}
    metadata["labels"].update(stale_labels)
    metadata["resourceVersion"] = previous.resource_version
    data: dict[str, Any] = dict(_data(state, new_values, ca, keys or {}))
    for name in new_values:
        if name not in (keys or {}):
            data[labels.dpop_key_key(name)] = None
    for name in removed:
        data[labels.value_key(name)] = None
        data[labels.expiry_key(name)] = None
        data[labels.dpop_key_key(name)] = None
    return {"metadata": metadata, "data": data}


def _data(state: ProjectionState, new_values: dict[str, bytes], ca: bytes, keys: Mapping[str, bytes]) -> dict[str, str]:
    data = {labels.CA_KEY: _b64(ca)} if ca else {}
    for name, value in new_values.items():
        data[labels.value_key(name)] = _b64(value)
        if name in keys:
            data[labels.dpop_key_key(name)] = _b64(keys[name])
        data[labels.expiry_key(name)] = _b64(format_time(state.values[name].expires_at).encode())
    return data


def with_values(state: ProjectionState, values: dict[str, IssuedValue]) -> ProjectionState:
    """`values` written over the state's; a renewed value remembers the key it replaced."""
    renewed = {
        name: value.replacing(state.values[name]) if name in state.values else value for name, value in values.items()
    }
    return replace(state, values={**state.values, **renewed})


def without(state: ProjectionState, revoked: Mapping[str, str]) -> ProjectionState:
    return replace(
        state, values={k: v for k, v in state.values.items() if k not in revoked}, revoked={**state.revoked, **revoked}
    )


# CSI delivery keeps no Secret: each value's bookkeeping travels sealed with it to the node
# plugin, which keeps it beside the volume and reports it back, so an operator that restarts
# (or a new leader) learns what is live on each node from the nodes themselves.
CSI_RECORD_VERSION = "agentcred-csi-record-v1"


def csi_record(state: ProjectionState, credential: str, sign: Sign) -> str:
    """The sealed bookkeeping of one CSI-delivered value (never the value)."""
    body = {
        "namespace": state.namespace,
        "binding": state.binding,
        "podUID": state.pod_uid,
        "podName": state.pod_name,
        "job": state.job,
        "credential": credential,
        "value": state.values[credential].to_json(),
    }
    text = orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()
    return orjson.dumps({"record": text, "seal": sign(f"{CSI_RECORD_VERSION}\n{text}".encode())}).decode()


def parse_csi_record(text: str, verify: Verify) -> ProjectionState | None:
    """A projection holding the one value a sealed record describes, or None when the record
    is not one we sealed. Never raises."""
    try:
        outer = orjson.loads(text)
        inner = outer["record"]
        if not isinstance(inner, str) or not verify(f"{CSI_RECORD_VERSION}\n{inner}".encode(), outer.get("seal")):
            return None
        body = orjson.loads(inner)
        credential, binding = str(body["credential"]), str(body["binding"])
        if not labels.is_binding(binding):
            return None
        value = IssuedValue.from_json(credential, body["value"])
        job = body.get("job")
        return ProjectionState(
            namespace=str(body["namespace"]),
            binding=binding,
            pod_name=str(body["podName"]),
            pod_uid=str(body["podUID"]),
            job=str(job) if job else None,
            values={credential: value},
            csi=True,
        )
    except Exception:  # whatever it holds, it is not a record we sealed
        return None


def merged(known: ProjectionState | None, found: ProjectionState) -> ProjectionState:
    """What is known of a CSI projection, with a value a plugin reported added (known values win)."""
    if known is None:
        return found
    return replace(known, values={**found.values, **known.values}, csi=True)
