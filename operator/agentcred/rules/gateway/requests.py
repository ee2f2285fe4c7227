"""A request as a gateway describes it (Envoy's CheckRequest, or forward-auth's headers), in
one shape, and what of it can be trusted to name one thing.

Pure: gateways' messages are translated into `GatewayRequest` by the runtime; here are the
bounds every request is held to (body size, JSON nesting, path spellings).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_BODY = 1024 * 1024  # a body larger than this is refused, never parsed
MAX_DEPTH = 32  # JSON nesting in a body
MAX_ITEMS = 100_000  # values in a parsed body (arrays and objects included)
MAX_HEADERS = 128
# The agent's own credentials: never passed to conditions, always removed upstream.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "dpop"})
MCP_METHOD_HEADER = "mcp-method"
# The tool's name: `Mcp-Name` as MCP 2026-07-28 (and its SDKs) send it, `Mcp-Tool-Name` as some
# gateways spell it. Either, if sent, must agree with the body.
MCP_NAME_HEADERS = ("mcp-name", "mcp-tool-name")


class Refused(Exception):
    """The call is refused before any decision: `reason` a short bounded code, `message` why,
    `status` the HTTP status the gateway answers the agent with."""

    def __init__(self, reason: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.reason, self.message, self.status = reason, message, status


@dataclass(frozen=True)
class GatewayRequest:
    method: str
    host: str  # lowercase, as the agent addressed it (with :port when it gave one)
    path: str  # without the query
    query: str
    headers: Mapping[str, str]  # lowercase names
    body: bytes | None  # None: the gateway sent no body (forward-auth, or not configured to)
    body_truncated: bool = False  # the gateway cut the body at its own limit
    request_id: str = ""
    source: str = ""  # the downstream address the gateway reports
    scheme: str = "https"  # as the agent addressed the gateway: what a DPoP proof's htu names
    _json: list[Any] = field(default_factory=list, compare=False, repr=False)

    def json_body(self) -> Any:
        """The body parsed as JSON, within bounds (parsed once); Refused otherwise."""
        if self._json:
            return self._json[0]
        if self.body is None:
            raise Refused("no-body", "the gateway sent no body", 403)
        parsed = parse_json(self.body, self.body_truncated)
        self._json.append(parsed)
        return parsed

    def visible_headers(self) -> dict[str, str]:
        """Headers conditions may read: the agent's credentials left out."""
        return {k: v for k, v in self.headers.items() if k not in CREDENTIAL_HEADERS}


def split_uri(uri: str) -> tuple[str, str]:
    path, _, query = uri.partition("?")
    return path or "/", query


def parse_json(body: bytes, truncated: bool = False) -> Any:
    if truncated:
        raise Refused("body-truncated", f"the gateway cut the body short: bodies up to {MAX_BODY} bytes are decided")
    if len(body) > MAX_BODY:
        raise Refused("body-too-large", f"the body is larger than {MAX_BODY} bytes", 413)
    try:
        text = body.decode("utf-8")
        parsed = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise Refused("malformed-body", "the body is not JSON (UTF-8)", 400) from None
    except RecursionError:  # nested past the parser's own limit
        raise Refused("body-too-deep", f"the body nests JSON deeper than {MAX_DEPTH}", 400) from None
    _bounded(parsed)
    return parsed


def _bounded(value: Any) -> None:
    """Nesting and size within bounds, checked without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    count = 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_ITEMS:
            raise Refused("body-too-large", f"the body holds more than {MAX_ITEMS} JSON values", 413)
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise Refused("body-too-deep", f"the body nests JSON deeper than {MAX_DEPTH}", 400)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


AMBIGUOUS_PATH = ("//", "/./", "/../", "\\", "%2f", "%2e", "%5c", "%00")


def path_problem(path: str) -> str | None:
    """Why a path cannot be matched against routes literally, or None: routes and denials name
    one spelling of a path, so another spelling of it is refused."""
    if not path.startswith("/"):
        return "does not start with /"
    if len(path) > 2048:
        return "is longer than 2048 characters"
    if not path.isascii() or not path.isprintable() or " " in path:
        return "has characters outside printable ASCII"
    lowered = path.lower()
    if any(part in lowered for part in AMBIGUOUS_PATH) or path.endswith(("/.", "/..")):
        return "has a spelling (// /./ /../ \\ or an encoded / . \\ or NUL) that could name another path"
    return None


def header_map(pairs: Any) -> dict[str, str]:
    """Lowercase names; a header given twice is refused (which value a route read would be a guess)."""
    headers: dict[str, str] = {}
    count = 0
    for name, value in pairs:
        count += 1
        if count > MAX_HEADERS:
            raise Refused("too-many-headers", f"the request has more than {MAX_HEADERS} headers", 400)
        key = str(name).lower()
        if key in headers and key in (MCP_METHOD_HEADER, *MCP_NAME_HEADERS, "host", "authorization", "dpop"):
            raise Refused("duplicate-header", f"header {key} is given more than once", 400)
        headers[key] = str(value)
    return headers


def bearer(headers: Mapping[str, str]) -> str | None:
    """The agent's token from `Authorization: Bearer <token>` (RFC 6750 §2.1) or
    `Authorization: DPoP <token>` (RFC 9449 §7.1), or None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() in ("bearer", "dpop") and token else None


def authorization_scheme(headers: Mapping[str, str]) -> str:
    return headers.get("authorization", "").partition(" ")[0]


def request_url(request: GatewayRequest) -> str:
    """The URL the agent addressed, as a DPoP proof's `htu` names it (no query)."""
    scheme = request.scheme.lower() if request.scheme.lower() in ("http", "https") else "https"
    return f"{scheme}://{request.host}{request.path}"
