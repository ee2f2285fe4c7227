"""A ClusterView over plain values, for unit tests of the runtime's parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agentcred.api.pods import PodTask
from agentcred.rules.credentials import CredentialRecord


@dataclass
class FixedView:
    """Credentials by name (one namespace's worth is enough for a unit test) and pods by
    binding key; `lead` says whether this replica leads."""

    records: dict[str, CredentialRecord] = field(default_factory=dict)
    pods: dict[str, PodTask] = field(default_factory=dict)
    lead: bool = True
    pod_lookup: Callable[[str], PodTask | None] | None = None

    def leading(self) -> bool:
        return self.lead

    def credential(self, namespace: str, name: str) -> CredentialRecord | None:
        return self.records.get(name)

    def credentials(self, namespace: str | None = None) -> list[CredentialRecord]:
        return [r for r in self.records.values() if namespace is None or r.namespace == namespace]

    def pod(self, key: str) -> PodTask | None:
        return self.pod_lookup(key) if self.pod_lookup is not None else self.pods.get(key)

    def pod_by_name(self, namespace: str, name: str) -> PodTask | None:
        return next((t for t in self.pods.values() if (t.namespace, t.name) == (namespace, name)), None)

    def live_pods(self, namespace: str) -> list[PodTask]:
        return [t for t in self.pods.values() if t.namespace == namespace and t.end_reason is None]
