"""The Operator: every moving part, built from an OperatorConfig, started and stopped.

This is the composition root. `start` runs once Kopf has its indices (and before any watch
event is handled): it loads the shared state (key ring, revocation list, serving
certificate), wires the runtime's parts together, starts the HTTPS and health servers and
the background loops. The Kopf handlers (`app.handlers`) only hand events to its parts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import shutil
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web

from ..api import labels
from ..api.pods import PodTask
from ..api.projection import ProjectionState, parse_projection
from ..api.webhook_configuration import configuration, pod_guard
from ..platform.fingerprints import Fingerprints
from ..platform.keys import KeyRing
from ..platform.kube import Kube, NotFound, load_configuration, namespaced
from ..platform.revocations import RevocationList
from ..rules.credentials import CredentialRecord, Gatekeeper
from ..rules.leaks import parse_reporters
from ..rules.seal import Bookkeeping
from ..runtime.audit import AuditTrail
from ..runtime.events import EventRecorder
from ..runtime.leaks.intake import LEAK_INTAKE, LeakIntake
from ..runtime.leaks.response import LeakResponder
from ..runtime.leaks.tracer import Tracer
from ..runtime.projection.bars import Bars
from ..runtime.projection.bindings import BindingOwners
from ..runtime.projection.credential_lifecycle import CredentialLifecycle
from ..runtime.projection.handover import Handover
from ..runtime.projection.pod_watch import Admitted, PodWatch
from ..runtime.projection.pod_watch import Handler as PodHandler
from ..runtime.projection.reconciler import Reconciler
from ..runtime.projection.revoke_renew import Requests
from ..runtime.projection.revoker import Revoker
from ..runtime.replicas.keyring import load_keyring, maintain_keyring_forever
from ..runtime.replicas.leader import Leadership
from ..runtime.replicas.revocation_store import RevocationStore
from ..runtime.replicas.serving_certificate import CertificateMonitor, private_directory, shared_serving_certificate
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
from ..runtime.tokens.token_service import TokenService
from ..sources.base import Sources
from ..sources.jwt import JwtSource
from ..sources.minting_service import MintingServiceSource
from ..sources.static import StaticSource
from .config import OperatorConfig, configure_kopf

log = logging.getLogger(__name__)


def first(index: kopf.Index, key: Any) -> Any:
    """The one value an index holds for `key`, or None."""
    for value in index.get(key, ()):
        return value
    return None


@dataclass(frozen=True)
class Indices:
    """What Kopf keeps in memory for the webhook and the runtime to look up without a call.
    (Pods are followed by the operator's own watch: `Operator.pods`.)"""

    credentials: kopf.Index
    policies: kopf.Index
    namespaces: kopf.Index
    shared_secrets: kopf.Index


class Operator:
    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.indexed = asyncio.Event()  # Kopf's indices have listed (see app.handlers.crd_event)
        self.warm = asyncio.Event()  # and the pods too
        self._warming: asyncio.Task[None] | None = None
        self.keyring: KeyRing | None = None
        self.ca_pem = b""  # the serving certificate's CA, once known
        self._tasks: list[asyncio.Task[None]] = []
        self._runners: list[web.AppRunner] = []
        self._tls_directory: Path | None = None
        self._leadership: Leadership | None = None
        self.bindings = BindingOwners(sealed=self._sealed_owner)  # fed by the pod watch, at every replica

    # -- lookups (the runtime's view of the indices) ------------------------------------

    def leading(self) -> bool:
        return self._leadership is None or self._leadership.is_leader

    def credential(self, namespace: str, name: str) -> CredentialRecord | None:
        """The credential as judged here and now: its spec, the policies, its upstream."""
        return self.gate.judged(first(self.indices.credentials, (namespace, name)))

    def raw_credentials(self, namespace: str | None = None) -> list[CredentialRecord]:
        found = (
            first(self.indices.credentials, key)
            for key in list(self.indices.credentials)
            if namespace is None or key[0] == namespace
        )
        return [record for record in found if record is not None]

    def pod(self, key: str) -> PodTask | None:
        """The pod a binding belongs to: of several naming it (a copied admission), the first
        created."""
        found = self.pods.index.tasks(key)
        return min(
            found, key=lambda t: (t.created_at or dt.datetime.max.replace(tzinfo=dt.timezone.utc), t.uid), default=None
        )

    def _sealed_owner(self, key: str) -> str | None:
        """The pod a binding's Secret names, as far as this replica knows its Secrets."""
        state = self.store.get(key)  # asked only by the token service, which start() builds after the store
        return state.pod_uid if state is not None and state.sealed and state.pod_uid else None

    def pod_by_name(self, namespace: str, name: str) -> PodTask | None:
        return self.pods.index.by_name(namespace, name)

    def current_keyring(self) -> KeyRing:
        assert self.keyring is not None, "the key ring is loaded at start"
        return self.keyring

    # -- start and stop ------------------------------------------------------------------

    async def start(
        self, settings: kopf.OperatorSettings, indices: Indices, pod_event: PodHandler, admitted: Admitted
    ) -> None:
        """`pod_event` handles each event of an opted-in pod, `admitted` tells its task (see
        runtime.pod_watch), once every index has listed."""
        config = self.config
        configure_kopf(settings, config)
        self.indices = indices
        self.audit = AuditTrail(config.audit_log)
        self.kube = kube = Kube(load_configuration())
        self.pods = PodWatch(
            kube,
            f"{labels.INJECT_LABEL}=true",
            admitted,
            pod_event,
            handling=self.warm,
            namespaces=config.watch_namespaces,
        )
        self.keyring = await load_keyring(kube, config.namespace, config.names.keyring)
        self.revocations = RevocationList(config.revocation_shards, config.revocation_budget)
        self.revocation_store = revocation_store = RevocationStore(
            kube, config.namespace, self.revocations, config.names
        )
        await revocation_store.reload()

        managed = config.serving_certificate == "managed"
        certificate = await shared_serving_certificate(
            kube, config.namespace, config.service, config.names.serving_certificate, managed
        )
        self._tls_directory = private_directory()
        certfile, keyfile = certificate.write(self._tls_directory)
        await self.publish_ca(certificate.ca_pem)

        self.gate = Gatekeeper(
            policies=lambda: {name: first(indices.policies, name) for name in list(indices.policies)},
            namespace_labels=lambda namespace: first(indices.namespaces, namespace),
            shared=lambda namespace, name: first(indices.shared_secrets, (namespace, name)),
            source_health=lambda namespace, name: self.minting_health.problem(namespace, name),
        )
        self.events = EventRecorder(kube)
        self.book = StatusBook()
        self.store = ProjectionStore()
        self.scheduler = Scheduler(self._scheduled, partition=_namespace_of)
        self.fingerprints = Fingerprints(self.current_keyring)
        self.jwt = JwtSource(self.current_keyring, config.effective_issuer)
        self.minting = MintingServiceSource(
            self.fingerprints,
            on_revoke_failure=lambda record, message: self.events.post(
                record.owner_ref, "Warning", "ServiceRevokeFailed", message
            ),
        )
        static = StaticSource(kube.find_secret, self.fingerprints, self.book.marks, self.book.rotated)
        self.sources = Sources(self.jwt, static, self.minting)
        revoker = Revoker(self.audit, self.sources, self.book, self.events, self.credential, self.revocations)
        self.bookkeeping = Bookkeeping(self.current_keyring)
        self.reconciler = Reconciler(
            kube,
            self.store,
            self.scheduler,
            self.sources,
            revoker,
            self.audit,
            self.events,
            self.book,
            credential=self.credential,
            pod=self.pod,
            leading=self.leading,
            bookkeeping=self.bookkeeping,
            revocations=self.revocations,
            ca_bundle=lambda: self.ca_pem,
        )
        self.handover = Handover(
            self.reconciler,
            revoker,
            self.store,
            self.book,
            window=dt.timedelta(seconds=2 * (config.lease_duration + config.lease_renew)),
        )
        self.requests = Requests(self.reconciler, self.store, kube, self.events)
        self.status = StatusWriter(
            kube,
            self.book,
            self.store,
            self.events,
            self.revocations,
            credential=self.credential,
            leading=self.leading,
            interval=config.status_interval,
        )
        self.credentials = CredentialLifecycle(
            kube, self.reconciler, self.requests, self.store, self.book, self.status, self.scheduler, self.credential
        )
        self.minting_health = MintingHealth(
            self.minting.probe,
            self.raw_credentials,
            self.credentials.surroundings_changed,
            interval=config.health_check_interval,
        )

        # Pods present their projected token (audience `agentcred`); OAuth clients that follow
        # RFC 7523bis address their assertion to the issuer itself.
        audiences = [labels.SERVICE_ACCOUNT_AUDIENCE, config.effective_issuer]
        tokens = TokenService(
            reviews=ReviewGate(lambda token: kube.review_token(token, audiences)),
            pod_by_name=self.pod_by_name,
            owns_binding=self.bindings.owns,
            credential=self.credential,
            revocations=self.revocations,
            minted=self.jwt,
            keyring=self.current_keyring,
            issuer=config.effective_issuer,
            audit=self.audit,
            limiter=RateLimiter(rate=config.token_rate, burst=config.token_burst),
            by_source=RateLimiter(rate=config.source_rate, burst=config.source_burst),
            introspectors=frozenset(config.introspectors),
            unsure=self._revocations_unsure,
            scope_time=RateLimiter(config.scope_ms_per_second, config.scope_ms_burst),
        )
        app = build_app(
            issuer=config.effective_issuer, keyring=self.current_keyring, revocations=self.revocations, tokens=tokens
        )
        app[LEAK_INTAKE] = self._leak_intake(kube)
        self._runners.append(
            await serve(app, config.api_address, config.api_port, certfile, keyfile, limit=config.max_connections)
        )
        webhook = AdmissionWebhook(
            self.credential,
            self.current_keyring,
            self.audit,
            issuer=config.effective_issuer,
            ready=self.indexed,
            unwatched=config.unwatched,
        )
        self._runners.append(
            await serve(
                webhook.app(),
                config.webhook_address,
                config.webhook_port,
                certfile,
                keyfile,
                "the admission webhook",
                connections="webhook-connections",
                limit=config.max_connections,
            )
        )
        health = Health(ports=(config.webhook_port, config.api_port), warm=self.warm)
        self._runners.append(await serve_health(health, config.health_address, config.health_port))

        if config.leader_election:
            self._leadership = Leadership(
                kube,
                config.namespace,
                on_elected=self.take_over,
                lease=config.names.lease,
                duration=config.lease_duration,
                renew=config.lease_renew,
                notes=revocation_store.notes,
            )
        certificates = CertificateMonitor(
            kube,
            config.namespace,
            config.service,
            config.names.serving_certificate,
            certificate,
            self.leading,
            self.publish_ca,
            managed=managed,
        )
        health.problems.append(lambda: certificates.problem)
        health.not_ready.append(revocation_store.problem)
        health.not_ready.append(
            lambda: (
                "taking over" if self.leading() and self.warm.is_set() and not self.reconciler.loaded.is_set() else None
            )
        )
        bars = Bars(self.revocations, self.pods.index.last, self.credential)
        rotation = dt.timedelta(days=config.key_rotation_days) if config.key_rotation_days > 0 else None
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "serving certificate": certificates.run,
            "key ring": lambda: maintain_keyring_forever(
                kube,
                config.namespace,
                config.names.keyring,
                self.current_keyring(),
                self._set_keyring,
                rotation,
                self.leading,
            ),
            "pod watch": self.pods.run,
            "expiry scheduler": self.scheduler.run,
            "status writer": lambda: self.status.run(self.raw_credentials),
            "event poster": self.events.run,
            "revocation list": lambda: revocation_store.run(self.leading, hold=bars.hold),
            "minting-service health checks": self.minting_health.run,
        }
        if self._leadership is not None:
            loops["leader election"] = self._leadership.run
        self._tasks = health.loops = [asyncio.create_task(run(), name=name) for name, run in loops.items()]
        log.info("agentcred ready: issuer %s, %d signing keys", config.effective_issuer, len(self.keyring.keys))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._leadership is not None:
            await self._leadership.release()
        for runner in self._runners:
            await runner.cleanup()
        if hasattr(self, "status"):
            await self.status.flush()
            await self.minting.close()
            await self.kube.close()
        if self._tls_directory is not None:
            shutil.rmtree(self._tls_directory, ignore_errors=True)

    # -- taking over ---------------------------------------------------------------------

    def indices_listed(self) -> asyncio.Task[None] | None:
        """Kopf's indices have listed: once the pods have too, ready; and, for a lone replica,
        time for the start-up sweep (with leader election, being elected starts it)."""
        if self._warming is not None:
            return None
        self.indexed.set()
        self._warming = asyncio.create_task(self._warm_up(), name="warm-up")
        return self._warming

    async def _warm_up(self) -> None:
        await self.pods.listed.wait()
        self.warm.set()
        if not self.config.leader_election:
            await self.take_over()

    async def take_over(self) -> None:
        """List the managed Secrets, re-plan everything, finish deletions no leader finished;
        until it has, this replica is not ready, and a failure is retried."""
        # Only once every index has listed: planning against a half-listed index would take
        # live pods' Secrets for orphans.
        await self.warm.wait()
        for attempt in itertools.count():
            try:
                await self.handover.take_over(self.pods.index.keys(), await self._managed_states())
                # Labelled pods no webhook admitted (created before it was installed) that a
                # follower saw at start-up: flagged now that this replica leads.
                self.reconciler.checks.flag_pending()
                for record in self.raw_credentials():
                    if record.deleting:
                        await self.credentials.finalize(record)
                return
            except Exception:
                delay = min(2.0**attempt, 30.0)
                log.exception("taking over failed; again in %.0fs", delay)
                await asyncio.sleep(delay)

    async def _managed_states(self) -> list[ProjectionState]:
        """The managed Secrets' bookkeeping, read from their metadata a page at a time: in
        every namespace, or (namespace-scoped) in each watched one -- the only places this
        operator may list them."""
        selector = f"{labels.MANAGED_LABEL}=true"
        paths = (
            [namespaced("v1", namespace, "secrets") for namespace in self.config.watch_namespaces]
            if self.config.scoped
            else ["/api/v1/secrets"]
        )
        states: list[ProjectionState] = []
        for path in paths:
            async for items in self.kube.metadata_pages(path, selector):
                states.extend(s for item in items if (s := parse_projection(item, self.bookkeeping.verify)) is not None)
        return states

    async def publish_ca(self, ca_pem: bytes) -> None:
        """Tell the API server which CA to trust for the webhook, as configured; and publish
        it where verifiers read it (never next to the private key): the `<instance>-ca`
        ConfigMap, and each pod's Secret as it is next written."""
        config = self.config
        self.ca_pem = ca_pem
        await self._write_ca_bundle(ca_pem)
        if config.webhook_config == "manage":
            service = None if config.webhook_url else (config.service, config.namespace, 443)
            await self.kube.apply_cluster_object(
                "mutatingwebhookconfigurations",
                configuration(
                    ca_pem,
                    url=config.webhook_url,
                    service=service,
                    operator_namespace=config.namespace,
                    name=config.webhook_configuration,
                    namespaces=config.watch_namespaces,
                ),
            )
            for resources, body in pod_guard(config.webhook_configuration, config.watch_namespaces):
                await self.kube.apply_cluster_object(resources, body)
        elif config.webhook_config == "inject-ca":
            await self.kube.inject_webhook_ca(config.webhook_configuration, ca_pem)

    async def _write_ca_bundle(self, ca_pem: bytes) -> None:
        namespace, name = self.config.namespace, self.config.names.ca_bundle
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "agentcred"}},
            "data": {labels.CA_KEY: ca_pem.decode()},
        }
        try:  # the chart creates it empty (the operator may only read and update it)
            current = await self.kube.read_configmap(namespace, name)
        except NotFound:
            await self.kube.create_configmap(namespace, body)
            return
        if (current.get("data") or {}).get(labels.CA_KEY) != body["data"][labels.CA_KEY]:
            current["data"] = body["data"]
            await self.kube.replace_configmap(namespace, name, current)

    def _taking_over(self) -> str | None:
        """A leader that has not yet listed its Secrets and re-planned serves no one."""
        listing = self.leading() and self.warm.is_set() and not self.reconciler.loaded.is_set()
        return "taking over (listing the managed Secrets)" if listing else None

    def _leak_intake(self, kube: Kube) -> LeakIntake:
        config = self.config
        tracer = Tracer(
            keyring=self.current_keyring,
            issuer=config.effective_issuer,
            fingerprints=self.fingerprints,
            store=self.store,
            revocations=self.revocations,
            pod=self.pod,
            credential=self.credential,
        )
        responder = LeakResponder(
            tracer,
            self.reconciler,
            kube,
            credential=self.credential,
            pod=self.pod,
            book=self.book,
            audit=self.audit,
            events=self.events,
        )
        return LeakIntake(
            responder,
            review=lambda token: kube.review_token(token, [labels.SERVICE_ACCOUNT_AUDIENCE]),
            reporters=parse_reporters(config.leak_reporters),
            cluster_reporters=parse_reporters(config.cluster_leak_reporters),
            # A leader still listing its Secrets would answer "unknown" for values it holds.
            leading=lambda: self.leading() and self.reconciler.loaded.is_set(),
            audit=self.audit,
        )

    def _revocations_unsure(self) -> str | None:
        """A follower's doubt about its revocation list (see RevocationStore.unsure)."""
        if self.leading() or self._leadership is None:
            return None
        stale = dt.timedelta(seconds=self.config.lease_duration + 2 * self.config.lease_renew)
        return self.revocation_store.unsure(self._leadership.leader_notes, stale)

    def _set_keyring(self, ring: KeyRing) -> None:
        self.keyring = ring

    async def _scheduled(self, key: Any) -> None:
        if not self.leading():
            return  # dropped: a new leader re-plans and reschedules everything
        if key[0] == "binding":
            await self.reconciler.reconcile(key[1])
        elif key[0] == "credential":
            record = first(self.indices.credentials, (key[1], key[2]))
            if record is not None:
                await self.credentials.changed(record, force=True)


def _namespace_of(key: Any) -> str:
    """The tenant a scheduled key belongs to: ("binding", "ns/binding") or ("credential", ns, name)."""
    return str(key[1]).partition("/")[0] if key[0] == "binding" else str(key[1])
