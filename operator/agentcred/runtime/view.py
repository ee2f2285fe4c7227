"""The runtime's one view of the cluster's state, as this replica knows it.

Every part that must look something up -- a credential as judged now, the pod a binding
belongs to, whether this replica leads -- asks this view instead of being handed a
callable per question. The app builds it over Kopf's indices, the pod watch and the
leader election (`app.cluster_view`); unit tests build it over plain dictionaries.
"""

from __future__ import annotations

from typing import Protocol

from ..api.pods import PodTask
from ..rules.credentials import CredentialRecord


class ClusterView(Protocol):
    def leading(self) -> bool:
        """This replica acts (writes, issues, revokes); followers only watch and serve."""
        ...

    def credential(self, namespace: str, name: str) -> CredentialRecord | None:
        """The credential as judged here and now: its spec, the policies, its upstream."""
        ...

    def credentials(self, namespace: str | None = None) -> list[CredentialRecord]:
        """Every credential known (of one namespace), as last seen, not judged again."""
        ...

    def pod(self, key: str) -> PodTask | None:
        """The admitted pod a binding belongs to (the first created, of several naming it)."""
        ...

    def pod_by_name(self, namespace: str, name: str) -> PodTask | None:
        """The admitted pod of that name, if it is live."""
        ...

    def live_pods(self, namespace: str) -> list[PodTask]:
        """The admitted pods of a namespace whose task has not ended."""
        ...
