"""The Kopf registrations: each handler hands an event to a part of the Operator.

`registry_for(operator)` builds a registry whose handlers close over one Operator (no module
state). Kopf's indices keep credentials, policies, namespaces and shared Secrets in memory,
and Kopf starts handlers only once every index has listed; handlers are `on.event` (nothing
persisted on objects that are not ours). Pods are followed by the operator's own list and
watch (runtime.pod_watch, for its cost per pod), which hands their events to `pod_event` here;
the admission webhook is the operator's own endpoint too (runtime.admission_webhook).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from pydantic import ValidationError

from ..api import labels, model
from ..api.policy_model import AgentCredentialPolicySpec, parse_policy_spec
from ..rules.credentials import CredentialRecord, SharedSecret, credential_record, shared_secret
from ..rules.verdicts import describe_validation_error
from .cluster_view import Indices, first
from .operator import Operator

log = logging.getLogger(__name__)

SHARED_FILTER = {labels.SHARED_LABEL: "true"}


def registry_for(operator: Operator) -> kopf.OperatorRegistry:
    # Handlers are closures, so each gets an explicit id: Kopf hands indices to handlers by
    # their index's id, and names progress and diff-base records by handler id.
    registry = kopf.OperatorRegistry()

    # -- start and stop ---------------------------------------------------------------

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The official client's loader, whatever else is installed: one way to read
        # credentials, and its temporary certificate files are removed at exit.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(id="startup", registry=registry)  # type: ignore[arg-type]
    async def startup(
        settings: kopf.OperatorSettings,
        credential_index: kopf.Index[Any, Any],
        policy_index: kopf.Index[Any, Any],
        namespace_index: kopf.Index[Any, Any],
        shared_secret_index: kopf.Index[Any, Any],
        **_: Any,
    ) -> None:
        await operator.start(settings, Indices(credential_index, policy_index, namespace_index, shared_secret_index))

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        await operator.stop()

    # -- indices (async, though they do not await: Kopf runs sync handlers on a thread
    # pool, a thread hop per event for a few microseconds of work) ----------------------

    @kopf.index(model.GROUP, model.VERSION, model.PLURAL, id="credential_index", registry=registry)
    async def credential_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], CredentialRecord]:
        record = credential_record(dict(body))
        return {record.key: record}

    @kopf.index(model.GROUP, model.VERSION, model.POLICY_PLURAL, id="policy_index", registry=registry)
    async def policy_index(body: kopf.Body, **_: Any) -> dict[str, AgentCredentialPolicySpec] | None:
        try:
            return {body.metadata.name: parse_policy_spec(dict(body.get("spec") or {}))}
        except ValidationError as error:  # the API server's schema makes this rare; it allows nothing
            log.warning(
                "AgentCredentialPolicy %s is invalid and allows nothing: %s",
                body.metadata.name,
                describe_validation_error(error),
            )
            return None

    @kopf.index("v1", "namespaces", id="namespace_index", registry=registry)
    async def namespace_index(body: kopf.Body, **_: Any) -> dict[str, dict[str, str]] | None:
        if not operator.config.watches(body.metadata.name):
            return None  # namespace-scoped: only the watched namespaces' labels matter
        return {body.metadata.name: dict(body.metadata.labels or {})}

    @kopf.index("v1", "secrets", labels=SHARED_FILTER, id="shared_secret_index", registry=registry)
    async def shared_secret_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], SharedSecret]:
        # Metadata and key names only: the value is read when it is copied, never kept here.
        return {(body.metadata.namespace or "", body.metadata.name): shared_secret(dict(body))}

    @kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", id="crd_event", registry=registry)
    async def crd_event(**_: Any) -> None:
        # Only our CRD is watched (a field selector). Kopf calls no handler before every
        # index has listed, so its first event means the memory is complete.
        operator.indices_listed()

    # -- AgentCredentials and what surrounds them -------------------------------------------

    @kopf.on.event(model.GROUP, model.VERSION, model.PLURAL, id="credential_event", registry=registry)  # type: ignore[arg-type]
    async def credential_event(type: str, body: kopf.Body, credential_index: kopf.Index[Any, Any], **_: Any) -> None:
        if type == "DELETED":
            return
        # The index parsed this very event's body a moment ago.
        record = first(credential_index, (body.metadata.namespace, body.metadata.name)) or credential_record(dict(body))
        await operator.running().lifecycle.seen(record, body.metadata.annotations)

    @kopf.on.event(model.GROUP, model.VERSION, model.POLICY_PLURAL, id="policy_event", registry=registry)
    async def policy_event(**_: Any) -> None:
        await _surroundings_changed(operator, None)

    @kopf.on.event("v1", "namespaces", id="namespace_event", registry=registry)
    async def namespace_event(body: kopf.Body, **_: Any) -> None:
        await _surroundings_changed(operator, body.metadata.name)

    @kopf.on.event("v1", "secrets", labels=SHARED_FILTER, id="shared_secret_event", registry=registry)
    async def shared_secret_event(body: kopf.Body, **_: Any) -> None:
        await _surroundings_changed(operator, body.metadata.namespace)

    return registry


async def _surroundings_changed(operator: Operator, namespace: str | None) -> None:
    """A policy (every namespace), a namespace's labels or a shared Secret (one namespace) changed."""
    parts = operator.running()
    await parts.lifecycle.surroundings_changed(parts.view.credentials(namespace))
