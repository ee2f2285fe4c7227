"""What each AgentCredential's status should say, counted here as things happen.

Issuing a value to a thousand pods must not mean a thousand writes to one object, so the
runtime notes what happened here and a single flusher (`status_writer`) writes each changed credential's
status at most once per interval. Totals start from what the status already says, so
they survive restarts; active projections and next expiry are counted from the Secrets.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ...api import conditions
from ...api.fingerprints import short
from ...api.times import format_time
from ...rules.credentials import CredentialRecord
from ...rules.leaks import Compromise
from ...rules.status import spec_status

Key = tuple[str, str]


@dataclass
class Tally:
    issued: int
    renewed: int
    revoked: int
    last_issued: str | None
    source_problem: tuple[str, str] | None = None  # (reason, message) while issuing fails
    source_checked: bool = False
    compromised: list[Compromise] = field(default_factory=list)  # static values reported leaked


@dataclass
class StatusBook:
    tallies: dict[Key, Tally] = field(default_factory=dict)
    dirty: set[Key] = field(default_factory=set)

    def _tally(self, record: CredentialRecord) -> Tally:
        tally = self.tallies.get(record.key)
        if tally is None:
            status = record.status
            tally = Tally(
                issued=int(status.get("issuedTotal") or 0),
                renewed=int(status.get("renewedTotal") or 0),
                revoked=int(status.get("revokedTotal") or 0),
                last_issued=status.get("lastIssued"),
                compromised=[m for m in map(Compromise.from_json, status.get("compromised") or []) if m],
            )
            self.tallies[record.key] = tally
        return tally

    def issued(self, record: CredentialRecord, now: dt.datetime, renewal: bool) -> None:
        tally = self._tally(record)
        if renewal:
            tally.renewed += 1
        else:
            tally.issued += 1
        tally.last_issued = format_time(now)
        tally.source_problem, tally.source_checked = None, True
        self.dirty.add(record.key)

    def revoked(self, record: CredentialRecord, count: int = 1) -> None:
        self._tally(record).revoked += count
        self.dirty.add(record.key)

    def source_failed(self, record: CredentialRecord, reason: str, message: str) -> None:
        tally = self._tally(record)
        if tally.source_problem != (reason, message):
            tally.source_problem, tally.source_checked = (reason, message), True
            self.dirty.add(record.key)

    def compromise(self, record: CredentialRecord, mark: Compromise) -> None:
        """A static value was reported leaked: kept (in status too) until rotated upstream."""
        tally = self._tally(record)
        if all(m.fingerprint != mark.fingerprint for m in tally.compromised):
            tally.compromised = [*tally.compromised, mark][-16:]
            self.dirty.add(record.key)

    def marks(self, record: CredentialRecord) -> list[Compromise]:
        return list(self._tally(record).compromised)

    def rotated(self, record: CredentialRecord) -> None:
        """The upstream value no longer matches any leaked one."""
        tally = self._tally(record)
        if tally.compromised:
            tally.compromised = []
            self.dirty.add(record.key)

    def touch(self, key: Key) -> None:
        self.dirty.add(key)

    def forget(self, key: Key) -> None:
        self.tallies.pop(key, None)
        self.dirty.discard(key)

    def desired(
        self, record: CredentialRecord, active: int, next_expiry: dt.datetime | None, now: dt.datetime
    ) -> dict[str, Any]:
        tally = self._tally(record)
        body = {"metadata": {"generation": record.generation}, "status": record.status}
        status = spec_status(body, record.verdict(now.date()), now)
        if tally.source_checked:
            available = tally.source_problem is None
            reason, message = tally.source_problem or ("Issued", "the last value was issued from the source")
            status["conditions"] = conditions.set_condition(
                status["conditions"],
                type_=conditions.SOURCE_AVAILABLE,
                status="True" if available else "False",
                reason=reason,
                message=message,
                generation=record.generation,
                now=now,
            )
        if tally.compromised or any(c.get("type") == conditions.COMPROMISED for c in status["conditions"]):
            names = ", ".join(short(m.fingerprint) for m in tally.compromised)
            status["conditions"] = conditions.set_condition(
                status["conditions"],
                type_=conditions.COMPROMISED,
                status="True" if tally.compromised else "False",
                reason="LeakReported" if tally.compromised else "Rotated",
                message=f"a value of this credential was reported leaked (fingerprint {names}): no pod receives "
                "it again; rotate it in the upstream Secret"
                if tally.compromised
                else "the upstream Secret no longer holds a value reported leaked",
                generation=record.generation,
                now=now,
            )
        status.update(
            compromised=[m.to_json() for m in tally.compromised] or None,
            activeProjections=active,
            issuedTotal=tally.issued,
            renewedTotal=tally.renewed,
            revokedTotal=tally.revoked,
            lastIssued=tally.last_issued,
            nextExpiry=format_time(next_expiry) if next_expiry else None,
        )
        return status
