"""OAuth 2.0 at agentcred's token endpoint: the grants it accepts, how a request is read, and
the errors a request ends in (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 7523, RFC 8707, RFC 9396).

Pure: a form body in, a `TokenRequest` -- or an `OAuthError` naming precisely what is wrong
-- out. Who the caller is and what it may have is decided by `runtime.token_service`.

An intent (tool, action, resource) is asked for in one of two documented shapes:

- `authorization_details` (RFC 9396), a JSON array of objects of type `agentcred.dev/tool`:
  `{"type": "agentcred.dev/tool", "tool": "web-search", "actions": ["read"],
  "identifier": "repo:acme/app", "locations": ["https://tools.agents.svc"]}` -- one intent
  per action; `locations` (optional) name the resource servers the token is for;
- `scope` strings, for clients that only speak scope: `tool:<tool>`, `action:<action>` and
  `resource:<resource>` tokens, asking for every combination of the tools, actions and
  resources named (as a credential's scope lists do).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .scope import Intent, intent_problem

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # RFC 8693
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1
CLIENT_CREDENTIALS = "client_credentials"  # with a jwt-bearer client assertion, RFC 7523 §2.2
GRANT_TYPES = (TOKEN_EXCHANGE, JWT_BEARER, CLIENT_CREDENTIALS)
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TOKEN_TYPES = (JWT_TOKEN_TYPE, ACCESS_TOKEN_TYPE)
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOOL_DETAILS_TYPE = "agentcred.dev/tool"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

MAX_BODY = 16 * 1024
MAX_FIELDS = 64
MAX_TARGETS = 8
MAX_DETAILS = 16
MAX_INTENTS = 64
MAX_VALUE = 256  # characters in a tool, action or resource
MAX_TARGET = 512  # characters in a resource or audience
# RFC 6749 §3.2 / RFC 8693 §2.1: these may be given more than once; every other parameter once.
REPEATABLE = frozenset({"resource", "audience"})
DETAIL_FIELDS = frozenset({"type", "tool", "actions", "identifier", "locations"})
SCOPE_PREFIXES = {"tool:": "tools", "action:": "actions", "resource:": "resources"}


class OAuthError(Exception):
    """A refusal as RFC 6749 §5.2 spells it: an error code, a description that says precisely
    why, and the HTTP status (400; 401 for client authentication; 429 to slow down)."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status, self.retry_after = error, description, status, retry_after
        self.headers = headers or {}  # beyond the RFC's own: DPoP-Nonce (RFC 9449 §8)

    def body(self) -> dict[str, str]:
        # RFC 6749 §5.2 allows only printable ASCII without `"` and `\` in a description.
        allowed = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in self.description)
        return {"error": self.error, "error_description": allowed}


def invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


Form = dict[str, list[str]]


