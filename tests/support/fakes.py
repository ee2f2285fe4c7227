"""In-memory stand-ins for the Kubernetes API, for unit tests of the runtime's parts.

Neither is a cluster: they hold the few objects and answer the few calls the parts make,
and they record what was asked of them so a test can assert on it. What the API server
itself does -- admission, RBAC, garbage collection, watches that really resume -- is
tests/integration's business, against a real control plane.

- `InMemoryApi`: Secrets (optimistic concurrency by resourceVersion), pod patches,
  AgentCredentials (JSON patches with `test`, status merge patches), Events and TokenReviews.
- `ScriptedPodListing`: the pod list and watch, played from a script.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from agentcred.api import labels
from agentcred.platform.kube import ApiError, Conflict, Gone, NotFound
from agentcred.runtime.events import EventRecorder
from agentcred.runtime.tokens.callers import CREDENTIAL_ID_EXTRA, POD_NAME_EXTRA, POD_UID_EXTRA


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 (add, remove, replace, test) on a copy; ValueError naming the operation that
    does not apply. Enough for the patches agentcred sends, not a general implementation."""
    result = copy.deepcopy(document)
    for operation in operations:
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
        container: Any = result
        for part in parents:
            container = container[int(part)] if isinstance(container, list) else container.get(part)
            if container is None:
                raise ValueError(f"{operation}: {part} does not exist")
        op = operation["op"]
        if isinstance(container, list):
            index = len(container) if last == "-" else int(last)
            if op == "add":
                container.insert(index, copy.deepcopy(operation["value"]))
            elif index >= len(container):
                raise ValueError(f"{operation}: no element {index}")
            elif op == "remove":
                del container[index]
            elif op == "replace":
                container[index] = copy.deepcopy(operation["value"])
            elif op == "test" and container[index] != operation["value"]:
                raise ValueError(f"{operation}: the value is {container[index]!r}")
        else:
            if op == "add":
                container[last] = copy.deepcopy(operation["value"])
            elif last not in container:
                raise ValueError(f"{operation}: {last} does not exist")
            elif op == "remove":
                del container[last]
            elif op == "replace":
                container[last] = copy.deepcopy(operation["value"])
            elif op == "test" and container[last] != operation["value"]:
                raise ValueError(f"{operation}: the value is {container[last]!r}")
    return result


@dataclass(frozen=True)
class Review:
    """A ServiceAccount token the API server would accept: whose it is, for which audience."""

    namespace: str
    service_account: str
    pod_name: str | None
    pod_uid: str | None
    audience: str
    token_id: str = ""  # the jti the API server reports (authentication.kubernetes.io/credential-id)


