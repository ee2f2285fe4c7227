"""agentcred's CSI node plugins, answered: a volume published for one pod, and each node's sync.

A plugin authenticates with its own ServiceAccount token (audience `agentcred`), which the API
server must accept as the node plugin's ServiceAccount and bound to a node (through the plugin's
pod, or to the Node itself): that node is the only one whose pods it is answered for. A publish
carries the token the kubelet requested for the pod; the pod is believed only as
`rules.csi.judge_publish` allows, and its value issued through the reconciler like any other --
audited, renewed from its own expiry, revoked by every trigger -- but written to the plugin
(`CsiVolumes`), never to a Secret. A sync tells a plugin what each of its volumes should hold,
and teaches an operator that restarted what the node holds (each value's sealed record).

The leader answers; another replica answers 503 and the plugin asks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ...api.pods import PodTask, split_key
from ...api.projection import merged, parse_csi_record
from ...api.times import utcnow
from ...platform import metrics
from ...platform.kube import status_of
from ...rules.admission import DEFAULT_FILE_MODE
from ...rules.csi import (
    MAX_BODY,
    NODE_NAME_EXTRA,
    PUBLISH_PATH,
    SYNC_PATH,
    BadRequest,
    HeldVolume,
    Published,
    Refused,
    Update,
    judge_publish,
    parse_publish,
    parse_sync,
)
from ...rules.seal import Bookkeeping
from ..audit import AuditTrail
from ..scheduler import Scheduler
from ..store import ProjectionStore
from ..tokens.callers import NotAuthenticated, RateLimiter, ReviewGate, Throttled, reviewed_identity
from ..view import ClusterView
from .bindings import BindingOwners
from .csi_volumes import CsiVolumes, Desired, Volume
from .due import BindingDue
from .reconciler import Reconciler

log = logging.getLogger(__name__)

SEEN_WAIT = 10.0  # how long a publish waits for the pod watch to have seen the pod (scheduled)
VALUE_WAIT = 30.0  # how long it waits for the value (a minting service may be slow); the kubelet retries after


class NotServing(Exception):
    """This replica does not answer plugins now (not the leader, or still taking over)."""


class PluginRefused(Exception):
    """The caller is not an agentcred node plugin; the message says why."""


@dataclass
class CsiPublishing:
    reviews: ReviewGate
    view: ClusterView
    bindings: BindingOwners
    reconciler: Reconciler
    volumes: CsiVolumes
    store: ProjectionStore
    scheduler: Scheduler
    bookkeeping: Bookkeeping
    audit: AuditTrail
    plugin_account: str  # "namespace/name" of the node plugin's ServiceAccount
    ca: Callable[[], bytes]
    # Refused tokens per client address (a plugin's, or -- for the pods' tokens it passes -- its node's).
    refusals: RateLimiter

    # -- who is asking --------------------------------------------------------------------

    async def plugin_node(self, authorization: str | None, source: str = "") -> str:
        """The node of the plugin presenting this token, or PluginRefused (Throttled when its
        address has sent too many refused tokens)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise PluginRefused("send the node plugin's ServiceAccount token as 'Authorization: Bearer'")
        status = await self.reviews.review(token.strip(), f"csi:{source}", self.refusals)
        try:
            who = reviewed_identity(status)
        except NotAuthenticated as error:
            raise PluginRefused(str(error)) from None
        if f"{who.namespace}/{who.service_account}" != self.plugin_account:
            raise PluginRefused(f"ServiceAccount {who.namespace}/{who.service_account} is not agentcred's node plugin")
        extra = (status.get("user") or {}).get("extra") or {}
        nodes = extra.get(NODE_NAME_EXTRA) if isinstance(extra, dict) else None
        if not isinstance(nodes, list) or not nodes or not isinstance(nodes[0], str) or not nodes[0]:
            raise PluginRefused("the node plugin's token is not bound to a node (nor to a pod on one)")
        return nodes[0]

    def _serving(self) -> None:
        if not self.view.leading() or not self.reconciler.loaded.is_set():
            raise NotServing("not the leader (or still taking over): ask again")

    # -- a volume published ---------------------------------------------------------------

    async def publish(self, authorization: str | None, body: bytes, source: str = "") -> Published:
        """The value for the volume the kubelet publishes; Refused (the pod gets nothing, the
        kubelet's event says why), BadRequest, PluginRefused or NotServing otherwise."""
        node = await self.plugin_node(authorization, source)
        self._serving()
        request = parse_publish(body)
        facts: dict[str, Any] = {
            "namespace": request.pod.namespace,
            "podName": request.pod.name,
            "podUID": request.pod.uid,
            "credential": request.credential,
            "node": node,
        }
        try:
            try:
                reviewed = reviewed_identity(
                    await self.reviews.review(request.pod.token, f"csi-node:{node}", self.refusals)
                )
            except NotAuthenticated as error:
                raise Refused("token-refused", f"the token the kubelet passed was not accepted: {error}") from None
            if (reviewed.namespace, reviewed.service_account) != (request.pod.namespace, request.pod.service_account):
                raise Refused("token-mismatch", "the token the kubelet passed is another ServiceAccount's")
            task = await self._task(request.pod.namespace, request.pod.name, request.pod.uid, node)
            record = self.view.credential(request.pod.namespace, request.credential)
            owns = task is not None and self.bindings.owns(task)
            judge_publish(request, node, reviewed.pod_uid, task, owns, record)
        except Refused as refused:
            metrics.denied.labels(reason=f"csi-{refused.reason}", category="unknown").inc()
            self.audit.record("deny", reason=f"csi-{refused.reason}", message=str(refused), **facts)
            raise
        assert task is not None and record is not None and record.spec is not None
        self.volumes.register(Volume(request.volume_id, node, task.key, request.credential, task.uid))
        desired = self.volumes.desired(task.key, request.credential)
        renew = frozenset({request.credential}) if desired is not None and desired.value is None else frozenset()
        await self.reconciler.reconcile(task.key, task, renew_now=renew)
        outcome = await self.volumes.first_value(task.key, request.credential, VALUE_WAIT)
        if not isinstance(outcome, Desired):
            self.volumes.unpublished(request.volume_id)
            if outcome is None:
                raise NotServing(f"no value for {request.credential} yet: ask again")
            raise Refused("not-issued", f"AgentCredential {request.credential} is not issued to this pod: {outcome}")
        assert outcome.value is not None
        return Published(
            outcome.value,
            outcome.expires_at,
            outcome.fingerprint,
            record.spec.projection.file_mode or DEFAULT_FILE_MODE,
            self.ca().decode(),
            outcome.record,
        )

    async def _task(self, namespace: str, name: str, uid: str, node: str) -> PodTask | None:
        """The admitted pod of that name and UID, once the pod watch has seen it on `node`
        (the kubelet may publish a moment before the watch delivers the binding)."""
        deadline = asyncio.get_running_loop().time() + SEEN_WAIT
        while True:
            task = self.view.pod_by_name(namespace, name)
            if task is not None and task.uid == uid and task.node == node:
                return task
            if asyncio.get_running_loop().time() >= deadline:
                return task if task is not None and task.uid == uid else None
            await asyncio.sleep(0.1)

    # -- a node's sync --------------------------------------------------------------------

    async def sync(self, authorization: str | None, body: bytes, source: str = "") -> dict[str, Any]:
        node = await self.plugin_node(authorization, source)
        self._serving()
        request = parse_sync(body)
        self.volumes.arm(node)
        forget = [gone.volume_id for gone in request.unpublished]
        for gone in request.unpublished:
            self._unpublished(node, gone)
        held = [(volume, holding) for volume in request.volumes if (holding := self._held(node, volume))]
        updates = self._updates(node, request.volumes, held)
        if not updates and not forget and request.wait:
            await self.volumes.changed(node, request.wait)
            updates = self._updates(node, request.volumes, held)
        return {"updates": [update.to_json() for update in updates], "forget": forget}

    def _updates(
        self, node: str, volumes: tuple[HeldVolume, ...], held: list[tuple[HeldVolume, tuple[str, str]]]
    ) -> list[Update]:
        known = {volume.volume_id for volume, _ in held}
        # A record that does not verify was not written by us: the file goes.
        updates = [Update(v.volume_id, revoked="unreadable-record") for v in volumes if v.volume_id not in known]
        found, lost = self.volumes.updates(held)
        for key, credential in lost:  # held, but its bytes are no longer here: a fresh value
            asyncio.create_task(self.reconciler.reconcile(key, renew_now=frozenset({credential})))
        return updates + found

    def _held(self, node: str, held: HeldVolume) -> tuple[str, str] | None:
        """A volume a plugin reports: registered, and its value's bookkeeping learnt if this
        replica did not know it (it restarted, or took over)."""
        state = parse_csi_record(held.record, self.bookkeeping.verify)
        if state is None or self._elsewhere(node, held.volume_id, state.namespace, state.pod_name, state.pod_uid):
            return None
        (credential,) = state.values
        self.volumes.register(Volume(held.volume_id, node, state.key, credential, state.pod_uid))
        known = self.store.get(state.key)
        if known is None or credential not in known.values:
            if held.fingerprint:
                self.store.put(merged(known, state))
                self.volumes.holds(state.key, credential, held.fingerprint)
                self.scheduler.schedule(BindingDue(state.key), utcnow())
        return (state.key, credential)

    def _elsewhere(self, node: str, volume_id: str, namespace: str = "", pod: str = "", pod_uid: str = "") -> bool:
        """Is this volume (or the pod its record names) another node's? A plugin speaks for its
        own node only: a compromised node naming another node's volume -- its id is the
        kubelet's, worked out from the pod's UID and the volume's name -- must neither make the
        operator forget it (its revocation would wait for that node's next sync) nor claim it
        (and be sent its renewed value)."""
        volume = self.volumes.volume(volume_id)
        task = self.view.pod_by_name(namespace, pod) if pod else None
        owner = volume.node if volume is not None else task.node if task is not None and task.uid == pod_uid else ""
        if not owner or owner == node:
            return False
        message = f"the node plugin of {node} named volume {volume_id} of node {owner}"
        self.audit.record("deny", reason="csi-wrong-node", message=message, node=node, volumeId=volume_id)
        return True

    def _unpublished(self, node: str, held: HeldVolume) -> None:
        """The kubelet took a volume away (its pod is ending): the value is revoked unless it
        already was -- by the pod's end, seen by the watch, or the volume's own record."""
        if self._elsewhere(node, held.volume_id):
            return
        self.volumes.unpublished(held.volume_id)
        state = parse_csi_record(held.record, self.bookkeeping.verify)
        if state is None or self._elsewhere(node, held.volume_id, state.namespace, state.pod_name, state.pod_uid):
            return
        (credential,) = state.values
        known = self.store.get(state.key)
        live = known.values.get(credential) if known is not None else None
        if live is None and held.fingerprint:
            # Not known here (this replica restarted meanwhile): learnt, so its revocation is planned.
            self.store.put(merged(known, state))
        if self.store.get(state.key) is not None:
            self.scheduler.schedule(BindingDue(state.key), utcnow())
        namespace, _ = split_key(state.key)
        log.info("CSI volume of %s/%s unpublished on %s", namespace, state.pod_name, node)


