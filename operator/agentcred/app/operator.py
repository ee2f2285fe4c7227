"""The composition root: the Operator's parts, built in one function, started and stopped.

`build_parts` wires every runtime part from the config, the Kubernetes client, Kopf's indices
and the shared state loaded at start (key ring, revocation list, serving certificate) into
one frozen `Parts`. Every long-running part has one shape (`runtime.loops.Loop`: a name,
whether it needs the lead, `run()`); `Loops` starts them, and the election starts and stops
the leader-only ones. `Operator.start` runs once Kopf has its indices (before any watch event
is handled): it loads the shared state, builds the parts, publishes the CA, serves the HTTPS,
webhook and health ports and starts the loops. The Kopf handlers (`app.handlers`) only hand
events to the parts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import kopf
from aiohttp import web

from ..api import labels
from ..platform.fingerprints import Fingerprints
from ..platform.keys import KeyRing
from ..platform.kube import Kube, load_configuration
from ..platform.proofs import ProofChecker
from ..platform.revocations import RevocationList
from ..rules.leaks import parse_reporters
from ..rules.seal import Bookkeeping
from ..runtime.audit import AuditTrail
from ..runtime.events import EventRecorder
from ..runtime.gateway.forward_auth import FORWARD_AUTH
from ..runtime.gateway.service import GatewayService
from ..runtime.gateway.upstream import HandedValues, Upstream, UpstreamSecrets
from ..runtime.leaks.intake import LEAK_INTAKE, LeakIntake
from ..runtime.leaks.response import LeakResponder
from ..runtime.leaks.tracer import Tracer
from ..runtime.loops import LoopOf, Loops
from ..runtime.projection.bars import Bars
from ..runtime.projection.bindings import BindingOwners
from ..runtime.projection.credential_lifecycle import CredentialLifecycle
from ..runtime.projection.csi_publishing import CSI_PUBLISHING, CsiPublishing
from ..runtime.projection.csi_volumes import CsiVolumes
from ..runtime.projection.due import tenant_of
from ..runtime.projection.due_work import DueWork
from ..runtime.projection.handover import Handover, TakeOver
from ..runtime.projection.pod_checks import PodChecks
from ..runtime.projection.pod_events import PodEvents
from ..runtime.projection.pod_watch import PodIndex, PodWatch
from ..runtime.projection.reconciler import Reconciler
from ..runtime.projection.revoke_renew import Requests
from ..runtime.projection.revoker import Revoker
from ..runtime.replicas.ca_bundle import CaBundle, WebhookTarget
from ..runtime.replicas.keyring import SharedKeyRing, load_keyring
from ..runtime.replicas.leader import Leadership
from ..runtime.replicas.revocation_store import RevocationStore
from ..runtime.replicas.serving_certificate import (
    CertificateMonitor,
    ServingCertificate,
    private_directory,
    shared_serving_certificate,
)
from ..runtime.scheduler import Scheduler
from ..runtime.serving.admission_webhook import AdmissionWebhook
from ..runtime.serving.endpoints import build_app, serve
from ..runtime.serving.health import Health
from ..runtime.serving.health import serve as serve_health
from ..runtime.status.minting_health import MintingHealth
from ..runtime.status.status_writer import StatusWriter
from ..runtime.status.statusbook import StatusBook
from ..runtime.store import ProjectionStore
from ..runtime.tokens.callers import RateLimiter, ReviewGate
from ..runtime.tokens.pod_keys import PodKeys
from ..runtime.tokens.token_service import TokenService
from ..sources.base import Sources
from ..sources.jwt import JwtSource
from ..sources.minting_service import MintingServiceSource
from ..sources.static import StaticSource
from .cluster_view import IndexedCluster, Indices, first
from .config import OperatorConfig, configure_kopf

if TYPE_CHECKING:
    from grpc.aio import Server as ExtAuthzServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shared:
    """What every replica loads from the cluster before any part is built."""

    keyring: KeyRing
    revocations: RevocationList
    revocation_store: RevocationStore
    certificate: ServingCertificate


@dataclass(frozen=True)
class Parts:
    """Every part of one operator, named and typed in one place."""

    kube: Kube
    audit: AuditTrail
    view: IndexedCluster
    keyring: SharedKeyRing
    pods: PodWatch
    pod_events: PodEvents
    reconciler: Reconciler
    lifecycle: CredentialLifecycle
    take_over: TakeOver
    status: StatusWriter
    minting: MintingServiceSource
    minting_health: MintingHealth
    ca_bundle: CaBundle
    certificates: CertificateMonitor
    tokens: TokenService
    csi: CsiPublishing
    gateway: GatewayService
    leak_intake: LeakIntake
    webhook: AdmissionWebhook
    health: Health
    leadership: Leadership | None
    loops: Loops


def build_parts(
    config: OperatorConfig, kube: Kube, indices: Indices, shared: Shared, warm: asyncio.Event, indexed: asyncio.Event
) -> Parts:
    """Wire the runtime. `warm`: the indices and the pods have listed; `indexed`: the indices
    have (the webhook answers from then on). Three references run ahead of their part's
    construction -- the scheduler's due work, the pod watch's handlers and the health checks'
    re-judging -- as closures over locals assigned below, never as half-built objects."""
    audit = AuditTrail(config.audit_log)
    revocations = shared.revocations
    leadership: Leadership | None = None

    def leading() -> bool:
        return leadership is None or leadership.is_leader

    rotation = dt.timedelta(days=config.key_rotation_days) if config.key_rotation_days > 0 else None
    keyring = SharedKeyRing(kube, config.namespace, config.names.keyring, shared.keyring, rotation, leading)

    events = EventRecorder(kube)
    book = StatusBook()
    store = ProjectionStore()
    bindings = BindingOwners(store)  # fed by the pod watch, at every replica
    pod_index = PodIndex()
    fingerprints = Fingerprints(keyring)
    jwt = JwtSource(keyring, config.effective_issuer)
    minting = MintingServiceSource(
        fingerprints,
        on_revoke_failure=lambda record, message: events.post(
            record.owner_ref, "Warning", "ServiceRevokeFailed", message
        ),
    )
    static = StaticSource(kube.find_secret, fingerprints, book.marks, book.rotated)
    sources = Sources(jwt, static, minting)

    view = IndexedCluster(
        indices, pod_index, bindings, leading, source_health=lambda ns, name: minting_health.problem(ns, name)
    )
    minting_health = MintingHealth(
        minting.probe,
        view,
        on_change=lambda changed: lifecycle.surroundings_changed(changed),
        interval=config.health_check_interval,
    )

    scheduler = Scheduler(lambda due: due_work(due), partition=tenant_of)
    revoker = Revoker(audit, sources, book, events, view, revocations)
    bookkeeping = Bookkeeping(keyring)
    ca_bundle = CaBundle(
        kube,
        config.namespace,
        config.names.ca_bundle,
        WebhookTarget(
            mode=config.webhook_config,
            configuration=config.webhook_configuration,
            service=config.service,
            url=config.webhook_url,
            namespaces=config.watch_namespaces,
        ),
    )
    reconciler = Reconciler(
        kube,
        store,
        scheduler,
        sources,
        revoker,
        audit,
        events,
        book,
        view=view,
        bindings=bindings,
        checks=PodChecks(kube, audit, events, view),
        bookkeeping=bookkeeping,
        revocations=revocations,
        ca_bundle=lambda: ca_bundle.pem,
        csi=CsiVolumes(),
    )
    handover = Handover(
        reconciler, revoker, store, book, window=dt.timedelta(seconds=2 * (config.lease_duration + config.lease_renew))
    )
    requests = Requests(reconciler, store, kube, events)
    status = StatusWriter(kube, book, store, events, revocations, view, interval=config.status_interval)
    lifecycle = CredentialLifecycle(kube, reconciler, requests, store, book, status, scheduler, view, minting_health)
    due_work = DueWork(view, reconciler, lifecycle)
    pod_events = PodEvents(view, reconciler, handover, bindings, keyring)
    pods = PodWatch(
        kube,
        f"{labels.INJECT_LABEL}=true",
        pod_events.admitted,
        pod_events.handle,
        handling=warm,
        namespaces=config.watch_namespaces,
        index=pod_index,
    )
    take_over = TakeOver(
        handover, kube, bookkeeping, pod_index, warm, lifecycle, view, namespaces=config.watch_namespaces
    )

    # Pods present their projected token (audience `agentcred`); OAuth clients that follow
    # RFC 7523bis address their assertion to the issuer itself, workload identity federation
    # (MCP's draft) to the token endpoint: those are single-use (the token service keeps jti).
    audiences = [labels.SERVICE_ACCOUNT_AUDIENCE, config.effective_issuer, f"{config.effective_issuer}/oauth2/token"]

    def revocations_unsure() -> str | None:
        """A follower's doubt about its revocation list (see RevocationStore.unsure)."""
        if leadership is None or leading():
            return None
        stale = dt.timedelta(seconds=config.lease_duration + 2 * config.lease_renew)
        return shared.revocation_store.unsure(leadership.leader_notes, stale)

    tokens = TokenService(
        reviews=ReviewGate(lambda token: kube.review_token(token, audiences)),
        view=view,
        owns_binding=bindings.owns,
        revocations=revocations,
        minted=jwt,
        keyring=keyring,
        issuer=config.effective_issuer,
        audit=audit,
        limiter=RateLimiter(rate=config.token_rate, burst=config.token_burst),
        by_source=RateLimiter(rate=config.source_rate, burst=config.source_burst),
        introspectors=frozenset(config.introspectors),
        proofs=ProofChecker(keyring, require_nonce=config.dpop_nonce),
        unsure=revocations_unsure,
        scope_time=RateLimiter(config.scope_ms_per_second, config.scope_ms_burst),
        pod_keys=PodKeys(store, kube.find_secret_metadata, bookkeeping.verify, leading),
    )
    # agentcred's CSI node plugins: the pod a volume is published for authenticated by the
    # token the kubelet passes, its value written to the plugin, never to a Secret.
    csi = CsiPublishing(
        reviews=ReviewGate(
            lambda token: kube.review_token(token, [labels.SERVICE_ACCOUNT_AUDIENCE]), caller="csi-publishing"
        ),
        view=view,
        bindings=bindings,
        reconciler=reconciler,
        volumes=reconciler.csi,
        store=store,
        scheduler=scheduler,
        bookkeeping=bookkeeping,
        audit=audit,
        plugin_account=config.csi_plugin_account,
        ca=lambda: ca_bundle.pem,
        refusals=RateLimiter(rate=config.source_rate, burst=config.source_burst),
    )
    # Gateways' calls decided: the pod identified as the token service does, the credential
    # attached on the way out (a static value read through the secretRef source).
    upstream_secrets = UpstreamSecrets(kube.find_secret, lambda ns, name: first(indices.shared_secrets, (ns, name)))
    gateway = GatewayService(
        tokens=tokens,
        policy=lambda name: first(indices.policies, name),
        revocations=revocations,
        upstream=Upstream(
            jwt,
            config.effective_issuer,
            StaticSource(upstream_secrets.read, fingerprints, book.marks, book.rotated),
            HandedValues(),
        ),
        audit=audit,
        gateways=frozenset(config.gateways),
        budget=RateLimiter(rate=config.gateway_rate, burst=config.gateway_burst),
    )
    tracer = Tracer(
        keyring=keyring,
        issuer=config.effective_issuer,
        fingerprints=fingerprints,
        store=store,
        revocations=revocations,
        view=view,
        handed=gateway.upstream.handed.holding,
    )
    responder = LeakResponder(tracer, reconciler, kube, view=view, book=book, audit=audit, events=events)
    leak_intake = LeakIntake(
        responder,
        review=lambda token: kube.review_token(token, [labels.SERVICE_ACCOUNT_AUDIENCE]),
        reporters=parse_reporters(config.leak_reporters),
        cluster_reporters=parse_reporters(config.cluster_leak_reporters),
        # A leader still listing its Secrets would answer "unknown" for values it holds.
        leading=lambda: leading() and reconciler.loaded.is_set(),
        audit=audit,
    )
    webhook = AdmissionWebhook(
        view,
        keyring,
        audit,
        issuer=config.effective_issuer,
        ready=indexed,
        unwatched=config.unwatched,
        secret_delivery=config.secret_delivery,
    )
    certificates = CertificateMonitor(
        kube,
        config.namespace,
        config.service,
        config.names.serving_certificate,
        shared.certificate,
        leading,
        ca_bundle.publish,
        managed=config.serving_certificate == "managed",
    )
    if config.leader_election:
        leadership = Leadership(
            kube,
            config.namespace,
            on_elected=lambda: _elected(loops, take_over),
            on_deposed=lambda: loops.deposed(),
            lease=config.names.lease,
            duration=config.lease_duration,
            renew=config.lease_renew,
            notes=shared.revocation_store.notes,
        )
    revocation_store = shared.revocation_store
    bars = Bars(revocations, pod_index.last, view.credential)
    loops = Loops(
        [
            certificates,
            keyring,
            pods,
            scheduler,
            status,
            events,
            LoopOf("revocation list", lambda: revocation_store.run(leading, hold=bars.hold)),
            minting_health,
            *([leadership] if leadership is not None else []),
        ]
    )
    health = Health(
        ports=(config.webhook_port, config.api_port),
        warm=warm,
        loops=lambda: loops.tasks,
        problems=[lambda: certificates.problem],
        not_ready=[revocation_store.problem, take_over.taking_over],
    )
    return Parts(
        kube=kube,
        audit=audit,
        view=view,
        keyring=keyring,
        pods=pods,
        pod_events=pod_events,
        reconciler=reconciler,
        lifecycle=lifecycle,
        take_over=take_over,
        status=status,
        minting=minting,
        minting_health=minting_health,
        ca_bundle=ca_bundle,
        certificates=certificates,
        tokens=tokens,
        csi=csi,
        gateway=gateway,
        leak_intake=leak_intake,
        webhook=webhook,
        health=health,
        leadership=leadership,
        loops=loops,
    )


