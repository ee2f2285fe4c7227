"""How a command that reaches a cluster or the operator ends: one line saying what is wrong,
and an exit code a script can tell apart from the command's own answer.

0 done; 1 the answer is no (`inventory --fail-on` found something, `verify` refused the token,
`trace`/`leak` do not know the value); 2 the command line is wrong (a flag, a value, a file that
cannot be read); 3 done in part (`revoke --evict` could not evict every pod); 4 the cluster or
the operator could not be reached (no usable kubeconfig, no answer, TLS refused, no answer in
time); 5 refused (401, 403, or the request itself); 6 not found (the AgentCredential, pod,
ServiceAccount or namespace named).
"""

from __future__ import annotations

import json
import ssl
from typing import Any

DONE, ANSWER_IS_NO, USAGE, PARTLY, UNREACHABLE, REFUSED, NOT_FOUND = range(7)


class CommandFailed(Exception):
    """A command could not do its work; `code` is its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def api_message(error: Any) -> str:
    """The Kubernetes Status message of an ApiException (its reason when there is none)."""
    try:
        return str(json.loads(error.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(error.reason or error.status)


def explain(error: BaseException) -> CommandFailed | None:
    """What a failure means for a person, or None for a bug (which keeps its traceback)."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError as Urllib3Error
    from urllib3.exceptions import MaxRetryError

    if isinstance(error, CommandFailed):
        return error
    if isinstance(error, ConfigException):
        return CommandFailed(
            UNREACHABLE,
            f"no usable kubeconfig ({error}): give --kubeconfig FILE, set KUBECONFIG, or write ~/.kube/config",
        )
    if isinstance(error, ApiException):
        message = api_message(error)
        status = error.status or 0
        if status == 404:
            return CommandFailed(NOT_FOUND, message)
        if status in (401, 403):
            return CommandFailed(REFUSED, f"the cluster refused ({status}): {message}")
        if status >= 500 or status == 0:
            return CommandFailed(UNREACHABLE, f"the cluster could not answer ({status}): {message}")
        return CommandFailed(REFUSED, f"the cluster refused the request ({status}): {message}")
    if isinstance(error, MaxRetryError):
        where = error.url or ""
        host = f"{error.pool.host}:{error.pool.port}" if error.pool is not None else where
        reason = str(error.reason).split("): ", 1)[-1]  # without the connection's repr
        return CommandFailed(UNREACHABLE, f"cannot reach the cluster at {host}: {reason}")
    if isinstance(error, (Urllib3Error, ssl.SSLError, ConnectionError)):
        return CommandFailed(UNREACHABLE, f"cannot reach the cluster: {error}")
    if isinstance(error, OSError) and error.filename:
        return CommandFailed(USAGE, f"cannot read {error.filename}: {error.strerror}")
    return None
