"""Leak reports, pure: what a report may hold, who may report what, the state of a traced
value, and the marks that keep a compromised static value out of pods.

A report names candidates in the shape secret-scanning services send (a JSON array of
`{token, type, url, source}`), or -- from `agentcred leak` -- a fingerprint or a token id
instead of the value. Whoever reports acts only within its remit (see `in_remit`): its own namespace, or
everywhere for a cluster-wide reporter; and values that turn out to be nobody's cost it, so
that guessing stops after a burst (`GUESS_RATE`, `GUESS_BURST`).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from ..api.fingerprints import is_fingerprint
from ..api.times import format_time, parse_time
from .verdicts import describe_validation_error

MAX_BODY = 1024 * 1024  # a batch larger than this is refused whole (413)
MAX_ITEMS = 1000
MAX_TOKEN = 16 * 1024  # no value we issue is longer; longer strings are not ours
MAX_FIELD = 2048
# Items a reporter may send that turn out to be nobody's (within its remit): a burst, then one a
# second. A scanner's false positives fit; guessing a static value does not.
GUESS_RATE, GUESS_BURST = 1.0, 100

State = Literal["live", "revoked", "expired", "superseded"]
Provenance = Literal["ours", "not-ours", "unknown"]
REDACTED = "[the reported value]"

Short = Annotated[str, StringConstraints(max_length=MAX_FIELD)]


class Candidate(BaseModel):
    """One reported string: the value (`token`), or a reference to one."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)  # scanners add their own fields

    token: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TOKEN)] | None = None
    fingerprint: Annotated[str, StringConstraints(max_length=128)] | None = None
    token_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        default=None, alias="tokenId"
    )
    type: Short | None = None
    url: Short | None = None
    source: Short | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Candidate:
        if sum(x is not None for x in (self.token, self.fingerprint, self.token_id)) != 1:
            raise ValueError("each item names exactly one of token, fingerprint, tokenId")
        # A value pasted where a fingerprint belongs would end up in the audit line.
        if self.fingerprint is not None and not is_fingerprint(self.fingerprint.strip()):
            raise ValueError("fingerprint is not an agentcred fingerprint (hmac-sha256:...)")
        return self

    @property
    def by_reference(self) -> bool:
        return self.token is None

    def origin(self) -> dict[str, str]:
        """Where it was found, for the audit line; never the value, even if a scanner put it
        into the URL or the source."""
        found = {"type": self.type, "url": self.url, "source": self.source}
        return {k: _without(v, self.token) for k, v in found.items() if v}


def _without(text: str, value: str | None) -> str:
    return text.replace(value, REDACTED) if value and len(value) >= 4 else text


class BadReport(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def parse_report(content_type: str | None, body: bytes) -> list[Candidate]:
    """The candidates of a report, or BadReport (with an HTTP status) saying why not."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise BadReport(415, "unsupported-media-type", "send the report as application/json")
    if len(body) > MAX_BODY:
        raise BadReport(413, "body-too-large", f"a report is at most {MAX_BODY} bytes: split the batch")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep to parse is malformed too
        raise BadReport(400, "malformed-body", "the report is not valid JSON") from None
    if not isinstance(data, list) or not data:
        raise BadReport(400, "malformed-body", "a report is a non-empty JSON array of {token, type, url, source}")
    if len(data) > MAX_ITEMS:
        raise BadReport(413, "too-many-items", f"a report holds at most {MAX_ITEMS} items: split the batch")
    candidates = []
    for index, item in enumerate(data):
        try:
            candidates.append(Candidate.model_validate(item))
        except ValidationError as error:
            # The message names the field, never the submitted string.
            message = describe_validation_error(error).replace("spec.", "")
            raise BadReport(400, "invalid-item", f"item {index}: {message}") from None
    return candidates


# -- who may report ------------------------------------------------------------------------


def parse_reporters(text: str) -> frozenset[str]:
    """`namespace/serviceaccount` entries, comma-separated; anything else is a configuration error.
    Two lists: a tenant's reporters (their remit, their own namespace) and cluster-wide ones."""
    entries = frozenset(entry.strip() for entry in text.split(",") if entry.strip())
    for entry in entries:
        namespace, _, name = entry.partition("/")
        if not namespace or not name or "/" in name:
            raise ValueError(f"leak reporter {entry!r} is not namespace/serviceaccount")
    return entries


def in_remit(reporter_namespace: str, everywhere: bool, target_namespace: str) -> bool:
    """A tenant's reporter learns and acts in its own namespace only; a cluster-wide reporter
    (listed apart, by cluster admins) everywhere. Holding a value was once proof enough to act
    anywhere, and a fingerprint or token id enough in the operator's namespace: but a static
    value can be guessed (`hunter2`, a thousand guesses a request), and a fingerprint read off an
    Event; a tenant's reporter used both to learn and revoke another tenant's credentials."""
    return everywhere or reporter_namespace == target_namespace


# -- what state a value is in --------------------------------------------------------------


def token_state(
    *,
    expires_at: dt.datetime,
    issued_at: dt.datetime,
    token_id: str | None,
    covered: bool,
    live_token_id: str | None,
    live_issued_at: dt.datetime | None,
    now: dt.datetime,
) -> State:
    """A minted (or exchanged) token's state from its claims, the revocation list and what its
    pod holds now: `live_*` describe the pod's current value of that credential, if any."""
    if expires_at <= now:
        return "expired"
    if covered:
        return "revoked"
    if live_token_id is not None and live_token_id != token_id and live_issued_at and live_issued_at > issued_at:
        return "superseded"
    return "live"  # the pod's value, an exchanged token, or one whose pod ended unnoticed: it verifies


# -- compromised static values -------------------------------------------------------------


@dataclass(frozen=True)
class Compromise:
    fingerprint: str
    upstream_version: str | None
    reported_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "upstreamVersion": self.upstream_version,
            "reportedAt": format_time(self.reported_at),
        }

    @classmethod
    def from_json(cls, data: Any) -> Compromise | None:
        try:
            return cls(str(data["fingerprint"]), data.get("upstreamVersion"), parse_time(str(data["reportedAt"])))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def still_compromised(mark: Compromise, same_key_fingerprint: str | None, upstream_version: str | None) -> bool:
    """Does the upstream value still match the leaked one? Compared by fingerprint under the
    key that made the mark; once that key is gone, any change of the Secret counts as rotation."""
    if same_key_fingerprint is not None:
        return same_key_fingerprint == mark.fingerprint
    return upstream_version == mark.upstream_version
