"""What the scheduler hands on when something falls due: a binding is planned again, a
credential judged again. The leader acts; a follower drops it (a new leader re-plans and
reschedules everything when it takes over)."""

from __future__ import annotations

from ..view import ClusterView
from .credential_lifecycle import CredentialLifecycle
from .due import BindingDue, CredentialDue
from .reconciler import Reconciler


class DueWork:
    def __init__(self, view: ClusterView, reconciler: Reconciler, lifecycle: CredentialLifecycle) -> None:
        self.view, self.reconciler, self.lifecycle = view, reconciler, lifecycle

    async def __call__(self, due: object) -> None:
        if not self.view.leading():
            return
        match due:
            case BindingDue(key=key):
                await self.reconciler.reconcile(key)
            case CredentialDue(namespace=namespace, name=name):
                record = next((r for r in self.view.credentials(namespace) if r.name == name), None)
                if record is not None:
                    await self.lifecycle.changed(record, force=True)
