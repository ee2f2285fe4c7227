"""The in-memory view of one AgentCredential: what the webhook and the issuer consult.

Built by a Kopf index from each AgentCredential event, so admission and issuing never need
an API round-trip to look a credential up. The spec is parsed once per event; the verdict
depends on the date (exceptions and reviews expire), so it is re-judged when the day turns.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .evaluation import Verdict, describe_validation_error, judge
from .model import AgentCredentialSpec, parse_spec


def today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


@dataclass(frozen=True)
class CredentialRecord:
    namespace: str
    name: str
    uid: str
    generation: int
    created: dt.date
    spec: AgentCredentialSpec | None
    invalid: Verdict | None  # set when the spec does not parse
    status: dict[str, Any]
    owner_ref: dict[str, Any]  # enough for Events: apiVersion, kind, name, namespace, uid
    _verdicts: dict[dt.date, Verdict] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def verdict(self, on: dt.date | None = None) -> Verdict:
        if self.invalid is not None or self.spec is None:
            assert self.invalid is not None
            return self.invalid
        day = on or today()
        if day not in self._verdicts:
            self._verdicts.clear()
            self._verdicts[day] = judge(self.spec, self.created, day)
        return self._verdicts[day]

    @property
    def ready(self) -> bool:
        return self.verdict().ready

    def allows(self, service_account: str) -> bool:
        return self.spec is not None and service_account in self.spec.subjects.service_accounts


def credential_record(body: dict[str, Any]) -> CredentialRecord:
    meta = body.get("metadata") or {}
    created = meta.get("creationTimestamp")
    spec: AgentCredentialSpec | None = None
    invalid: Verdict | None = None
    try:
        spec = parse_spec(dict(body.get("spec") or {}))
    except ValidationError as error:
        invalid = Verdict(False, "InvalidSpec", describe_validation_error(error))
    return CredentialRecord(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation") or 0),
        created=dt.date.fromisoformat(created[:10]) if created else today(),
        spec=spec,
        invalid=invalid,
        status=dict(body.get("status") or {}),
        owner_ref={
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
    )