class InMemoryApi:
    """The API calls the runtime's parts make, answered from memory.

    `calls` names each write in order ("create", "patch", "delete" for Secrets; "patch-pod";
    "patch-credential"; "status"); `pod_patches`, `credential_patches` and `events` keep what
    was sent; `fail_next` makes the next Secret write raise."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.credentials: dict[tuple[str, str], dict[str, Any]] = {}
        self.statuses: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.pod_patches: list[tuple[str, str, dict[str, Any]]] = []
        self.credential_patches: list[tuple[str, str, list[dict[str, Any]]]] = []
        self.events: list[dict[str, Any]] = []
        self.reviews: list[list[str]] = []  # the audiences of each TokenReview
        self.fail_next: Exception | None = None
        self._tokens: dict[str, Review] = {}
        self._version = 0

    # -- Secrets ---------------------------------------------------------------------------

    def _stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        body["metadata"]["resourceVersion"] = str(self._version)
        return copy.deepcopy(body)

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error

    def put_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """A Secret someone else wrote (an upstream Secret, say): no call recorded."""
        body = copy.deepcopy(body)
        body["metadata"]["namespace"] = namespace
        self.secrets[(namespace, body["metadata"]["name"])] = body
        return self._stamp(body)

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create")
        self._maybe_fail()
        key = (namespace, body["metadata"]["name"])
        if key in self.secrets:
            raise Conflict(409, "AlreadyExists", "exists")
        self.secrets[key] = copy.deepcopy(body)
        return self._stamp(self.secrets[key])

    async def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("patch")
        self._maybe_fail()
        current = self.secrets.get((namespace, name))
        if current is None:
            raise NotFound(404, "NotFound", "gone")
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "stale")
        merge(current, patch)
        return self._stamp(current)

    async def delete_secret(self, namespace: str, name: str) -> None:
        self.calls.append("delete")
        self._maybe_fail()
        if self.secrets.pop((namespace, name), None) is None:
            raise NotFound(404, "NotFound", "gone")

    async def find_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.secrets.get((namespace, name))
        return copy.deepcopy(found) if found else None

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """The data of a Secret as it stands ({} if there is none)."""
        return dict((self.secrets.get((namespace, name)) or {}).get("data") or {})

    # -- pods and Events -------------------------------------------------------------------

    async def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.calls.append("patch-pod")
        self.pod_patches.append((namespace, name, copy.deepcopy(patch)))

    async def create_event(self, body: dict[str, Any]) -> None:
        self.events.append(copy.deepcopy(body))

    # -- AgentCredentials ------------------------------------------------------------------

    def put_credential(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self.credentials[(meta["namespace"], meta["name"])] = copy.deepcopy(body)

    async def patch_credential(self, namespace: str, name: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append("patch-credential")
        self.credential_patches.append((namespace, name, copy.deepcopy(operations)))
        current = self.credentials.get((namespace, name))
        if current is None:
            raise NotFound(404, "NotFound", f"agentcredentials {name} not found")
        try:
            patched = json_patch(current, operations)
        except (ValueError, KeyError, IndexError) as error:
            raise ApiError(422, "Invalid", f"the JSON patch does not apply: {error}") from None
        self.credentials[(namespace, name)] = patched
        return copy.deepcopy(patched)

    def finalizers(self, namespace: str, name: str) -> list[str]:
        return list(self.credentials[(namespace, name)]["metadata"].get("finalizers") or [])

    async def patch_credential_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("status")
        merge(self.statuses.setdefault((namespace, name), {}), status)
        return {}

    # -- TokenReviews ----------------------------------------------------------------------

    def service_account_token(
        self,
        namespace: str,
        service_account: str,
        pod_name: str | None = None,
        pod_uid: str | None = None,
        audience: str = labels.SERVICE_ACCOUNT_AUDIENCE,
    ) -> str:
        """A token the API server would accept for the ServiceAccount (bound to a pod when
        `pod_name` is given), for `audience`; opaque, as far as the caller can tell."""
        token = "sa-token-" + secrets.token_urlsafe(16)
        self._tokens[token] = Review(namespace, service_account, pod_name, pod_uid, audience, secrets.token_urlsafe(8))
        return token

    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """A TokenReview's status, as the API server answers it."""
        self.reviews.append(list(audiences))
        found = self._tokens.get(token)
        if found is None:
            return {"authenticated": False, "error": "invalid bearer token"}
        if found.audience not in audiences:
            return {"authenticated": False, "error": "token audiences are invalid"}
        extra: dict[str, list[str | None]] = {CREDENTIAL_ID_EXTRA: [f"JTI={found.token_id}"]}
        if found.pod_name is not None:
            extra.update({POD_NAME_EXTRA: [found.pod_name], POD_UID_EXTRA: [found.pod_uid]})
        return {
            "authenticated": True,
            "user": {"username": f"system:serviceaccount:{found.namespace}:{found.service_account}", "extra": extra},
            "audiences": [found.audience],
        }


async def delivered(recorder: EventRecorder, api: InMemoryApi) -> list[dict[str, Any]]:
    """Run the recorder's poster until everything queued has reached `api`; the Events posted."""
    runner = asyncio.create_task(recorder.run(concurrency=1))
    try:
        await asyncio.wait_for(recorder._queue.join(), timeout=5)
    finally:
        runner.cancel()
    return api.events


class ScriptedPodListing:
    """The pod list and watch, from a script: lists from `listings` in turn; each watch
    replays the next batch of `watches`, then either ends (`Gone`: the next list) or waits
    for more (`more.set()` ends it)."""

    def __init__(self, listings: list[list[dict[str, Any]]], watches: list[list[dict[str, Any]] | type]) -> None:
        self.listings, self.watches = listings, watches
        self.lists = 0
        self.more = asyncio.Event()

    async def list_pages(
        self, path: str, selector: str, page: int = 500
    ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        self.lists += 1
        listing = self.listings.pop(0)
        for start in range(0, max(len(listing), 1), 2):  # pages of two
            yield listing[start : start + 2], str(self.lists)

    async def watch(self, path: str, selector: str, version: str) -> AsyncIterator[dict[str, Any]]:
        batch = self.watches.pop(0) if self.watches else []
        if batch is Gone:
            raise Gone(410, "Gone", "too old")
        assert isinstance(batch, list)
        await asyncio.sleep(0.01)  # the listed pods' handling has begun
        for event in batch:
            yield event
        await self.more.wait()  # an open watch with nothing more to say
        self.more.clear()