async def _elected(loops: Loops, take_over: TakeOver) -> None:
    loops.elected()
    await take_over.run()


async def load_shared(config: OperatorConfig, kube: Kube) -> Shared:
    keyring = await load_keyring(kube, config.namespace, config.names.keyring)
    revocations = RevocationList(config.revocation_shards, config.revocation_budget)
    revocation_store = RevocationStore(kube, config.namespace, revocations, config.names)
    await revocation_store.reload()
    certificate = await shared_serving_certificate(
        kube,
        config.namespace,
        config.service,
        config.names.serving_certificate,
        config.serving_certificate == "managed",
    )
    return Shared(keyring, revocations, revocation_store, certificate)


# Container objects allocated between two passes of the cyclic collector over the youngest
# objects (Python's default: 700). Each pass over the young is followed, every tenth, by one
# over older objects and, every hundredth, by one over the whole heap.
YOUNGEST_GENERATION = 10_000


def settle_heap() -> None:
    """What start-up built (modules, models, the key ring, the servers) lives as long as the
    process: frozen out of the cyclic collector, whose every full pass walked those 100,000
    objects to find nothing. A 5,000-pod burst made 7 full passes (0.7 s, 4 % of its CPU) and 80
    middle ones; collecting the young in steps of 10,000 makes a tenth as many of both."""
    gc.freeze()
    gc.set_threshold(YOUNGEST_GENERATION, *gc.get_threshold()[1:])


