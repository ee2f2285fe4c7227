"""What a request is trying to do, derived from the request itself through the credential's
route: for a plain HTTP API the route's intent with its placeholders filled from the path,
body, headers or query; for MCP (JSON-RPC over Streamable HTTP) the `tools/call`'s tool name
and arguments from the body -- or, where the gateway sends no body, from the `Mcp-Method` and
`Mcp-Tool-Name` headers, but only on a route whose upstream enforces that they agree with the
body. Anything that cannot be read as exactly one call is refused, saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from ...api.gateway_model import HttpIntent, McpRoute, Route
from ..scope import Intent, intent_problem
from .requests import MCP_METHOD_HEADER, MCP_NAME_HEADERS, GatewayRequest, Refused

MAX_VALUE = 256  # characters in a tool, action or resource
PLACEHOLDER = re.compile(r"\{([a-z]+)((?:\.[A-Za-z0-9_-]+)+)\}")


@dataclass(frozen=True)
class Derived:
    """An intent to decide (`intent`), or a protocol message that calls nothing (`intent` None)."""

    intent: Intent | None
    kind: str  # http, mcp-call, mcp-protocol
    mcp: dict[str, Any] | None = None  # method, tool, arguments (None: not known, headers only)
    body: Any = None  # the parsed JSON body, where one was read


def derive(route: Route, request: GatewayRequest, path_params: dict[str, str]) -> Derived:
    if route.mcp is not None:
        return _mcp(route, route.mcp, request, path_params)
    assert route.intent is not None
    return _http(route, route.intent, request, path_params)


# -- plain HTTP ---------------------------------------------------------------------------


def _http(route: Route, intent: HttpIntent, request: GatewayRequest, path_params: dict[str, str]) -> Derived:
    needs_body = any(m.group(1) == "body" for t in (intent.tool, intent.action, intent.resource) for m in _found(t))
    body = _body_for(route, request) if needs_body else _optional_body(request)
    values = {
        dimension: fill(route, getattr(intent, dimension), request, path_params, body, None)
        for dimension in ("tool", "action", "resource")
    }
    return Derived(_checked(Intent(**values)), "http", None, body)


def _optional_body(request: GatewayRequest) -> Any:
    """The body for conditions, if it is JSON; a body that is not JSON is simply not there."""
    if request.body is None or not request.body or request.body_truncated:
        return None
    if "json" not in request.headers.get("content-type", ""):
        return None
    return request.json_body()


def _body_for(route: Route, request: GatewayRequest) -> Any:
    if request.body is None:
        raise Refused(
            "no-body",
            f"route {route.name} takes its intent from the request body, which this gateway does not send "
            "(forward-auth sends headers only): send bodies to agentcred (Envoy ext_authz with_request_body) "
            "or take the intent from the path",
        )
    return request.json_body()


def _found(template: str) -> list[re.Match[str]]:
    return list(PLACEHOLDER.finditer(template))


def fill(
    route: Route, template: str, request: GatewayRequest, path_params: dict[str, str], body: Any, arguments: Any
) -> str:
    """A template with each placeholder replaced by the request's value; Refused when one is
    missing or is not a plain string or number."""

    def value(match: re.Match[str]) -> str:
        where, keys = match.group(1), match.group(2)[1:].split(".")
        source: Any
        if where == "path":
            source = path_params
        elif where == "header":
            source = request.visible_headers()
            keys = [k.lower() for k in keys]
        elif where == "query":
            source = {k: v[0] for k, v in parse_qs(request.query, max_num_fields=64).items() if len(v) == 1}
        elif where == "arguments":
            source = arguments
        else:
            source = body
        found = _dig(source, keys)
        shown = match.group(0)
        if found is None:
            raise Refused(
                "missing-value", f"route {route.name}: the request has no {shown[1:-1]} (needed for {template})"
            )
        if isinstance(found, bool) or not isinstance(found, str | int | float):
            raise Refused("bad-value", f"route {route.name}: {shown[1:-1]} is not a string or a number")
        return str(found)

    try:
        return PLACEHOLDER.sub(value, template)
    except ValueError:  # parse_qs: too many fields
        raise Refused("malformed-query", "the query string has too many parameters", 400) from None


def _dig(source: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(source, dict) or key not in source:
            return None
        source = source[key]
    return source


def _checked(intent: Intent) -> Intent:
    """Intents are literal: one plain spelling of one thing (see rules.scope.intent_problem)."""
    for dimension in ("tool", "action", "resource"):
        value = getattr(intent, dimension)
        problem = (
            intent_problem(value) if 0 < len(value) <= MAX_VALUE else f"is empty or longer than {MAX_VALUE} characters"
        )
        if problem is not None:
            shown = value if len(value) <= 80 else value[:80] + "..."
            raise Refused("invalid-intent", f"{dimension} {shown!r} {problem}")
    return intent


# -- MCP ----------------------------------------------------------------------------------


def _mcp(route: Route, mcp: McpRoute, request: GatewayRequest, path_params: dict[str, str]) -> Derived:
    if request.method in ("GET", "DELETE"):
        # The server's event stream, and ending the session: no message, no call.
        return Derived(None, "mcp-protocol", {"method": request.method})
    if request.method != "POST":
        raise Refused("mcp-method", f"{request.method} is not part of MCP's Streamable HTTP (POST, GET, DELETE)")
    if request.body is None:
        return _from_headers(route, mcp, request, path_params)
    message = request.json_body()
    if isinstance(message, list):
        raise Refused(
            "jsonrpc-batch",
            "JSON-RPC batches are refused: each tool call is decided on its own (MCP 2025-06-18 has no batches)",
            400,
        )
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise Refused("malformed-jsonrpc", "the body is not a JSON-RPC 2.0 message", 400)
    method = message.get("method")
    if method is None:
        raise Refused(
            "jsonrpc-response", "a JSON-RPC response is not a call: this route takes requests and notifications", 400
        )
    if not isinstance(method, str):
        raise Refused("malformed-jsonrpc", "the JSON-RPC method is not a string", 400)
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise Refused("malformed-jsonrpc", "the JSON-RPC params are not an object", 400)
    is_request = "id" in message
    if is_request and (isinstance(message["id"], bool) or not isinstance(message["id"], str | int)):
        raise Refused("malformed-jsonrpc", "the JSON-RPC id is not a string or an integer", 400)
    _agrees(request, method, params)
    if method != "tools/call":
        return _protocol(route, mcp, method)
    if not is_request:
        raise Refused(
            "jsonrpc-notification", "tools/call sent as a notification (no id): a tool call is a request", 400
        )
    tool = params.get("name")
    if not isinstance(tool, str) or not tool:
        raise Refused("malformed-jsonrpc", "tools/call names no tool (params.name)", 400)
    arguments = params.get("arguments", {})
    if not isinstance(arguments, dict):
        raise Refused("malformed-jsonrpc", "tools/call arguments are not an object", 400)
    intent = _mcp_intent(route, mcp, request, path_params, tool, arguments)
    return Derived(intent, "mcp-call", {"method": method, "tool": tool, "arguments": arguments}, message)


def _agrees(request: GatewayRequest, method: str, params: dict[str, Any]) -> None:
    """Headers that name the call must name this one: what an upstream reads from them is then
    what was decided."""
    said_method = request.headers.get(MCP_METHOD_HEADER)
    if said_method is not None and said_method != method:
        raise Refused(
            "header-mismatch", f"header Mcp-Method {said_method[:64]!r} disagrees with the body ({method[:64]!r})", 400
        )
    for header in MCP_NAME_HEADERS:
        said = request.headers.get(header)
        if said is not None and method == "tools/call" and said != params.get("name"):
            raise Refused("header-mismatch", f"header {header} disagrees with the body's tool name", 400)


def _protocol(route: Route, mcp: McpRoute, method: str) -> Derived:
    if method in mcp.protocol_methods:
        return Derived(None, "mcp-protocol", {"method": method})
    shown = method if len(method) <= 64 else method[:64] + "..."
    raise Refused(
        "mcp-method",
        f"MCP method {shown!r} is not allowed on route {route.name} (allowed: tools/call, "
        f"{', '.join(mcp.protocol_methods)})",
    )


def _from_headers(route: Route, mcp: McpRoute, request: GatewayRequest, path_params: dict[str, str]) -> Derived:
    if not mcp.header_agreement:
        raise Refused(
            "no-body",
            f"route {route.name} is an MCP endpoint and this gateway sends no body (forward-auth): what the call "
            "does can be read only from the Mcp-Method and Mcp-Tool-Name headers, and the route does not declare "
            "that its upstream refuses requests whose headers disagree with the body (mcp.headerAgreement); send "
            "bodies to agentcred (Envoy ext_authz with_request_body) instead",
        )
    method = request.headers.get(MCP_METHOD_HEADER)
    if not method:
        raise Refused("mcp-headers", "send the Mcp-Method header: this gateway sends agentcred no body", 400)
    if method != "tools/call":
        return _protocol(route, mcp, method)
    names = {request.headers[h] for h in MCP_NAME_HEADERS if h in request.headers}
    if len(names) != 1:
        raise Refused(
            "mcp-headers",
            "a tools/call needs one tool name in Mcp-Name (or Mcp-Tool-Name): this gateway sends no body",
            400,
        )
    tool = names.pop()
    intent = _mcp_intent(route, mcp, request, path_params, tool, None)
    return Derived(intent, "mcp-call", {"method": method, "tool": tool, "arguments": None})


def _mcp_intent(
    route: Route,
    mcp: McpRoute,
    request: GatewayRequest,
    path_params: dict[str, str],
    tool: str,
    arguments: dict[str, Any] | None,
) -> Intent:
    if arguments is None and any(m.group(1) in ("arguments", "body") for m in _found(mcp.resource + mcp.action)):
        raise Refused(
            "no-body", f"route {route.name} takes its resource from the tool's arguments, which only the body carries"
        )
    action = fill(route, mcp.action, request, path_params, None, arguments)
    resource = fill(route, mcp.resource, request, path_params, None, arguments)
    return _checked(Intent(tool, action, resource))