def parse_form(content_type: str | None, body: bytes) -> Form:
    """The parameters of an `application/x-www-form-urlencoded` body. Parameters without a value
    count as absent (RFC 6749 §3.1); only `resource` and `audience` may repeat."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != FORM_CONTENT_TYPE:
        raise invalid_request(f"send the request as {FORM_CONTENT_TYPE}, not {media_type or 'no content type'}")
    if len(body) > MAX_BODY:
        raise invalid_request(f"the request body is larger than {MAX_BODY} bytes")
    try:
        text = body.decode("ascii")
        form = parse_qs(text, keep_blank_values=False, encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeError:
        raise invalid_request("the request body is not percent-encoded UTF-8") from None
    except ValueError:
        raise invalid_request(f"the request has more than {MAX_FIELDS} parameters") from None
    for name, values in form.items():
        if len(values) > 1 and name not in REPEATABLE:
            raise invalid_request(f"parameter {name} is given {len(values)} times: it may appear once")
    return form


def _one(form: Form, name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _required(form: Form, name: str, why: str) -> str:
    value = _one(form, name)
    if value is None:
        raise invalid_request(f"{name} is missing: {why}")
    return value


@dataclass(frozen=True)
class Requested:
    """One intent and how it was asked for ("scope" or "authorization_details"): a refusal
    names the parameter the client has to change."""

    intent: Intent
    via: str


@dataclass(frozen=True)
class TokenRequest:
    grant_type: str
    subject_token: str  # subject_token, assertion or client_assertion: who the pod is
    subject_token_type: str
    actor_token: str | None = None
    actor_token_type: str | None = None
    requested_token_type: str | None = None
    targets: tuple[str, ...] = ()  # resource and audience values, in order
    scope: tuple[str, ...] = ()  # the scope strings asked for, as given
    details: tuple[dict[str, Any], ...] = ()  # the authorization details asked for
    requested: tuple[Requested, ...] = ()  # every intent the scope and details ask for
    client_id: str | None = None

    @property
    def narrowed(self) -> bool:
        return bool(self.requested)


def parse_token_request(form: Form, authorization: str | None = None) -> TokenRequest:
    """What a token request asks for, or an OAuthError. Only grammar is checked here."""
    if (authorization or "").split(" ")[0].lower() == "basic" or _one(form, "client_secret") is not None:
        raise OAuthError(
            "invalid_client",
            "agentcred has no client secrets: authenticate with the pod's ServiceAccount token",
            status=401,
        )
    grant_type = _one(form, "grant_type")
    if grant_type is None:
        raise invalid_request(f"grant_type is missing: use one of {', '.join(GRANT_TYPES)}")
    if grant_type not in GRANT_TYPES:
        raise OAuthError(
            "unsupported_grant_type", f"grant_type {grant_type} is not supported: use one of {', '.join(GRANT_TYPES)}"
        )
    assertion_type = _one(form, "client_assertion_type")
    assertion = _one(form, "client_assertion")
    if grant_type == CLIENT_CREDENTIALS:
        if assertion is None or assertion_type != CLIENT_ASSERTION_TYPE:
            raise OAuthError(
                "invalid_client",
                f"client_credentials needs client_assertion (the pod's ServiceAccount token) with "
                f"client_assertion_type {CLIENT_ASSERTION_TYPE}",
                status=401,
            )
        subject, subject_type = assertion, JWT_TOKEN_TYPE
    elif assertion is not None or assertion_type is not None:
        raise invalid_request(
            "client_assertion is used only with grant_type client_credentials: with this grant the "
            "subject token alone identifies the pod"
        )
    elif grant_type == JWT_BEARER:
        subject = _required(form, "assertion", "send the pod's projected ServiceAccount token")
        subject_type = JWT_TOKEN_TYPE
    else:
        subject = _required(form, "subject_token", "send the pod's ServiceAccount token or its agentcred token")
        subject_type = _required(form, "subject_token_type", f"use {JWT_TOKEN_TYPE} or {ACCESS_TOKEN_TYPE}")
        if subject_type not in SUBJECT_TOKEN_TYPES:
            raise invalid_request(
                f"subject_token_type {subject_type} is not supported: use {JWT_TOKEN_TYPE} (the pod's "
                f"ServiceAccount token) or {ACCESS_TOKEN_TYPE} (a token agentcred issued)"
            )
    actor, actor_type = _actor(form, grant_type)
    requested_type = _one(form, "requested_token_type") if grant_type == TOKEN_EXCHANGE else None
    if requested_type is not None and requested_type not in SUBJECT_TOKEN_TYPES:
        raise invalid_request(
            f"requested_token_type {requested_type} is not issued here: agentcred issues JWT access "
            f"tokens ({ACCESS_TOKEN_TYPE} or {JWT_TOKEN_TYPE})"
        )
    targets = _targets(form)
    scope = tuple((_one(form, "scope") or "").split())
    details = _details(_one(form, "authorization_details"), targets)
    if not targets:
        targets = tuple(dict.fromkeys(loc for detail in details for loc in detail.get("locations", [])))
    requested = (*_scope_intents(scope), *_detail_intents(details))
    if len(requested) > MAX_INTENTS:
        raise OAuthError("invalid_scope", f"the request asks for {len(requested)} intents; at most {MAX_INTENTS}")
    return TokenRequest(
        grant_type=grant_type,
        subject_token=subject,
        subject_token_type=subject_type,
        actor_token=actor,
        actor_token_type=actor_type,
        requested_token_type=requested_type,
        targets=targets,
        scope=scope,
        details=details,
        requested=requested,
        client_id=_one(form, "client_id"),
    )


def _actor(form: Form, grant_type: str) -> tuple[str | None, str | None]:
    if grant_type != TOKEN_EXCHANGE:
        return None, None  # RFC 6749 §3.2: parameters a grant does not define are ignored
    actor, actor_type = _one(form, "actor_token"), _one(form, "actor_token_type")
    if (actor is None) != (actor_type is None):
        raise invalid_request("actor_token and actor_token_type go together (RFC 8693 §2.1): send both or neither")
    if actor_type is not None and actor_type not in SUBJECT_TOKEN_TYPES:
        raise invalid_request(
            f"actor_token_type {actor_type} is not supported: the actor is a ServiceAccount ({JWT_TOKEN_TYPE}) "
            f"or holds a token agentcred issued ({ACCESS_TOKEN_TYPE})"
        )
    return actor, actor_type


def target_problem(target: str) -> str | None:
    """Why a resource or audience value cannot name a target, or None."""
    if len(target) > MAX_TARGET:
        return f"is longer than {MAX_TARGET} characters"
    if not target.isascii() or not target.isprintable() or " " in target:
        return "has characters outside printable ASCII (spaces, look-alikes and controls are refused)"
    if "*" in target:
        return "has a wildcard: a token is for named targets only"
    return None


def _targets(form: Form) -> tuple[str, ...]:
    resources, audiences = form.get("resource") or [], form.get("audience") or []
    if len(resources) + len(audiences) > MAX_TARGETS:
        raise OAuthError("invalid_target", f"at most {MAX_TARGETS} resource and audience values together")
    for value in resources:
        problem = target_problem(value)
        if problem is not None:
            raise OAuthError("invalid_target", f"resource {value} {problem}")
        parts = urlsplit(value)
        if not parts.scheme or not (parts.netloc or parts.path) or parts.fragment or "#" in value:
            raise OAuthError(
                "invalid_target", f"resource {value} is not an absolute URI without a fragment (RFC 8707 §2)"
            )
    for value in audiences:
        problem = target_problem(value)
        if problem is not None:
            raise OAuthError("invalid_target", f"audience {value} {problem}")
    return tuple(dict.fromkeys([*resources, *audiences]))


def _details_error(index: int, problem: str) -> OAuthError:
    return OAuthError("invalid_authorization_details", f"authorization_details[{index}] {problem}")


def _strings(value: Any, index: int, name: str, limit: int) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise _details_error(index, f"{name} is not a non-empty array of strings")
    if len(value) > limit:
        raise _details_error(index, f"{name} has more than {limit} entries")
    return value


def _details(text: str | None, targets: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    if text is None:
        return ()
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # nested a thousand deep, the parser recurses out
        raise OAuthError("invalid_authorization_details", "authorization_details is not valid JSON") from None
    if not isinstance(parsed, list) or not parsed or not all(isinstance(item, dict) for item in parsed):
        raise OAuthError("invalid_authorization_details", "authorization_details is not a JSON array of objects")
    if len(parsed) > MAX_DETAILS:
        raise OAuthError("invalid_authorization_details", f"authorization_details has more than {MAX_DETAILS} entries")
    details = []
    for index, detail in enumerate(parsed):
        if detail.get("type") != TOOL_DETAILS_TYPE:
            raise _details_error(index, f"has type {detail.get('type')!r}: agentcred understands {TOOL_DETAILS_TYPE}")
        unknown = sorted(set(detail) - DETAIL_FIELDS)
        if unknown:
            raise _details_error(index, f"has fields {', '.join(unknown)} that {TOOL_DETAILS_TYPE} does not define")
        for name in ("tool", "identifier"):
            if not isinstance(detail.get(name), str) or not detail[name]:
                raise _details_error(index, f"needs {name}, a non-empty string")
        _strings(detail.get("actions"), index, "actions", MAX_DETAILS)
        if "locations" in detail:
            for location in _strings(detail["locations"], index, "locations", MAX_TARGETS):
                problem = target_problem(location) or (None if urlsplit(location).scheme else "is not an absolute URI")
                if problem is not None:
                    raise _details_error(index, f"location {location} {problem}")
                if targets and location not in targets:
                    raise _details_error(index, f"location {location} is not among the requested resource/audience")
        details.append(detail)
    return tuple(details)


def _checked(intent: Intent, via: str) -> Requested:
    for dimension in ("tool", "action", "resource"):
        value = getattr(intent, dimension)
        problem = intent_problem(value) if len(value) <= MAX_VALUE else f"is longer than {MAX_VALUE} characters"
        if problem is not None:
            error = "invalid_scope" if via == "scope" else "invalid_authorization_details"
            raise OAuthError(error, f"{dimension} {value!r} {problem}")
    return Requested(intent, via)


def _scope_intents(scope: tuple[str, ...]) -> list[Requested]:
    if not scope:
        return []
    named: dict[str, list[str]] = {"tools": [], "actions": [], "resources": []}
    for token in scope:
        prefix = next((p for p in SCOPE_PREFIXES if token.startswith(p) and len(token) > len(p)), None)
        if prefix is None:
            raise OAuthError(
                "invalid_scope", f"scope {token} is not one of tool:<tool>, action:<action>, resource:<resource>"
            )
        named[SCOPE_PREFIXES[prefix]].append(token[len(prefix) :])
    missing = [dimension for dimension, values in named.items() if not values]
    if missing:
        raise OAuthError(
            "invalid_scope", f"scope names no {' and no '.join(missing)}: name at least one tool, action and resource"
        )
    count = len(named["tools"]) * len(named["actions"]) * len(named["resources"])
    if count > MAX_INTENTS:
        raise OAuthError(
            "invalid_scope", f"scope asks for {count} tool/action/resource combinations; at most {MAX_INTENTS}"
        )
    return [
        _checked(Intent(tool, action, resource), "scope")
        for tool in dict.fromkeys(named["tools"])
        for action in dict.fromkeys(named["actions"])
        for resource in dict.fromkeys(named["resources"])
    ]


def _detail_intents(details: tuple[dict[str, Any], ...]) -> list[Requested]:
    return [
        _checked(Intent(detail["tool"], action, detail["identifier"]), "authorization_details")
        for detail in details
        for action in dict.fromkeys(detail["actions"])
    ]


def granted_intents(claims: dict[str, Any]) -> list[Intent] | None:
    """The intents a narrowed agentcred token grants (from its `authorization_details` and
    `scope` claims), or None if it is not narrowed (its `agentcred.scope` patterns apply)."""
    scope = claims.get("scope")
    details = claims.get("authorization_details")
    if scope is None and details is None:
        return None
    intents = [r.intent for r in _scope_intents(tuple(str(scope or "").split()))]
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("type") == TOOL_DETAILS_TYPE:
            actions = detail.get("actions")
            for action in actions if isinstance(actions, list) else []:
                intents.append(Intent(str(detail.get("tool")), str(action), str(detail.get("identifier"))))
    return intents


def authorization_server_metadata(
    issuer: str, algorithms: tuple[str, ...], dpop_algorithms: tuple[str, ...] = ()
) -> dict[str, Any]:
    """RFC 8414 metadata. There is no authorization endpoint to speak of (no browser, no code
    flow), but clients' metadata models require one: it answers unsupported_response_type.
    `dpop_signing_alg_values_supported` (RFC 9449 §5.1) says tokens can be bound to a key."""
    extra: dict[str, Any] = {"dpop_signing_alg_values_supported": list(dpop_algorithms)} if dpop_algorithms else {}
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth2/authorize",
        "token_endpoint": f"{issuer}/oauth2/token",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "introspection_endpoint": f"{issuer}/oauth2/introspect",
        "revocation_endpoint": f"{issuer}/oauth2/revoke",
        "response_types_supported": [],
        "grant_types_supported": list(GRANT_TYPES),
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "authorization_details_types_supported": [TOOL_DETAILS_TYPE],
        "access_token_signing_alg_values_supported": list(algorithms),
        "revocation_list_uri": f"{issuer}/v1/revocations",
        **extra,
    }
