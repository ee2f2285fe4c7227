"""A pod's projection machinery wired as `app.operator.build_parts` wires it, around an
`InMemoryApi` and a `FixedView`, for unit tests of the parts built on it (the credential
lifecycle, leak response). Only the pieces those parts use: no loops run, no ports open; a
test drives the parts and, where it needs them, the scheduler's due work and the Events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentcred.api import labels
from agentcred.api.pods import PodTask
from agentcred.api.times import utcnow
from agentcred.platform.fingerprints import Fingerprints
from agentcred.platform.keys import KeyRing
from agentcred.platform.revocations import RevocationList
from agentcred.rules.credentials import CredentialRecord, SourceProblem
from agentcred.rules.seal import Bookkeeping
from agentcred.runtime.audit import AuditTrail
from agentcred.runtime.events import EventRecorder
from agentcred.runtime.projection.bindings import BindingOwners
from agentcred.runtime.projection.credential_lifecycle import CredentialLifecycle
from agentcred.runtime.projection.due import tenant_of
from agentcred.runtime.projection.due_work import DueWork
from agentcred.runtime.projection.pod_checks import PodChecks
from agentcred.runtime.projection.reconciler import Reconciler
from agentcred.runtime.projection.revoke_renew import Requests
from agentcred.runtime.projection.revoker import Revoker
from agentcred.runtime.scheduler import Scheduler
from agentcred.runtime.status.minting_health import MintingHealth
from agentcred.runtime.status.status_writer import StatusWriter
from agentcred.runtime.status.statusbook import StatusBook
from agentcred.runtime.store import ProjectionStore
from agentcred.sources.base import Sources
from agentcred.sources.jwt import JwtSource
from agentcred.sources.static import StaticSource

from .fakes import InMemoryApi, delivered
from .views import FixedView

ISSUER = "https://agentcred.test"
RING = KeyRing.generate(utcnow())  # shared by every test's runtime: an RSA key takes a while


async def healthy(record: CredentialRecord) -> SourceProblem | None:
    return None


class Runtime:
    def __init__(self, tmp_path: Path, view: FixedView) -> None:
        self.api = InMemoryApi()  # stands in for platform.kube.Kube wherever the parts take one
        self.view = view
        self.ring = RING

        def keyring() -> KeyRing:
            return self.ring

        self.audit_path = tmp_path / "audit.log"
        self.audit = AuditTrail(str(self.audit_path))
        self.events = EventRecorder(self.api)
        self.book, self.store, self.revocations = StatusBook(), ProjectionStore(), RevocationList()
        self.bindings = BindingOwners(self.store)
        self.fingerprints = Fingerprints(keyring)
        self.jwt = JwtSource(keyring, ISSUER)
        static = StaticSource(self.api.find_secret, self.fingerprints, self.book.marks, self.book.rotated)
        self.sources = Sources(self.jwt, static)
        self.scheduler = Scheduler(lambda due: self.due_work(due), partition=tenant_of)
        self.revoker = Revoker(self.audit, self.sources, self.book, self.events, view, self.revocations)
        self.bookkeeping = Bookkeeping(keyring)
        self.reconciler = Reconciler(
            self.api,
            self.store,
            self.scheduler,
            self.sources,
            self.revoker,
            self.audit,
            self.events,
            self.book,
            view=view,
            bindings=self.bindings,
            checks=PodChecks(self.api, self.audit, self.events, view),
            bookkeeping=self.bookkeeping,
            revocations=self.revocations,
        )
        self.reconciler.loaded.set()  # the take-over's listing: nothing to list here
        self.requests = Requests(self.reconciler, self.store, self.api, self.events)
        self.status = StatusWriter(self.api, self.book, self.store, self.events, self.revocations, view)
        self.minting_health = MintingHealth(
            healthy, view, on_change=lambda changed: self.lifecycle.surroundings_changed(changed)
        )
        self.lifecycle = CredentialLifecycle(
            self.api,
            self.reconciler,
            self.requests,
            self.store,
            self.book,
            self.status,
            self.scheduler,
            view,
            self.minting_health,
        )
        self.due_work = DueWork(view, self.reconciler, self.lifecycle)

    def admit(self, task: PodTask) -> None:
        """The pod watch saw an admitted pod: the view has it, and whose its binding is."""
        self.view.pods[task.key] = task
        self.bindings.note(task)

    def audit_lines(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def secret_data(self, task: PodTask) -> dict[str, str]:
        return self.api.secret_data(task.namespace, labels.secret_name(task.binding))

    async def run_scheduler_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        """Let the scheduler hand on what falls due until `done()` (AssertionError after `timeout`)."""
        runner = asyncio.create_task(self.scheduler.run())
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"the scheduler's due work did not get there in {timeout}s") from None
        finally:
            runner.cancel()

    async def events_posted(self) -> list[dict[str, Any]]:
        return await delivered(self.events, self.api)