class Operator:
    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.indexed = asyncio.Event()  # Kopf's indices have listed (see app.handlers.crd_event)
        self.warm = asyncio.Event()  # and the pods too
        self.parts: Parts | None = None
        self._warming: asyncio.Task[None] | None = None
        self._runners: list[web.AppRunner] = []
        self._grpc: ExtAuthzServer | None = None  # gateways' ext_authz calls
        self._tls_directory: Path | None = None

    def running(self) -> Parts:
        assert self.parts is not None, "the operator's parts are built at start, before any handler runs"
        return self.parts

    async def start(self, settings: kopf.OperatorSettings, indices: Indices) -> None:
        config = self.config
        configure_kopf(settings, config)
        kube = Kube(load_configuration())
        shared = await load_shared(config, kube)
        self.parts = parts = build_parts(config, kube, indices, shared, self.warm, self.indexed)

        self._tls_directory = private_directory()
        certfile, keyfile = shared.certificate.write(self._tls_directory)
        await parts.ca_bundle.publish(shared.certificate.ca_pem)

        app = build_app(
            issuer=config.effective_issuer, keyring=parts.keyring, revocations=shared.revocations, tokens=parts.tokens
        )
        app[LEAK_INTAKE] = parts.leak_intake
        app[FORWARD_AUTH] = parts.gateway
        app[CSI_PUBLISHING] = parts.csi
        self._runners.append(
            await serve(app, config.api_address, config.api_port, certfile, keyfile, limit=config.max_connections)
        )
        if config.gateway_grpc_port and config.gateways:
            # Loaded only here: gRPC and Envoy's protobufs are 13 MB of an operator's memory, and
            # with no gateway allowed to ask every ext_authz call would be refused anyway.
            from ..runtime.gateway import ext_authz  # noqa: PLC0415

            self._grpc = await ext_authz.serve(
                parts.gateway, config.gateway_grpc_address, config.gateway_grpc_port, certfile, keyfile
            )
        elif config.gateway_grpc_port:
            log.info("Envoy ext_authz not served: no gateway is allowed to ask (--gateway / AGENTCRED_GATEWAYS)")
        self._runners.append(
            await serve(
                parts.webhook.app(),
                config.webhook_address,
                config.webhook_port,
                certfile,
                keyfile,
                "the admission webhook",
                connections="webhook-connections",
                limit=config.max_connections,
            )
        )
        self._runners.append(await serve_health(parts.health, config.health_address, config.health_port))
        settle_heap()
        parts.loops.start(leading=parts.leadership is None)
        log.info("agentcred ready: issuer %s, %d signing keys", config.effective_issuer, len(parts.keyring().keys))

    async def stop(self) -> None:
        parts = self.parts
        if parts is not None:
            await parts.loops.stop()
            if parts.view.leading():
                await parts.status.flush()
            if parts.leadership is not None:
                await parts.leadership.release()
        if self._grpc is not None:
            await self._grpc.stop(grace=1)
        for runner in self._runners:
            await runner.cleanup()
        if parts is not None:
            await parts.minting.close()
            await parts.kube.close()
        if self._tls_directory is not None:
            shutil.rmtree(self._tls_directory, ignore_errors=True)

    def indices_listed(self) -> asyncio.Task[None] | None:
        """Kopf's indices have listed: once the pods have too, ready; and, for a lone replica,
        time for the start-up sweep (with leader election, being elected starts it)."""
        if self._warming is not None:
            return None
        self.indexed.set()
        self._warming = asyncio.create_task(self._warm_up(), name="warm-up")
        return self._warming

    async def _warm_up(self) -> None:
        parts = self.running()
        await parts.pods.listed.wait()
        self.warm.set()
        if parts.leadership is None:
            await parts.take_over.run()
