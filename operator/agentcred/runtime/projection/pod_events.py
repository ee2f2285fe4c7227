"""An opted-in pod's event, from the pod watch: whose it is, and who acts on it.

The watch asks `admitted` for each pod's task: the pod's, if the webhook admitted it as it
stands (its seal holds), noted as its binding's claimant. `handle` then decides: a pod with
no task is flagged (labelled, never admitted: it gets nothing, and people are told); the
leader reconciles an admitted pod's projection; a follower only remembers a task that ended,
for whoever leads next.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ...api.pods import PodTask, pod_task
from ...platform.keys import KeyRing
from ...platform.kube import status_of
from ...rules import seal
from ..view import ClusterView
from .bindings import BindingOwners
from .handover import Handover
from .reconciler import Reconciler

log = logging.getLogger(__name__)


class PodEvents:
    def __init__(
        self,
        view: ClusterView,
        reconciler: Reconciler,
        handover: Handover,
        bindings: BindingOwners,
        keyring: Callable[[], KeyRing],
    ) -> None:
        self.view, self.reconciler, self.handover = view, reconciler, handover
        self.bindings, self.keyring = bindings, keyring

    def admitted(self, body: dict[str, Any], deleted: bool = False) -> PodTask | None:
        """The pod's task if the webhook admitted it as it stands (its seal holds), else None."""
        task = pod_task(body, deleted=deleted)
        if task is None or not seal.admitted(task, self.keyring().mac_keys("admission")):
            return None
        self.bindings.note(task)  # in watch order: of two pods created in one second, the first seen
        return task

    async def handle(self, type: str | None, body: dict[str, Any], task: PodTask | None) -> None:
        checks = self.reconciler.checks
        meta = body.get("metadata") or {}
        if task is None:
            found = pod_task(body)
            ours = found is None or not seal.foreign(found, self.keyring().mac_keys("admission"))
            if type != "DELETED" and ours:
                checks.flag_unadmitted(body)
            elif type == "DELETED":
                checks.gone(str(meta.get("uid") or ""))
            return
        if self.view.leading():
            if type == "DELETED" and not meta.get("deletionTimestamp"):
                # Deleted at once, or it lost the opt-in label (the watch is label-selected):
                # only the API server can tell which. Either way the task has ended: unanswered
                # (a loaded API server), it is revoked as deleted rather than not at all.
                try:
                    task = await checks.still_there(task)
                except Exception as error:
                    log.warning("could not tell whether pod %s was deleted (%s)", task.key, status_of(error) or error)
            await self.reconciler.reconcile(task.key, task)
        elif task.end_reason:
            self.handover.note_ended(task)
