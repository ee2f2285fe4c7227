"""The admission webhook's endpoint: an AdmissionReview in, the decision and its JSON patch out.

Served by the operator on aiohttp, not by Kopf's admission machinery: Kopf builds a cause, a
memo and handler progress per request and diffs the whole pod (before and after the mutation)
into a JSON patch, several times the CPU of the decision itself, while every pod creation
waits for the answer. The decision is `rules.admission`'s; the patch is the one the mutation
makes (`rules.admission.admission_patch`). Only what the configuration sends is handled: a
pod's CREATE, carrying the opt-in label; any other request is allowed unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from ...api import labels
from ...api.webhook_configuration import HANDLER_ID
from ...platform import metrics
from ...platform.keys import KeyRing
from ...rules import admission
from ..audit import AuditTrail
from ..view import ClusterView

log = logging.getLogger(__name__)


class AdmissionWebhook:
    def __init__(
        self,
        view: ClusterView,
        keyring: Callable[[], KeyRing],
        audit: AuditTrail,
        *,
        issuer: str,
        ready: asyncio.Event,
        unwatched: Callable[[str], str | None] = lambda namespace: None,
        secret_delivery: bool = True,
    ) -> None:
        self.secret_delivery = secret_delivery  # false: this installation writes no Secrets (csi and gateway only)
        self.view, self.keyring, self.audit, self.issuer = view, keyring, audit, issuer
        self.ready = ready  # the credentials, policies and namespaces are in memory
        self.unwatched = unwatched  # why a namespace is outside the operator's (namespace-scoped) reach

    def review(self, request: dict[str, Any]) -> dict[str, Any]:
        """The `response` of an AdmissionReview for its `request` (uid, allowed, patch or status)."""
        response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
        pod = request.get("object")
        if not isinstance(pod, dict) or not _handled(request, pod):
            return response
        with metrics.webhook_latency.time():
            try:
                patch = self.mutation(pod)
            except admission.Refusal as refusal:
                return {**response, "allowed": False, "status": {"message": str(refusal), "code": 403}}
            except Exception as error:
                log.exception("admission failed")
                return {**response, "allowed": False, "status": {"message": str(error) or repr(error), "code": 500}}
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(orjson.dumps(patch)).decode()
        return response

    def mutation(self, pod: dict[str, Any]) -> list[dict[str, Any]]:
        """The JSON patch admitting `pod` ([] if this webhook admitted it already), or Refusal."""
        meta = _mapping(pod.get("metadata"))
        namespace = str(meta.get("namespace") or "")
        keyring = self.keyring()
        try:
            if (outside := self.unwatched(namespace)) is not None:
                raise admission.Refusal(outside)
            records = admission.admit(
                pod,
                namespace,
                lambda name: self.view.credential(namespace, name),
                keyring,
                # a namespace's AgentCredentials, for "did you mean" in a refusal
                known=lambda: [record.name for record in self.view.credentials(namespace)],
            )
            if records and not self.secret_delivery:
                admission.without_secret_delivery(records)
        except admission.Refusal as refusal:
            self.audit.record(
                "deny",
                namespace=namespace,
                reason="AdmissionRefused",
                category=refusal.category,
                message=str(refusal),
                podName=meta.get("name") or meta.get("generateName"),
                serviceAccount=_mapping(pod.get("spec")).get("serviceAccountName") or "default",
            )
            raise
        if records is None:
            return []
        return admission.admission_patch(pod, namespace, records, keyring, issuer=self.issuer)

    def app(self) -> web.Application:
        async def serve(request: web.Request) -> web.Response:
            if not self.ready.is_set():
                raise web.HTTPServiceUnavailable(reason="listing AgentCredentials and policies")
            try:
                data = orjson.loads(await request.read())
            except (ValueError, RecursionError) as error:  # nested too deep to parse is malformed too
                raise web.HTTPBadRequest(reason=f"not JSON: {error}") from None
            if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
                raise web.HTTPBadRequest(reason="not an AdmissionReview with a request")
            if not isinstance(data["request"].get("object"), dict):
                raise web.HTTPBadRequest(reason="the AdmissionReview has no object")
            answer = {
                "apiVersion": data.get("apiVersion", "admission.k8s.io/v1"),
                "kind": data.get("kind", "AdmissionReview"),
                "response": self.review(data["request"]),
            }
            return web.Response(body=orjson.dumps(answer), content_type="application/json")

        app = web.Application()
        app.router.add_post(f"/{HANDLER_ID}", serve)
        return app


def _handled(request: dict[str, Any], pod: dict[str, Any]) -> bool:
    """A pod's CREATE (no subresource), carrying the opt-in label: what the configuration
    sends. A pod whose metadata is malformed is handled (and refused as malformed)."""
    resource = _mapping(request.get("resource"))
    if (resource.get("group"), resource.get("resource")) != ("", "pods") or request.get("subResource"):
        return False
    if request.get("operation") != "CREATE":
        return False
    meta = pod.get("metadata")
    tags = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(tags, dict | None):
        return True
    return (tags or {}).get(labels.INJECT_LABEL) == "true"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
