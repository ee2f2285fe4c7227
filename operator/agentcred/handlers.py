"""Kopf registrations. Each handler translates an event into a call on the engine or a
pure function; importing this module registers them in Kopf's default registry.

Pods and Secrets use `on.event` (no progress annotations written to objects that are not
ours, nothing persisted per event); AgentCredentials use `on.delete` for the finalizer.
Indices keep credentials and pods in memory for the webhook and the engine, and Kopf
starts handlers only once every index has listed its objects, which makes the start-up
sweep of managed Secrets see a complete picture of live pods.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import shutil
from typing import Any

import kopf

from . import admission, audit, labels, metrics, model, seal
from .bootstrap import RevocationStore, load_keyring, maintain_keyring_forever
from pydantic import ValidationError

from .credentials import CredentialRecord, Gatekeeper, SharedSecret, credential_record, shared_secret
from .evaluation import describe_validation_error
from .model import AgentCredentialPolicySpec, parse_policy_spec
from .endpoints import build_app, serve
from .engine import Engine, EngineSettings, NotLeader
from .events import EventRecorder
from .exchange import ExchangeContext, RateLimiter, ReviewGate
from .health import Health
from .health import serve as serve_health
from .kube import Kube, load_configuration
from .leader import Leadership
from .minting import MintingClient
from .projection import PodTask, parse_projection, pod_task
from .revocations import RevocationList
from .settings import OperatorConfig, configure_kopf
from .signing import KeyRing
from .webhook import (
    HANDLER_ID,
    CertificateMonitor,
    configuration,
    pod_guard,
    private_directory,
    shared_serving_certificate,
)

log = logging.getLogger(__name__)

CONFIG = OperatorConfig.from_env()
POD_FILTER = {labels.INJECT_LABEL: "true"}
SHARED_FILTER = {labels.SHARED_LABEL: "true"}


def configure(config: OperatorConfig) -> None:
    global CONFIG
    CONFIG = config


def _first(index: kopf.Index, key: Any) -> Any:
    for value in index.get(key, ()):
        return value
    return None


# -- start and stop ------------------------------------------------------------------


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # The official client's loader, whatever else is installed: one way to read credentials,
    # and its temporary certificate files are removed when the operator exits.
    return kopf.login_via_client(**kwargs)


async def publish_ca(kube: Kube, ca_pem: bytes) -> None:
    """Tell the API server which CA to trust for the webhook, as configured."""
    if CONFIG.webhook_config == "manage":
        service = None if CONFIG.webhook_url else (CONFIG.service, CONFIG.namespace, 443)
        await kube.apply_cluster_object("mutatingwebhookconfigurations", configuration(
            ca_pem, url=CONFIG.webhook_url, service=service, operator_namespace=CONFIG.namespace,
            name=CONFIG.webhook_configuration))
        for resources, body in pod_guard(CONFIG.webhook_configuration):
            await kube.apply_cluster_object(resources, body)
    elif CONFIG.webhook_config == "inject-ca":
        await kube.inject_webhook_ca(CONFIG.webhook_configuration, ca_pem)


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    credential_index: kopf.Index,
    pod_index: kopf.Index,
    policy_index: kopf.Index,
    namespace_index: kopf.Index,
    shared_secret_index: kopf.Index,
    logger: logging.Logger,
    **_: Any,
) -> None:
    configure_kopf(settings, CONFIG)
    audit.configure(CONFIG.audit_log)
    kube = Kube(load_configuration())
    keyring = await load_keyring(kube, CONFIG.namespace, CONFIG.names.keyring)
    revocations = RevocationList(CONFIG.revocation_shards)
    revocation_store = RevocationStore(kube, CONFIG.namespace, revocations, CONFIG.names)
    await revocation_store.reload()

    certificate = await shared_serving_certificate(kube, CONFIG.namespace, CONFIG.service,
                                                   CONFIG.names.serving_certificate)
    memo.tls_directory = private_directory()
    certfile, keyfile = certificate.write(memo.tls_directory)
    settings.admission.server = kopf.WebhookServer(
        addr=CONFIG.webhook_address, port=CONFIG.webhook_port, certfile=str(certfile), pkeyfile=str(keyfile)
    )
    await publish_ca(kube, certificate.ca_pem)

    events = EventRecorder(kube)
    gate = Gatekeeper(
        policies=lambda: {name: _first(policy_index, name) for name in list(policy_index)},
        namespace_labels=lambda namespace: _first(namespace_index, namespace),
        shared=lambda namespace, name: _first(shared_secret_index, (namespace, name)),
    )
    memo.gate = gate
    engine = Engine(
        kube,
        keyring,
        EngineSettings(issuer=CONFIG.effective_issuer, status_interval=CONFIG.status_interval,
                       handover_window=2 * (CONFIG.lease_duration + CONFIG.lease_renew)),
        credentials=lambda namespace, name: gate.judged(_first(credential_index, (namespace, name))),
        pods=lambda binding: _first(pod_index, binding),
        events=events,
        revocations=revocations,
        minter=MintingClient(),
    )
    memo.engine = engine

    def set_keyring(ring: KeyRing) -> None:
        engine.keyring = ring

    exchange_context = ExchangeContext(
        reviews=ReviewGate(lambda token: kube.review_token(token, [labels.SERVICE_ACCOUNT_AUDIENCE])),
        pod_by_name=lambda namespace, name: _first(pod_index, (namespace, name)),
        credential=engine.credential,
        revocations=revocations,
        keyring=lambda: engine.keyring,
        issuer=CONFIG.effective_issuer,
        limiter=RateLimiter(rate=CONFIG.exchange_rate, burst=CONFIG.exchange_burst),
        by_source=RateLimiter(rate=CONFIG.source_rate, burst=CONFIG.source_burst),
    )
    app = build_app(issuer=CONFIG.effective_issuer, keyring=lambda: engine.keyring, revocations=revocations,
                    exchange_context=exchange_context)
    memo.api_runner = await serve(app, CONFIG.api_address, CONFIG.api_port, certfile, keyfile)
    rotation = dt.timedelta(days=CONFIG.key_rotation_days) if CONFIG.key_rotation_days > 0 else None
    memo.health = Health(ports=(CONFIG.webhook_port, CONFIG.api_port))
    memo.health_runner = await serve_health(memo.health, CONFIG.health_address, CONFIG.health_port)
    async def take_over() -> None:
        # Only once every index has listed: planning against a half-listed index would
        # take live pods' Secrets for orphans.
        await engine.warm.wait()
        states = [s for s in map(parse_projection, await kube.list_metadata(
            "/api/v1/secrets", f"{labels.MANAGED_LABEL}=true")) if s is not None]
        await engine.resync((key for key in list(pod_index) if isinstance(key, str)), states)

    memo.take_over = take_over
    memo.health.warm = engine.warm
    loops = []
    if CONFIG.leader_election:
        leadership = Leadership(kube, CONFIG.namespace, on_elected=take_over, lease=CONFIG.names.lease,
                                duration=CONFIG.lease_duration, renew=CONFIG.lease_renew)
        engine.leading = lambda: leadership.is_leader
        memo.leadership = leadership
        loops.append(asyncio.create_task(leadership.run(), name="leader election"))
    certificates = CertificateMonitor(kube, CONFIG.namespace, CONFIG.service, CONFIG.names.serving_certificate,
                                      certificate, engine.leading,
                                      lambda ca_pem: publish_ca(kube, ca_pem))
    memo.health.problems.append(lambda: certificates.problem)
    memo.health.not_ready.append(revocation_store.problem)
    memo.tasks = memo.health.loops = [
        *loops,
        asyncio.create_task(certificates.run(), name="serving certificate"),
        asyncio.create_task(
            maintain_keyring_forever(kube, CONFIG.namespace, CONFIG.names.keyring, set_keyring, rotation,
                                     engine.leading), name="key ring"
        ),
        asyncio.create_task(engine.scheduler.run(), name="expiry scheduler"),
        asyncio.create_task(
            engine.flush_status_forever(lambda: (_first(credential_index, k) for k in list(credential_index))),
            name="status writer",
        ),
        asyncio.create_task(events.run(), name="event poster"),
        asyncio.create_task(revocation_store.run(engine.leading), name="revocation list"),
    ]
    logger.info("agentcred ready: issuer %s, %d signing keys", CONFIG.effective_issuer, len(keyring.keys))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in getattr(memo, "tasks", []):
        task.cancel()
    if getattr(memo, "leadership", None) is not None:
        await memo.leadership.release()
    for runner in (getattr(memo, "api_runner", None), getattr(memo, "health_runner", None)):
        if runner is not None:
            await runner.cleanup()
    engine: Engine | None = getattr(memo, "engine", None)
    if engine is not None:
        await engine.flush_status()
        await engine.minter.close()
        await engine.kube.close()
    if getattr(memo, "tls_directory", None) is not None:
        shutil.rmtree(memo.tls_directory, ignore_errors=True)


# -- indices: what the webhook and the engine look up without an API call -------------
# (async, though they do not await: Kopf runs sync handlers on a thread pool, which would
# cost a thread hop per event for a few microseconds of work.)


@kopf.index(model.GROUP, model.VERSION, model.PLURAL)
async def credential_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], CredentialRecord]:
    record = credential_record(dict(body))
    return {record.key: record}


def admitted_task(body: kopf.Body, engine: Engine, deleted: bool = False) -> PodTask | None:
    """The pod's task if the webhook admitted it as it stands (its seal holds), else None."""
    task = pod_task(dict(body), deleted=deleted)
    return task if task is not None and seal.admitted(task, engine.keyring.mac_keys("admission")) else None


