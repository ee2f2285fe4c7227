"""The audit log: one JSON line per issue, renew, revoke, deny and exchange.

Each line ties an action to one credential, one pod (name and UID), one Job and one
ServiceAccount, with a token id or a value fingerprint -- never the value itself.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, Literal

from . import metrics

# `void` follows an issue/renew/revoke line (written ahead of the act) when the act failed.
Action = Literal["issue", "renew", "revoke", "deny", "exchange", "void"]

logger = logging.getLogger("agentcred.audit")


def configure(destination: str) -> None:
    """Send audit lines, unformatted, to stdout ("-") or append them to a file."""
    handler: logging.Handler = (
        logging.StreamHandler(sys.stdout) if destination == "-" else logging.FileHandler(destination)
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def record(action: Action, count: bool = True, **fields: Any) -> dict[str, Any]:
    """Write one line; `count=False` when the act is still to happen (its caller counts it)."""
    entry = {
        "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "audit": "agentcred",
        "action": action,
        **{key: value for key, value in fields.items() if value is not None},
    }
    logger.info(json.dumps(entry, sort_keys=False, default=str))
    if count:
        metrics.observe_audit(entry)
    return entry
