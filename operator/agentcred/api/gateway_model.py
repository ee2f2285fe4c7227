"""How a credential is used through gateways: the routes that turn a request into an intent,
the conditions a call must meet (CEL), and where the value goes upstream.

A gateway (Envoy's ext_authz, Caddy's forward_auth, nginx's auth_request, ...) asks agentcred
about each request; the pod's credential whose route matches the request's host, method and
path is the one decided on. These models are the CRD's schema (see `crd.py`), so the API
server refuses malformed routes and conditions with a message naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, model_validator

from .schema import Model
from .schema import cel as cel_rule

# A placeholder takes a value from the request: {body.model} (a JSON body's field, dotted),
# {path.deployment} (a named segment of the route's path), {arguments.collection} (an MCP
# tool call's argument), {header.x-tenant}, {query.version}.
PLACEHOLDER = r"\{(body|arguments|path|header|query)(\.[A-Za-z0-9_-]{1,64}){1,8}\}"
TEMPLATE = rf"^([!-)+->@-Z^-z|~]|{PLACEHOLDER})+$"  # printable ASCII except { } * ? [ ] \ and space
# A path: literal segments (never . or ..), named segments {name}, an optional trailing /* (any rest).
ROUTE_PATH = (
    r"^(/(\.?[A-Za-z0-9_~!$&'()+,;=:@%-][A-Za-z0-9._~!$&'()+,;=:@%-]*|\{[A-Za-z][A-Za-z0-9_]{0,31}\}))*(/\*|/)?$"
)
HOST = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(:[0-9]{1,5})?$"
HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
METHOD = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# What a client sends on an MCP endpoint that calls no tool: the session's lifecycle.
DEFAULT_PROTOCOL_METHODS = (
    "initialize",
    "server/discover",
    "notifications/initialized",
    "notifications/cancelled",
    "ping",
    "tools/list",
)

Template = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=TEMPLATE)]
ConditionName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
McpMethod = Annotated[str, StringConstraints(pattern=r"^[a-z][A-Za-z0-9_/]*$", max_length=64)]


def compile_cel(expression: str) -> Any:
    """The compiled program for a CEL expression (raises for one that does not compile).

    The `cel` package is imported here, on the first condition: its `__init__` also imports its
    command line (typer, rich, prompt_toolkit), 12 MB of an operator's memory that no install
    without conditions should pay."""
    import cel  # noqa: PLC0415 (see above)

    return cel.compile(expression)


def _compiles(expression: str) -> str:
    """Caught here, a broken condition makes the credential not Ready, naming the field; never a
    call allowed or refused by an expression nobody could read."""
    try:
        compile_cel(expression)
    except Exception as error:  # the package raises ValueError for syntax, others for the rest
        raise ValueError(f"not a valid CEL expression: {str(error).splitlines()[0]}") from None
    return expression


class HttpIntent(Model):
    """The intent a plain HTTP request is decided as: each part a literal or a template."""

    tool: Template = Field(description="The tool, e.g. llm. Placeholders: {body.x}, {path.x}, {header.x}, {query.x}.")
    action: Template = Field(description="The action, e.g. invoke.")
    resource: Template = Field(description="The resource, e.g. model:{body.model} or model:{path.deployment}.")


class McpRoute(Model):
    """An MCP endpoint (JSON-RPC over Streamable HTTP): each `tools/call` is decided as the
    intent (the call's tool name, `action`, `resource`); a batch, a malformed message, a
    `tools/call` sent as a notification, or a method not listed is refused."""

    action: Template = Field(default="call", description="The action of every tool call on this route. Default call.")
    resource: Template = Field(
        description="The resource a tool call touches, e.g. docs:handbook or docs:{arguments.collection}."
    )
    protocol_methods: Annotated[list[McpMethod], Field(max_length=32)] = Field(
        default=list(DEFAULT_PROTOCOL_METHODS),
        description="JSON-RPC methods allowed without a tool intent (the session's lifecycle). Default: "
        + ", ".join(DEFAULT_PROTOCOL_METHODS)
        + ". GET (the server's event stream) and DELETE (ending the session) carry no call and are allowed.",
    )
    header_agreement: bool = Field(
        default=False,
        description="The upstream server refuses a request whose Mcp-Method and Mcp-Name (or Mcp-Tool-Name) headers "
        "disagree "
        "with its body. Only then may a gateway that sends no body (forward-auth) have a tool call decided from "
        "those headers; otherwise such a call is refused.",
    )


class Route(Model):
    """Which requests a credential is used for, and the intent each one is decided as."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule(
                    "[has(self.intent), has(self.mcp)].filter(x, x).size() == 1",
                    "a route sets exactly one of intent (a plain HTTP API) and mcp (an MCP endpoint)",
                )
            ]
        }
    )

    name: ConditionName = Field(description="Names the route in audit lines (the rule that decided).")
    host: Annotated[str, StringConstraints(pattern=HOST, max_length=261)] | None = Field(
        default=None, description="The request's host (with :port to pin the port); any host when unset. Lowercase."
    )
    methods: Annotated[list[METHOD], Field(max_length=7, json_schema_extra={"x-kubernetes-list-type": "set"})] = Field(
        default=[], description="HTTP methods the route matches; every method when empty."
    )
    path: Annotated[str, StringConstraints(pattern=ROUTE_PATH, min_length=1, max_length=512)] = Field(
        description="The path: exact, with named segments ({deployment}) and an optional trailing /* for any rest."
    )
    intent: HttpIntent | None = Field(default=None, description="A plain HTTP API: the intent of each request.")
    mcp: McpRoute | None = Field(default=None, description="An MCP endpoint: each tools/call is an intent.")
    audience: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        default=None,
        description="For jwt sources: the audience of the token attached upstream, one of source.jwt.audiences "
        "(default: the only one).",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Route:
        if (self.intent is None) == (self.mcp is None):
            raise ValueError("a route sets exactly one of intent (a plain HTTP API) and mcp (an MCP endpoint)")
        return self