@kopf.index("v1", "pods", labels=POD_FILTER)
async def pod_index(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str | tuple[str, str], PodTask] | None:
    # Two keys per pod in one index (one handler call per event, not two): the projection
    # key "namespace/binding" for the engine, (namespace, name) for intent exchange.
    task = admitted_task(body, memo.engine)
    return {task.key: task, (task.namespace, task.name): task} if task else None


@kopf.index(model.GROUP, model.VERSION, model.POLICY_PLURAL)
async def policy_index(body: kopf.Body, **_: Any) -> dict[str, AgentCredentialPolicySpec] | None:
    try:
        return {body.metadata.name: parse_policy_spec(dict(body.get("spec") or {}))}
    except ValidationError as error:  # the API server's schema makes this rare; such a policy allows nothing
        log.warning("AgentCredentialPolicy %s is invalid and allows nothing: %s", body.metadata.name,
                    describe_validation_error(error))
        return None


@kopf.index("v1", "namespaces")
async def namespace_index(body: kopf.Body, **_: Any) -> dict[str, dict[str, str]]:
    return {body.metadata.name: dict(body.metadata.labels or {})}


@kopf.index("v1", "secrets", labels=SHARED_FILTER)
async def shared_secret_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], SharedSecret]:
    # Metadata and key names only: the value is read when it is copied, never kept here.
    return {(body.metadata.namespace, body.metadata.name): shared_secret(dict(body))}


