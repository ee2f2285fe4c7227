"""Conditions over a call, in CEL: compiled once per expression (when a credential or policy
first brings it), evaluated per call against what the call is. False, or any error, refuses.

What an expression sees: `request` (method, host, path, query, headers -- lowercase names,
the agent's credentials left out), `intent` (tool, action, resource), `mcp` (method, tool,
arguments; null off MCP routes, arguments null where the gateway sent no body), `body` (the
JSON body, or null), `pod` (name, namespace, serviceAccount, job, labels), `credential`
(name, category) and `now` (a timestamp).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...api.gateway_model import Condition, compile_cel
from ...api.pods import PodTask
from ..scope import Intent
from .requests import GatewayRequest


@dataclass(frozen=True)
class Failed:
    rule: str  # which condition: "condition:<name>" or "policy:<policy>/condition:<name>"
    reason: str  # condition-false | condition-error
    message: str


@functools.lru_cache(maxsize=4096)
def compiled(expression: str) -> Any:
    """The compiled program for an expression (raises for one that does not compile: the
    credential's schema refused it already)."""
    return compile_cel(expression)


def activation(
    request: GatewayRequest,
    intent: Intent | None,
    mcp: dict[str, Any] | None,
    body: Any,
    task: PodTask,
    credential: str,
    category: str,
    now: dt.datetime,
) -> dict[str, Any]:
    return {
        "request": {
            "method": request.method,
            "host": request.host,
            "path": request.path,
            "query": request.query,
            "headers": request.visible_headers(),
        },
        "intent": intent.as_dict() if intent is not None else None,
        "mcp": mcp,
        "body": body,
        "pod": {
            "name": task.name,
            "namespace": task.namespace,
            "serviceAccount": task.service_account,
            "job": task.job,
            "labels": dict(task.pod_labels),
        },
        "credential": {"name": credential, "category": category},
        "now": now,
    }


def first_failure(conditions: Sequence[tuple[str, Condition]], context: dict[str, Any]) -> Failed | None:
    """The first condition (prefix, condition) the call does not meet, or None: all hold."""
    for prefix, condition in conditions:
        rule = f"{prefix}condition:{condition.name}"
        try:
            result = compiled(condition.expression).execute(context)
        except Exception as error:  # the evaluator's errors are RuntimeError, TypeError, ValueError, ...
            detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            return Failed(
                rule, "condition-error", f"condition {condition.name} could not be evaluated ({detail}): refused"
            )
        if result is not True:
            said = condition.message or f"condition {condition.name} ({condition.expression[:200]}) is not met"
            return Failed(rule, "condition-false", said)
    return None
