"""The admission seal: proof that the webhook admitted a pod exactly as it now stands.

The webhook signs (HMAC, a key shared by the replicas through the key ring) the pod's
namespace, binding, ServiceAccount, credentials and admission time, and puts the seal on
the pod. The operator acts only on pods whose seal holds and whose creation time (set by
the API server, after admission) is within moments of the sealed admission time. So a pod
created without the opt-in label and labelled later, a pod in a namespace the webhook
skips, a pod that names a binding or credentials of its own, or a copy of another pod's
seal onto a later pod, is never given a value.

Pure: keys in, verdicts out.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from ..api.pods import PodTask


class MacKey(Protocol):
    """A shared secret key (the key ring's, see platform.keys) as the seal uses it."""

    @property
    def id(self) -> str: ...

    def mac(self, message: bytes) -> bytes: ...


Purpose = Literal["admission", "bookkeeping"]


class SealKeys(Protocol):
    """Where the seal's keys come from: the current one, and every one still kept, by id."""

    def mac_key(self, purpose: Purpose) -> MacKey: ...

    def mac_keys(self, purpose: Purpose) -> Mapping[str, MacKey]: ...


# A reinvocation of the webhook happens within one admission request.
REINVOCATION_WINDOW = dt.timedelta(seconds=30)
# Admission happens just before the API server stamps creationTimestamp (whole seconds).
CREATION_WINDOW = dt.timedelta(seconds=60)
CLOCK_SKEW = dt.timedelta(seconds=5)


def _message(namespace: str, binding: str, service_account: str, credentials: Iterable[str], admitted_at: str) -> bytes:
    fields = ("agentcred-admission-v1", namespace, binding, service_account, ",".join(sorted(credentials)), admitted_at)
    return "\n".join(fields).encode()


def seal(
    key: MacKey, namespace: str, binding: str, service_account: str, credentials: Iterable[str], admitted_at: str
) -> str:
    mac = key.mac(_message(namespace, binding, service_account, credentials, admitted_at))
    return f"{key.id}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def holds(
    keys: Mapping[str, MacKey],
    text: object,
    namespace: str,
    binding: str,
    service_account: str,
    credentials: Iterable[str],
    admitted_at: str,
) -> bool:
    """Whether `text` is a seal one of `keys` made over exactly these facts."""
    if not isinstance(text, str) or "." not in text:
        return False
    key_id, _, _ = text.partition(".")
    key = keys.get(key_id)
    if key is None:
        return False
    expected = seal(key, namespace, binding, service_account, credentials, admitted_at)
    return hmac.compare_digest(expected.encode(), text.encode())


def created_with_admission(admitted_at: dt.datetime | None, created_at: dt.datetime | None) -> bool:
    """The pod was created by the very request the webhook admitted (not later, with a copy)."""
    if admitted_at is None or created_at is None:
        return False
    return admitted_at - CLOCK_SKEW - dt.timedelta(seconds=1) <= created_at <= admitted_at + CREATION_WINDOW


def admitted(task: PodTask, keys: Mapping[str, MacKey]) -> bool:
    """The pod carries a seal of ours over what it asks for, made when it was created."""
    return holds(
        keys, task.seal, task.namespace, task.binding, task.service_account, task.credentials, task.admitted_text
    ) and created_with_admission(task.admitted_at, task.created_at)


def foreign(task: PodTask, keys: Mapping[str, MacKey]) -> bool:
    """Sealed with a key that is not ours: another agentcred instance admitted it, and acts on it."""
    return isinstance(task.seal, str) and "." in task.seal and task.seal.partition(".")[0] not in keys


class Bookkeeping:
    """Seals a Secret's bookkeeping (see api.projection) with the key ring's bookkeeping key,
    so that whoever may edit Secrets in a namespace cannot make the operator believe a value,
    an expiry, a pod or a revocation it did not write."""

    def __init__(self, keys: Callable[[], SealKeys]) -> None:
        self._keys = keys

    def sign(self, message: bytes) -> str:
        key = self._keys().mac_key("bookkeeping")
        return f"{key.id}.{base64.urlsafe_b64encode(key.mac(message)).rstrip(b'=').decode()}"

    def verify(self, message: bytes, text: object) -> bool:
        if not isinstance(text, str) or "." not in text:
            return False
        key = self._keys().mac_keys("bookkeeping").get(text.partition(".")[0])
        if key is None:
            return False
        expected = f"{key.id}.{base64.urlsafe_b64encode(key.mac(message)).rstrip(b'=').decode()}"
        return hmac.compare_digest(expected.encode(), text.encode())