# -- what surrounds a credential: re-judged when it changes -----------------------------


def _records(credential_index: kopf.Index, namespace: str | None = None) -> list[CredentialRecord]:
    found = (_first(credential_index, key) for key in list(credential_index)
             if namespace is None or key[0] == namespace)
    return [record for record in found if record is not None]


@kopf.on.event(model.GROUP, model.VERSION, model.POLICY_PLURAL)
async def policy_event(memo: kopf.Memo, credential_index: kopf.Index, **_: Any) -> None:
    await memo.engine.reevaluate(_records(credential_index))


@kopf.on.event("v1", "namespaces")
async def namespace_event(body: kopf.Body, memo: kopf.Memo, credential_index: kopf.Index, **_: Any) -> None:
    await memo.engine.reevaluate(_records(credential_index, body.metadata.name))


@kopf.on.event("v1", "secrets", labels=SHARED_FILTER)
async def shared_secret_event(body: kopf.Body, memo: kopf.Memo, credential_index: kopf.Index, **_: Any) -> None:
    await memo.engine.reevaluate(_records(credential_index, body.metadata.namespace))


# -- the admission webhook -----------------------------------------------------------


@kopf.on.mutate("v1", "pods", id=HANDLER_ID, labels=POD_FILTER, operations=["CREATE"])
async def inject(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    with metrics.webhook_latency.time():
        _inject(body, patch, memo.engine)


def _inject(body: kopf.Body, patch: kopf.Patch, engine: Engine) -> None:
    namespace = body.metadata.namespace or ""
    keyring = engine.keyring
    try:
        records = admission.admit(dict(body), namespace, lambda name: engine.credential(namespace, name), keyring)
    except admission.Refusal as refusal:
        audit.record("deny", namespace=namespace, reason="AdmissionRefused", message=str(refusal),
                     podName=body.metadata.name or body.metadata.get("generateName"),
                     serviceAccount=body.spec.get("serviceAccountName") or "default")
        raise kopf.AdmissionError(str(refusal), code=403)
    if records is not None:
        # Kopf hands this function its own copy of the pod and diffs it into a JSON patch.
        patch.fns.append(lambda pod: admission.apply(pod, namespace, records, keyring))


# -- pods and their Secrets ----------------------------------------------------------


@kopf.on.event("v1", "pods", labels=POD_FILTER)
async def pod_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    engine: Engine = memo.engine
    task = admitted_task(body, engine, deleted=type == "DELETED")
    if task is None:
        found = pod_task(dict(body))
        if type != "DELETED" and (found is None or not seal.foreign(found, engine.keyring.mac_keys("admission"))):
            engine.flag_unadmitted(dict(body))
        return
    if engine.leading():
        if type == "DELETED" and not body.metadata.get("deletionTimestamp"):
            # Either deleted at once, or it lost the opt-in label (the watch is label-selected):
            # only the API server can tell which.
            task = await engine.still_there(task)
        await engine.reconcile(task.key, task)
    elif task.end_reason:
        engine.note_ended(task)


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions")
async def crd_event(type: str, memo: kopf.Memo, **_: Any) -> None:
    # Only our CRD is watched (a field selector). Kopf calls no handler before every index
    # has listed, so its first event means the memory is complete: ready, and, for a lone
    # replica, time for the start-up sweep (with leader election, the election does it).
    engine: Engine = memo.engine
    if not engine.warm.is_set():
        engine.warm.set()
        if not CONFIG.leader_election:
            memo.sweep = asyncio.create_task(memo.take_over(), name="start-up sweep")


# -- AgentCredentials ----------------------------------------------------------------


@kopf.on.event(model.GROUP, model.VERSION, model.PLURAL)
async def credential_event(
    type: str, body: kopf.Body, memo: kopf.Memo, credential_index: kopf.Index, **_: Any
) -> None:
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        return
    engine: Engine = memo.engine
    # The index parsed this very event's body a moment ago.
    record = _first(credential_index, (body.metadata.namespace, body.metadata.name)) or credential_record(dict(body))
    await engine.credential_changed(record)
    for annotation, act in ((labels.REVOKE_ANNOTATION, engine.emergency_revoke),
                            (labels.RENEW_ANNOTATION, engine.renew_now)):
        request = body.metadata.annotations.get(annotation)
        if not request:
            continue
        try:
            parsed = json.loads(request)
        except ValueError:
            log.warning("ignoring malformed %s annotation on %s/%s", annotation, record.namespace, record.name)
            continue
        if isinstance(parsed, dict):
            await act(record, parsed)


@kopf.on.delete(model.GROUP, model.VERSION, model.PLURAL)
async def credential_deleted(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    try:
        count = await memo.engine.credential_deleted(credential_record(dict(body)))
    except NotLeader:
        raise kopf.TemporaryError("waiting for the leader to revoke this credential's projections", delay=5)
    logger.info("revoked %d projection(s) of %s before deletion", count, body.metadata.name)
