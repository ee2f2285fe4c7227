"""What the one scheduler holds, typed: a binding due to be planned again, or a credential due
to be judged again (its static exception ends). Each names its tenant, so a tenant's hanging
work fills only its own slots (see runtime.scheduler)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BindingDue:
    key: str  # "namespace/binding"

    @property
    def tenant(self) -> str:
        return self.key.partition("/")[0]


@dataclass(frozen=True)
class CredentialDue:
    namespace: str
    name: str

    @property
    def tenant(self) -> str:
        return self.namespace


Due = BindingDue | CredentialDue


def tenant_of(due: object) -> str:
    return due.tenant if isinstance(due, BindingDue | CredentialDue) else ""
