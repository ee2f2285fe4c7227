"""Kopf registrations. Each handler translates an event into calls to plain functions.

Importing this module registers the handlers in Kopf's default registry.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import kopf

from . import model
from .evaluation import evaluate
from .settings import OperatorConfig, configure_kopf
from .status import spec_status, status_patch

CONFIG = OperatorConfig.from_env()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure_kopf(settings, CONFIG)


@kopf.on.event(model.GROUP, model.VERSION, model.PLURAL)
async def credential_event(
    type: str, body: kopf.Body, patch: kopf.Patch, logger: logging.Logger, **_: Any
) -> None:
    if type == "DELETED" or body.metadata.get("deletionTimestamp"):
        return
    now = dt.datetime.now(dt.timezone.utc)
    created = _creation_date(body) or now.date()
    verdict = evaluate(dict(body.spec), created=created, today=now.date())
    current = dict(body.status or {})
    changes = status_patch(current, spec_status(dict(body), verdict, now))
    if not changes:
        return
    patch.status.update(changes)
    was_ready = _ready_status(current)
    is_ready = "True" if verdict.ready else "False"
    if was_ready != is_ready:
        kopf.event(body, type="Normal" if verdict.ready else "Warning", reason=verdict.reason, message=verdict.message)
        logger.info("credential %s: Ready=%s (%s)", body.metadata.name, is_ready, verdict.reason)


def _creation_date(body: kopf.Body) -> dt.date | None:
    created = body.metadata.get("creationTimestamp")
    return dt.datetime.fromisoformat(created.replace("Z", "+00:00")).date() if created else None


def _ready_status(status: dict[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status")
    return None
