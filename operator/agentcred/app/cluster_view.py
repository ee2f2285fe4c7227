"""The cluster as this replica knows it: Kopf's indices, the pod watch's index, the election.

The one implementation of `runtime.view.ClusterView`. Credentials are judged against the
policies, the namespace's labels, their shared upstream and their minting service's health
(the Gatekeeper) on every lookup, from memory; pods are the admitted tasks the pod watch
keeps, and a binding's pod is the one `BindingOwners` says owns it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kopf

from ..api.pods import PodTask
from ..rules.credentials import CredentialRecord, Gatekeeper, SourceProblem
from ..runtime.projection.bindings import BindingOwners
from ..runtime.projection.pod_watch import PodIndex


def first(index: kopf.Index[Any, Any], key: Any) -> Any:
    """The one value an index holds for `key`, or None."""
    for value in index.get(key, ()):
        return value
    return None


@dataclass(frozen=True)
class Indices:
    """What Kopf keeps in memory for the webhook and the runtime to look up without a call.
    (Pods are followed by the operator's own watch: runtime.projection.pod_watch.)"""

    credentials: kopf.Index[Any, Any]
    policies: kopf.Index[Any, Any]
    namespaces: kopf.Index[Any, Any]
    shared_secrets: kopf.Index[Any, Any]


class IndexedCluster:
    def __init__(
        self,
        indices: Indices,
        pods: PodIndex,
        bindings: BindingOwners,
        leading: Callable[[], bool],
        source_health: Callable[[str, str], SourceProblem | None],
    ) -> None:
        self.indices, self.pods, self.bindings, self.leading = indices, pods, bindings, leading
        self.gate = Gatekeeper(
            policies=lambda: {name: first(indices.policies, name) for name in list(indices.policies)},
            namespace_labels=lambda namespace: first(indices.namespaces, namespace),
            shared=lambda namespace, name: first(indices.shared_secrets, (namespace, name)),
            source_health=source_health,
        )

    def credential(self, namespace: str, name: str) -> CredentialRecord | None:
        return self.gate.judged(self.raw_credential(namespace, name))

    def raw_credential(self, namespace: str, name: str) -> CredentialRecord | None:
        found: CredentialRecord | None = first(self.indices.credentials, (namespace, name))
        return found

    def credentials(self, namespace: str | None = None) -> list[CredentialRecord]:
        index = self.indices.credentials
        found = (first(index, key) for key in list(index) if namespace is None or key[0] == namespace)
        return [record for record in found if record is not None]

    def pod(self, key: str) -> PodTask | None:
        owner = self.bindings.owner(key)
        return next((task for task in self.pods.tasks(key) if task.uid == owner), None)

    def pod_by_name(self, namespace: str, name: str) -> PodTask | None:
        return self.pods.by_name(namespace, name)

    def live_pods(self, namespace: str) -> list[PodTask]:
        prefix = f"{namespace}/"
        return [
            task
            for key in self.pods.keys()
            if key.startswith(prefix)
            for task in self.pods.tasks(key)
            if task.end_reason is None
        ]
