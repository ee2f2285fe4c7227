"""Which of a pod's credentials a request is for: the one whose route matches its host,
method and path (first matching route of each credential; two credentials matching is a
misconfiguration, refused rather than guessed)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from ...api.gateway_model import Route
from ...rules.credentials import CredentialRecord
from .requests import GatewayRequest, Refused


@dataclass(frozen=True)
class Matched:
    record: CredentialRecord
    route: Route
    path_params: dict[str, str]


@functools.lru_cache(maxsize=4096)
def _segments(pattern: str) -> tuple[tuple[str, ...], bool]:
    """A route path as its segments, and whether it ends in /* (any rest)."""
    rest = pattern.endswith("/*")
    body = pattern[:-2] if rest else pattern
    return tuple(body.split("/")[1:]) if body else (), rest


def match_path(pattern: str, path: str) -> dict[str, str] | None:
    """The named segments' values if `path` matches the route path `pattern`, else None."""
    segments, rest = _segments(pattern)
    parts = path.split("/")[1:]
    if len(parts) < len(segments) or (not rest and len(parts) != len(segments)):
        return None
    found: dict[str, str] = {}
    for want, got in zip(segments, parts[: len(segments)], strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return None
            found[want[1:-1]] = got
        elif want != got:
            return None
    return found


def host_matches(route_host: str | None, host: str) -> bool:
    """A route's host without a port matches the host on any port; with one, only that port."""
    if route_host is None:
        return True
    return route_host == (host if ":" in route_host else host.partition(":")[0])


def match(route: Route, request: GatewayRequest) -> dict[str, str] | None:
    if route.methods and request.method not in route.methods:
        return None
    if not host_matches(route.host, request.host):
        return None
    return match_path(route.path, request.path)


def select(records: Iterable[CredentialRecord], request: GatewayRequest, pod: str) -> Matched:
    """The one credential (and its route) the request is for, or Refused saying why."""
    found: list[Matched] = []
    for record in records:
        spec = record.spec
        if spec is None or spec.gateway is None:
            continue
        for route in spec.gateway.routes:
            params = match(route, request)
            if params is not None:
                found.append(Matched(record, route, params))
                break
    where = f"{request.method} {request.host}{request.path}"
    if not found:
        raise Refused(
            "no-route", f"no credential of pod {pod} has a gateway route for {where}: the call is not one it may make"
        )
    if len(found) > 1:
        names = ", ".join(sorted(m.record.name for m in found))
        raise Refused("ambiguous-route", f"{where} matches routes of several credentials of pod {pod} ({names})")
    return found[0]
