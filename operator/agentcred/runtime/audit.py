"""The audit trail: one JSON line per issue, renew, revoke, deny, exchange, void, leak, trace and
gateway call.

Each line ties an act to one credential and one pod (name and UID), its Job and its
ServiceAccount, with a token id or a value fingerprint -- never the value itself. Issue,
renew and revoke lines are written *ahead* of the act (`ahead`): if the act then fails, a
`void` line follows each, so a crash can repeat a line but never lose one. The metrics
count what the trail records, so the two never disagree.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from ..api.projection import IssuedValue, Subject
from ..api.reasons import AuditAction
from ..api.times import format_time, utcnow
from ..platform import metrics
from ..platform.kube import status_of
from ..rules.credentials import CredentialRecord

Action = AuditAction
Entry = dict[str, Any]


class AuditTrail:
    def __init__(self, destination: str = "-") -> None:
        """Lines go, unformatted, to stdout ("-") or are appended to a file; each is flushed
        before `record` returns (written ahead means written). Straight to the stream, not
        through `logging`: a log record (caller lookup, handlers, formatter) cost more than
        the line."""
        self._stream: TextIO = sys.stdout if destination == "-" else open(destination, "a", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()

    def record(self, action: Action, count: bool = True, **fields: Any) -> Entry:
        """Write one line; `count=False` when the act is still to happen (`ahead` counts it)."""
        entry = {
            "ts": format_time(utcnow(), "milliseconds"),
            "audit": "agentcred",
            "action": action,
            **{key: value for key, value in fields.items() if value is not None},
        }
        # The stdlib's spacing (`"action": "revoke"`) is the audit log's format: people grep it.
        line = json.dumps(entry, default=str) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()
        if count:
            metrics.observe_audit(entry)
        return entry

    def issue(self, subject: Subject, record: CredentialRecord, value: IssuedValue) -> Entry:
        spec = record.spec
        return self.record(
            "renew" if value.renewals > 0 else "issue",
            count=False,
            credential=record.name,
            category=spec.category if spec else None,
            owner=spec.owner if spec else None,
            scope=spec.scope.model_dump(by_alias=True, exclude_none=True) if spec and spec.scope else None,
            tokenId=value.token_id,
            fingerprint=value.fingerprint,
            expiresAt=format_time(value.expires_at),
            **subject.fields(),
        )

    def revoke(
        self,
        subject: Subject,
        credential: str,
        value: IssuedValue | None,
        reason: str,
        owner: str | None,
        message: str | None = None,
        count: bool = False,
    ) -> Entry:
        return self.record(
            "revoke",
            count=count,
            credential=credential,
            category=value.category if value else None,
            owner=owner,
            reason=reason,
            message=message,
            tokenId=value.token_id if value else None,
            fingerprint=value.fingerprint if value else None,
            **subject.fields(),
        )

    def deny(
        self,
        subject: Subject,
        reason: str,
        message: str,
        credential: str | None = None,
        category: str | None = None,
        **extra: Any,
    ) -> Entry:
        return self.record(
            "deny",
            credential=credential,
            category=category,
            reason=reason,
            message=message,
            **subject.fields(),
            **extra,
        )

    @contextlib.contextmanager
    def ahead(self, entries: list[Entry]) -> Iterator[None]:
        """The entries were written before acting; if the act fails, a `void` line follows
        each; if it succeeds, they count in the metrics."""
        try:
            yield
        except BaseException as error:
            for entry in entries:
                self.record(
                    "void",
                    voids=entry["action"],
                    credential=entry.get("credential"),
                    namespace=entry.get("namespace"),
                    podUID=entry.get("podUID"),
                    tokenId=entry.get("tokenId"),
                    fingerprint=entry.get("fingerprint"),
                    reason=f"not applied ({status_of(error) or type(error).__name__})",
                )
            raise
        for entry in entries:
            metrics.observe_audit(entry)
