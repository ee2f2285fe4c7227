"""The `webhook` source: an external minting service called over HTTPS.

The contract (also in the README):

  POST <url>         {"credential", "namespace", "category", "subject", "serviceAccount",
                      "pod", "podUID", "job", "scope", "ttlSeconds"}
    -> 200/201       {"value": "<the credential>", "expiresAt": "<RFC 3339>" (optional),
                      "id": "<the service's id for it>" (optional, needed to revoke)}
  POST <url>/revoke  {"id", "credential", "namespace", "pod", "podUID", "reason"} -> 2xx

Each call has a timeout; connection errors, timeouts, 429 and 5xx are retried with backoff;
other answers are final. Failures become a SourceUnavailable with a reason, so the pod stays
gated, the AgentCredential gets a condition and the pod an Event; nothing is written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from ..api.durations import parse_duration
from ..api.model import HEALTH_PATH, SourceKind
from ..api.pods import PodTask
from ..api.projection import IssuedValue, Subject
from ..api.reasons import SourceReason
from ..api.times import parse_time
from ..rules.credentials import UNHEALTHY, CredentialRecord, SourceProblem
from ..rules.planning import Issue
from .base import Produced, SourceUnavailable
from .claims import credential_scope, service_account_subject

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
BACKOFF = (0.2, 0.6)  # pauses before the 2nd and 3rd attempts
RETRIABLE = {429, 500, 502, 503, 504}
MAX_REPLY = 64 * 1024


class _Retriable(Exception):
    def __init__(self, reason: SourceReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class MintingServiceSource:
    """Calls minting services, at most `per_namespace` at a time for each tenant, so a service
    that hangs ties up its own tenant's calls and no one else's. A revoke call runs in the
    background; if it fails, `on_revoke_failure` hears of it."""

    kind: SourceKind = "webhook"

    def __init__(
        self,
        fingerprint: Callable[[bytes], str],
        per_namespace: int = 8,
        on_revoke_failure: Callable[[CredentialRecord, str], None] = lambda record, message: None,
    ) -> None:
        self._fingerprint = fingerprint
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._per_namespace = per_namespace
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.on_revoke_failure = on_revoke_failure

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _ssl(self, ca_bundle: str | None) -> ssl.SSLContext:
        key = ca_bundle or ""
        if key not in self._contexts:
            self._contexts[key] = (
                ssl.create_default_context(cadata=ca_bundle) if ca_bundle else ssl.create_default_context()
            )
        return self._contexts[key]

    async def _post(self, record: CredentialRecord, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        spec = record.spec
        assert spec is not None and spec.source.webhook is not None
        source = spec.source.webhook
        timeout = parse_duration(source.timeout).total_seconds() if source.timeout else DEFAULT_TIMEOUT
        if self._session is None:
            self._session = aiohttp.ClientSession()
        last: _Retriable | None = None
        for attempt in range(len(BACKOFF) + 1):
            if attempt:
                await asyncio.sleep(BACKOFF[attempt - 1])
            try:
                async with self._slots.setdefault(record.namespace, asyncio.Semaphore(self._per_namespace)):
                    return await self._attempt(url, payload, timeout, self._ssl(source.ca_bundle))
            except _Retriable as retriable:
                last = retriable
        assert last is not None
        raise SourceUnavailable(
            last.reason,
            f"AgentCredential {record.name}: minting service {url} {last.detail} ({len(BACKOFF) + 1} attempts)",
        )

    async def _attempt(
        self,
        url: str,
        payload: dict[str, Any],
        timeout: float,  # noqa: ASYNC109 -- the credential's own call timeout, handed to aiohttp
        context: ssl.SSLContext,
    ) -> dict[str, Any]:
        assert self._session is not None
        try:
            # Never follow a redirect: the policy approved this URL, not wherever it points.
            async with self._session.post(
                url, json=payload, ssl=context, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
            ) as response:
                text = (await response.content.read(MAX_REPLY)).decode("utf-8", errors="replace")
                if 300 <= response.status < 400:
                    raise SourceUnavailable(
                        "MintingServiceRefused",
                        f"minting service {url} redirected (HTTP {response.status}): redirects are not followed",
                    )
                if response.status in RETRIABLE:
                    raise _Retriable("MintingServiceError", f"answered HTTP {response.status}")
                if response.status >= 300:
                    raise SourceUnavailable(
                        "MintingServiceRefused",
                        f"minting service {url} refused with HTTP {response.status}: {_short(_error_of(text))}",
                    )
                return {"status": response.status, "text": text}
        except TimeoutError:
            raise _Retriable("MintingServiceTimeout", f"did not answer within {timeout:g}s") from None
        except aiohttp.ClientConnectorError as error:
            raise _Retriable(
                "MintingServiceUnreachable", f"is unreachable ({_short(str(error.os_error or error), 120)})"
            ) from None
        except aiohttp.ClientError as error:
            raise _Retriable("MintingServiceUnreachable", f"failed: {_short(type(error).__name__)}") from None

    async def probe(self, record: CredentialRecord) -> SourceProblem | None:
        """GET <url>/healthz once, within the call timeout: None if it answers 2xx, else a
        (reason, message) saying what failed. Never follows a redirect."""
        spec = record.spec
        assert spec is not None and spec.source.webhook is not None
        source = spec.source.webhook
        url = source.url.rstrip("/") + HEALTH_PATH
        timeout = parse_duration(source.timeout).total_seconds() if source.timeout else DEFAULT_TIMEOUT
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(
                url,
                ssl=self._ssl(source.ca_bundle),
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,
            ) as response:
                if 200 <= response.status < 300:
                    return None
                detail = f"answered HTTP {response.status}"
        except TimeoutError:
            detail = f"did not answer within {timeout:g}s"
        except aiohttp.ClientConnectorError as error:
            detail = f"is unreachable ({_short(str(error.os_error or error), 120)})"
        except aiohttp.ClientError as error:
            detail = f"failed: {_short(type(error).__name__)}"
        return SourceProblem(UNHEALTHY, f"the health check of the minting service, GET {url}, {detail}")

    async def produce(self, task: PodTask, record: CredentialRecord, issue: Issue, now: dt.datetime) -> Produced:
        spec = record.spec
        assert spec is not None and spec.source.webhook is not None
        url = spec.source.webhook.url
        payload = {
            "credential": record.name,
            "namespace": record.namespace,
            "category": spec.category,
            "subject": service_account_subject(task.namespace, task.service_account),
            "serviceAccount": task.service_account,
            "pod": task.name,
            "podUID": task.uid,
            "job": task.job,
            "scope": credential_scope(record),
            "ttlSeconds": int((issue.expires_at - now).total_seconds()),
        }
        reply = await self._post(record, url, payload)
        value, expires_at, token_id = _parse_reply(record, url, reply["text"], issue.expires_at, now)
        return Produced.of(
            value,
            kind=self.kind,
            record=record,
            issue=issue,
            now=now,
            fingerprint=self._fingerprint(value),
            token_id=token_id,
            expires_at=expires_at,
        )

    async def revoked(
        self,
        record: CredentialRecord | None,
        credential: str,
        value: IssuedValue,
        subject: Subject,
        reason: str,
        until: dt.datetime,
    ) -> None:
        if record is None or value.token_id is None or value.expires_at <= dt.datetime.now(dt.timezone.utc):
            return  # nothing the service could still revoke (or no longer a URL to call)
        task = asyncio.create_task(self._revoke(record, value.token_id, subject, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _revoke(self, record: CredentialRecord, token_id: str, subject: Subject, reason: str) -> None:
        spec = record.spec
        assert spec is not None and spec.source.webhook is not None
        url = spec.source.webhook.url.rstrip("/") + "/revoke"
        try:
            await self._post(
                record,
                url,
                {
                    "id": token_id,
                    "credential": record.name,
                    "namespace": record.namespace,
                    "pod": subject.pod,
                    "podUID": subject.pod_uid,
                    "reason": reason,
                },
            )
        except SourceUnavailable as failure:
            log.warning("%s", failure.message)
            self.on_revoke_failure(record, failure.message)


def _error_of(text: str) -> str:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # nested too deep is not JSON we read either
        return "(no JSON error)"
    if isinstance(data, dict):
        return str(data.get("error") or data.get("message") or "(no error field)")
    return "(no error field)"


def _parse_reply(
    record: CredentialRecord, url: str, text: str, planned: dt.datetime, now: dt.datetime
) -> tuple[bytes, dt.datetime, str | None]:
    def malformed(why: str) -> SourceUnavailable:
        return SourceUnavailable(
            "MintingServiceMalformedReply", f"AgentCredential {record.name}: minting service {url} replied {why}"
        )

    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # nested too deep is not JSON we read either
        raise malformed("with something that is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("value"), str) or not data["value"]:
        raise malformed("without a non-empty string 'value'")
    expires = planned
    if data.get("expiresAt") is not None:
        try:
            expires = parse_time(str(data["expiresAt"]))
        except ValueError:
            raise malformed("with an 'expiresAt' that is not an RFC 3339 time") from None
        if expires.tzinfo is None or expires <= now:
            raise malformed("with an 'expiresAt' that is not in the future")
        expires = min(expires, planned)
    token_id = data.get("id")
    if token_id is not None and not isinstance(token_id, str):
        raise malformed("with an 'id' that is not a string")
    return data["value"].encode(), expires, token_id
