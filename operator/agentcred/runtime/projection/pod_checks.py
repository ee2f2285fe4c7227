"""Pods the operator will not serve, told so once each: a labelled pod the webhook never
admitted, a pod claiming a binding that belongs to another pod, and a pod that left the
opt-in watch without being deleted (it lost its label: opted out)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ...api import labels
from ...api.pods import PodTask, pod_ref
from ...api.projection import Subject
from ...platform.kube import Kube
from ..audit import AuditTrail
from ..events import EventRecorder
from ..view import ClusterView


class PodChecks:
    def __init__(self, kube: Kube, audit: AuditTrail, events: EventRecorder, view: ClusterView) -> None:
        self.kube, self.audit, self.events, self.view = kube, audit, events, view
        self._flagged: set[str] = set()  # pod UIDs already told they get nothing
        # Unadmitted pods a follower saw (at start-up, every pod is listed once): the leader's
        # to flag, so this replica flags them if it becomes the leader (`flag_pending`).
        self._pending: dict[str, dict[str, Any]] = {}

    async def still_there(self, task: PodTask) -> PodTask:
        """A pod that left the label-selected watch: deleted, or only unlabelled (opted out)?"""
        found = await self.kube.find_pod(task.namespace, task.name)
        meta = (found or {}).get("metadata") or {}
        if found is None or meta.get("uid") != task.uid or meta.get("deletionTimestamp"):
            return task
        return dataclasses.replace(task, deleted=False, opted_out=True)

    def flag_unadmitted(self, pod: dict[str, Any]) -> None:
        """A labelled pod the webhook did not admit (created before it was installed, or
        changed since): it gets nothing, and people are told."""
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if not uid or meta.get("deletionTimestamp"):
            return
        if not self.view.leading():
            if len(self._pending) < 100_000:
                self._pending[uid] = pod
            return
        self._pending.pop(uid, None)
        if not self._first_flag(uid):
            return
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        message = (
            f"pod has label {labels.INJECT_LABEL}=true but was not admitted by the agentcred webhook "
            "(created before the webhook was installed, or altered since): it gets no credentials; "
            "recreate it"
        )
        self.events.post(pod_ref(namespace, name, uid), "Warning", "NotAdmitted", message)
        subject = Subject(
            namespace, name, uid, service_account=(pod.get("spec") or {}).get("serviceAccountName") or "default"
        )
        self.audit.deny(subject, "not-admitted", message)

    def gone(self, uid: str) -> None:
        """A pod was deleted: nothing left to flag."""
        self._pending.pop(uid, None)

    def flag_pending(self) -> int:
        """Now leading: flag the unadmitted pods seen while following; how many were."""
        pending, self._pending = self._pending, {}
        for pod in pending.values():
            self.flag_unadmitted(pod)
        return len(pending)

    def binding_taken(self, task: PodTask) -> None:
        if task.end_reason or not self._first_flag(task.uid):
            return
        message = f"binding {task.binding} belongs to another pod: this pod gets no credentials"
        self.events.post(pod_ref(task.namespace, task.name, task.uid), "Warning", "BindingInUse", message)
        self.audit.deny(Subject.of_task(task), "binding-in-use", message)

    def _first_flag(self, uid: str) -> bool:
        """True the first time a pod UID is flagged (bounded memory)."""
        if uid in self._flagged:
            return False
        if len(self._flagged) > 100_000:
            self._flagged.clear()
        self._flagged.add(uid)
        return True