class Condition(Model):
    """A CEL expression a call must make true. It sees `request` (method, host, path, query,
    headers -- lowercase names, the agent's credentials left out), `intent` (tool, action,
    resource), `mcp` (method, tool, arguments: on MCP routes), `body` (a JSON body, or null),
    `pod` (name, namespace, serviceAccount, job, labels), `credential` (name, category) and
    `now` (a timestamp). False refuses the call; an error refuses it too."""

    name: ConditionName = Field(description="Names the condition in refusals and audit lines.")
    expression: Annotated[str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_compiles)] = Field(
        description="A CEL expression that must evaluate to true, e.g. size(mcp.arguments.query) <= 200."
    )
    message: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        default=None, description="What a refusal says (default: the condition's name and expression)."
    )


class UpstreamHeader(Model):
    """Where the value goes on the request the gateway sends upstream."""

    name: Annotated[str, StringConstraints(pattern=HEADER_NAME, max_length=64)] = Field(
        default="Authorization", description="The header. Default Authorization."
    )
    prefix: Annotated[str, StringConstraints(pattern=r"^[ -~]*$", max_length=32)] = Field(
        default="Bearer ", description='Put before the value. Default "Bearer "; "" for a bare API key.'
    )


class GatewayUse(Model):
    """How gateways use this credential: the requests it is for and what they may do."""

    routes: Annotated[list[Route], Field(min_length=1, max_length=32)] = Field(
        description="The requests this credential is used for (first match wins)."
    )
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default=[], description="CEL conditions every call must meet (besides the scope)."
    )
    upstream: UpstreamHeader = Field(
        default_factory=UpstreamHeader,
        description="The header the gateway sets upstream (the agent's own Authorization is always removed).",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayUse:
        for kind, names in (("route", [r.name for r in self.routes]), ("condition", [c.name for c in self.conditions])):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{kind} names must be unique: {', '.join(duplicates)}")
        return self


class PolicyGateway(Model):
    """What a cluster admin requires of every call through a gateway with the credentials a
    policy allows."""

    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default=[], description="CEL conditions every such call must meet, besides the credential's own."
    )


Delivery = Literal["secret", "csi", "gateway"]
DELIVERIES: tuple[str, ...] = Delivery.__args__  # type: ignore[attr-defined]


def placeholders(template: str) -> list[tuple[str, tuple[str, ...]]]:
    """The placeholders of a template: (where, path), e.g. ("body", ("model",))."""
    found = []
    for match in re.finditer(r"\{([a-z]+)((?:\.[A-Za-z0-9_-]+)+)\}", template):
        found.append((match.group(1), tuple(match.group(2)[1:].split("."))))
    return found