CSI_PUBLISHING = web.AppKey("agentcred-csi-publishing", CsiPublishing)


def add_routes(app: web.Application) -> None:
    """Registered by `endpoints.build_app`; answers 404 until the operator sets CSI_PUBLISHING."""
    app.router.add_post(PUBLISH_PATH, _publish)
    app.router.add_post(SYNC_PATH, _sync)


async def _read(request: web.Request) -> bytes:
    body = await request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise BadRequest(f"the body is larger than {MAX_BODY} bytes")
    return body


async def _publish(request: web.Request) -> web.Response:
    return await _answer(request, lambda part, body: _published(part, request, body))


async def _published(part: CsiPublishing, request: web.Request, body: bytes) -> dict[str, Any]:
    return (await part.publish(request.headers.get("Authorization"), body, request.remote or "")).to_json()


async def _sync(request: web.Request) -> web.Response:
    return await _answer(
        request, lambda part, body: part.sync(request.headers.get("Authorization"), body, request.remote or "")
    )


async def _answer(
    request: web.Request, act: Callable[[CsiPublishing, bytes], Awaitable[dict[str, Any]]]
) -> web.Response:
    part = request.app.get(CSI_PUBLISHING)
    if part is None:
        raise web.HTTPNotFound()
    headers = {"Cache-Control": "no-store"}
    try:
        return web.json_response(await act(part, await _read(request)), headers=headers)
    except Refused as refused:
        return web.json_response({"reason": refused.reason, "message": str(refused)}, status=403, headers=headers)
    except PluginRefused as refused:
        return web.json_response({"reason": "not-a-plugin", "message": str(refused)}, status=401, headers=headers)
    except BadRequest as bad:
        return web.json_response({"reason": "bad-request", "message": str(bad)}, status=400, headers=headers)
    except Throttled:
        headers["Retry-After"] = "1"
        message = "too many refused tokens from this address: slow down"
        return web.json_response({"reason": "throttled", "message": message}, status=429, headers=headers)
    except NotServing as busy:
        headers["Retry-After"] = "1"
        return web.json_response({"reason": "unavailable", "message": str(busy)}, status=503, headers=headers)
    except Exception as error:  # the API server unreachable for a review, say
        log.warning("answering a CSI plugin failed (%s)", status_of(error) or error)
        headers["Retry-After"] = "1"
        return web.json_response({"reason": "unavailable", "message": "try again"}, status=503, headers=headers)
