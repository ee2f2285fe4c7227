"""The gateway's pure rules: a request (as an Envoy CheckRequest or forward-auth describes it)
read as one intent through a credential's route, and the decision on it. Hostile requests --
batches, notifications, malformed JSON-RPC, bodies too large or too deep, look-alike tool
names, spoofed headers, other spellings of a path -- are refused, never allowed, never crash."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcred.api.pods import PodTask
from agentcred.api.policy_model import parse_policy_spec
from agentcred.rules.credentials import CredentialRecord, credential_record
from agentcred.rules.gateway.decision import Verdict, decide
from agentcred.rules.gateway.requests import MAX_BODY, MAX_DEPTH, GatewayRequest, Refused, path_problem
from agentcred.rules.gateway.routes import match_path
from samples import CHAT_ROUTE, spec

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
MCP_ROUTE = {"name": "docs", "path": "/mcp", "mcp": {"resource": "docs:{arguments.collection}"}}
CHAT_SCOPE = {
    "tools": ["llm"],
    "actions": ["invoke"],
    "resources": ["model:small-*"],
    "deny": {"resources": ["model:small-secret"]},
}
DOCS_SCOPE = {"tools": ["search_docs"], "actions": ["call"], "resources": ["docs:*"]}


def record(name: str, routes: list[dict[str, Any]], scope: dict[str, Any], **gateway: Any) -> CredentialRecord:
    body = {
        "metadata": {
            "name": name,
            "namespace": "agents",
            "uid": "u-" + name,
            "creationTimestamp": "2026-11-01T00:00:00Z",
        },
        "spec": spec(
            scope=scope,
            projection={"delivery": "gateway"},
            gateway={"routes": routes, **gateway},
            source={"jwt": {"audiences": ["https://tools.agents.svc"]}},
        ),
    }
    found = credential_record(body)
    assert found.spec is not None, found.invalid
    return found


def task(*credentials: str, labels: dict[str, str] | None = None, admitted: dt.datetime = NOW) -> PodTask:
    return PodTask(
        namespace="agents",
        name="agent-1",
        uid="pod-uid-1",
        service_account="research-agent",
        binding="0123456789abcdef",
        credentials=credentials,
        job="task",
        phase="Running",
        deleted=False,
        gated=False,
        admitted_at=admitted - dt.timedelta(minutes=1),
        gateway=credentials,
        pod_labels=tuple(sorted((labels or {}).items())),
    )


def request(
    method: str = "POST",
    path: str = "/v1/chat/completions",
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    host: str = "llm.agents.svc",
) -> GatewayRequest:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return GatewayRequest(
        method=method,
        host=host,
        path=path,
        query="",
        headers={"authorization": "Bearer x", "content-type": "application/json", **(headers or {})},
        body=data,
    )


def verdict(
    req: GatewayRequest,
    *records: CredentialRecord,
    revoked: bool = False,
    pod: PodTask | None = None,
    policy: Any = None,
) -> Verdict:
    by_name = {r.name: r for r in records}
    return decide(req, pod or task(*by_name), by_name.get, lambda name: policy, lambda name: revoked, NOW)


CHAT = record("llm", [CHAT_ROUTE], CHAT_SCOPE)
DOCS = record("docs", [MCP_ROUTE], DOCS_SCOPE)


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}


# -- plain HTTP ------------------------------------------------------------------------------


def test_a_chat_completion_is_decided_as_the_model_it_names() -> None:
    allowed = verdict(request(body={"model": "small-1", "messages": []}), CHAT)
    assert allowed.allowed and allowed.rule == "route:chat+scope"
    assert allowed.intent is not None and allowed.intent.as_dict() == {
        "tool": "llm",
        "action": "invoke",
        "resource": "model:small-1",
    }
    refused = verdict(request(body={"model": "large-1"}), CHAT)
    assert (refused.allowed, refused.reason, refused.rule) == (False, "resource-not-allowed", "scope")
    denied = verdict(request(body={"model": "small-secret"}), CHAT)
    assert (denied.reason, denied.rule) == ("resource-denied", "scope.deny")  # deny wins


def test_without_a_body_an_intent_read_from_the_body_is_refused_saying_why() -> None:
    refused = verdict(request(body=None), CHAT)
    assert (refused.allowed, refused.reason) == (False, "no-body")
    assert "forward-auth sends headers only" in refused.message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"messages": []}, "missing-value"),
        ({"model": ["small-1"]}, "bad-value"),
        ({"model": True}, "bad-value"),
        ({"model": "small-*"}, "invalid-intent"),  # a glob in an intent would cover what a deny names
        ({"model": "small-\u0131"}, "invalid-intent"),  # a look-alike letter
        ({"model": "small-1\n"}, "invalid-intent"),
        ({"model": "small-1/../secret"}, "invalid-intent"),
    ],
)
def test_a_value_that_is_not_one_plain_name_is_refused(body: dict[str, Any], reason: str) -> None:
    refused = verdict(request(body=body), CHAT)
    assert (refused.allowed, refused.reason) == (False, reason)


def test_the_intent_can_come_from_the_path() -> None:
    route = {
        "name": "deployments",
        "path": "/openai/deployments/{deployment}/chat/completions",
        "intent": {"tool": "llm", "action": "invoke", "resource": "model:{path.deployment}"},
    }
    azure = record("azure", [route], CHAT_SCOPE)
    allowed = verdict(request(path="/openai/deployments/small-2/chat/completions"), azure)
    assert allowed.allowed and allowed.intent is not None and allowed.intent.resource == "model:small-2"


@pytest.mark.parametrize(
    "path",
    [
        "/v1//chat/completions",
        "/v1/./chat/completions",
        "/v1/x/../chat/completions",
        "/v1/chat%2fcompletions",
        "/v1/chat\\completions",
        "/v1/chat/%2E%2E/x",
    ],
)
def test_another_spelling_of_a_path_is_refused(path: str) -> None:
    assert path_problem(path) is not None
    refused = verdict(request(path=path, body={"model": "small-1"}), CHAT)
    assert (refused.allowed, refused.reason) == (False, "ambiguous-path")


@pytest.mark.parametrize(
    ("pattern", "path", "found"),
    [
        ("/v1/chat/completions", "/v1/chat/completions", {}),
        ("/v1/chat/completions", "/v1/chat/completions/", None),
        ("/v1/*", "/v1/anything/at/all", {}),
        ("/v1/*", "/v2/x", None),
        ("/a/{b}/c", "/a/x/c", {"b": "x"}),
        ("/a/{b}/c", "/a//c", None),
        ("/", "/", {}),
        ("/.well-known/x", "/.well-known/x", {}),
    ],
)
def test_route_paths(pattern: str, path: str, found: dict[str, str] | None) -> None:
    assert match_path(pattern, path) == found


def test_hosts_and_methods_select_the_route() -> None:
    pinned = record("pinned", [{**CHAT_ROUTE, "host": "llm.agents.svc"}], CHAT_SCOPE)
    assert verdict(request(body={"model": "small-1"}, host="llm.agents.svc:8080"), pinned).allowed
    assert verdict(request(body={"model": "small-1"}, host="evil.example"), pinned).reason == "no-route"
    assert verdict(request(method="GET", body={"model": "small-1"}), pinned).reason == "no-route"


def test_two_credentials_for_one_request_is_refused_not_guessed() -> None:
    again = record("llm-2", [CHAT_ROUTE], CHAT_SCOPE)
    refused = verdict(request(body={"model": "small-1"}), CHAT, again)
    assert (refused.allowed, refused.reason) == (False, "ambiguous-route")


# -- MCP -------------------------------------------------------------------------------------


def test_a_tool_call_is_decided_as_its_tool_and_arguments() -> None:
    allowed = verdict(request(path="/mcp", body=call("search_docs", collection="handbook")), DOCS)
    assert allowed.allowed and allowed.intent is not None
    assert allowed.intent.as_dict() == {"tool": "search_docs", "action": "call", "resource": "docs:handbook"}
    refused = verdict(request(path="/mcp", body=call("delete_docs", collection="handbook")), DOCS)
    assert (refused.allowed, refused.reason, refused.rule) == (False, "tool-not-allowed", "scope")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([call("search_docs", collection="a"), call("delete_docs", collection="a")], "jsonrpc-batch"),
        ({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "search_docs"}}, "jsonrpc-notification"),
        ({"jsonrpc": "1.0", "id": 1, "method": "tools/call"}, "malformed-jsonrpc"),
        ({"jsonrpc": "2.0", "id": 1, "method": 5}, "malformed-jsonrpc"),
        (
            {"jsonrpc": "2.0", "id": True, "method": "tools/call", "params": {"name": "search_docs"}},
            "malformed-jsonrpc",
        ),
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": []}, "malformed-jsonrpc"),
        ({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}, "malformed-jsonrpc"),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_docs", "arguments": [1]}},
            "malformed-jsonrpc",
        ),
        ({"jsonrpc": "2.0", "id": 1, "result": {}}, "jsonrpc-response"),
        ({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {}}, "mcp-method"),
        (call("search_docs"), "missing-value"),  # the resource needs arguments.collection
        (call("search\u200bdocs", collection="a"), "invalid-intent"),  # a zero-width space
        (call("search_docs", collection="*"), "invalid-intent"),
        ("tools/call", "malformed-jsonrpc"),
    ],
)
def test_what_is_not_exactly_one_tool_call_is_refused(body: Any, reason: str) -> None:
    refused = verdict(request(path="/mcp", body=body), DOCS)
    assert (refused.allowed, refused.reason) == (False, reason)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed-body"),
        (b"\xff\xfe", "malformed-body"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "body-too-deep"),
        (b"[" * 100_000 + b"]" * 100_000, "body-too-deep"),  # past the parser's own recursion limit
        (b"x" * (MAX_BODY + 1), "body-too-large"),
        (
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": "search_docs", "arguments": {"a": [0] * 200_000}},
                }
            ).encode(),
            "body-too-large",
        ),
    ],
)
def test_hostile_bodies_are_refused_within_bounds(raw: bytes, reason: str) -> None:
    refused = verdict(request(path="/mcp", raw=raw), DOCS)
    assert (refused.allowed, refused.reason) == (False, reason)


def test_protocol_messages_call_nothing_and_pass() -> None:
    for method in ("initialize", "tools/list", "ping"):
        passed = verdict(request(path="/mcp", body={"jsonrpc": "2.0", "id": 1, "method": method}), DOCS)
        assert passed.allowed and passed.intent is None
    note = verdict(request(path="/mcp", body={"jsonrpc": "2.0", "method": "notifications/initialized"}), DOCS)
    assert note.allowed and note.intent is None
    assert verdict(request(method="GET", path="/mcp"), DOCS).allowed
    assert verdict(request(method="PUT", path="/mcp", body={}), DOCS).reason == "mcp-method"


def test_headers_that_disagree_with_the_body_are_refused() -> None:
    spoofed = request(path="/mcp", body=call("delete_docs", collection="a"), headers={"mcp-tool-name": "search_docs"})
    assert verdict(spoofed, DOCS).reason == "header-mismatch"
    method = request(path="/mcp", body=call("search_docs", collection="a"), headers={"mcp-method": "tools/list"})
    assert verdict(method, DOCS).reason == "header-mismatch"


def test_over_forward_auth_a_tool_call_needs_a_route_that_declares_header_agreement() -> None:
    headers = {"mcp-method": "tools/call", "mcp-tool-name": "search_docs"}
    refused = verdict(request(path="/mcp", headers=headers), DOCS)
    assert (refused.allowed, refused.reason) == (False, "no-body")
    assert "mcp.headerAgreement" in refused.message
    # Without agreement even a protocol method cannot be told apart from a tool call.
    assert verdict(request(path="/mcp", headers={"mcp-method": "initialize"}), DOCS).reason == "no-body"

    agreed_route = {"name": "docs", "path": "/mcp", "mcp": {"resource": "docs:handbook", "headerAgreement": True}}
    agreed = record("docs", [agreed_route], DOCS_SCOPE)
    allowed = verdict(request(path="/mcp", headers=headers), agreed)
    assert allowed.allowed and allowed.intent is not None and allowed.intent.tool == "search_docs"
    other = verdict(request(path="/mcp", headers={**headers, "mcp-tool-name": "delete_docs"}), agreed)
    assert other.reason == "tool-not-allowed"
    assert verdict(request(path="/mcp", headers={"mcp-method": "tools/call"}), agreed).reason == "mcp-headers"
    assert verdict(request(path="/mcp", headers={"mcp-method": "initialize"}), agreed).allowed
    # Arguments only the body carries: refused over forward-auth even with agreement.
    by_argument = record(
        "docs", [{**agreed_route, "mcp": {**agreed_route["mcp"], "resource": "docs:{arguments.c}"}}], DOCS_SCOPE
    )
    assert verdict(request(path="/mcp", headers=headers), by_argument).reason == "no-body"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=30,
    )
)
def test_any_json_body_is_decided_and_only_an_allowed_tool_passes(body: Any) -> None:
    found = verdict(request(path="/mcp", body=body), DOCS)
    assert isinstance(found, Verdict)
    if found.allowed and found.intent is not None:
        assert found.intent.tool == "search_docs"


@given(st.binary(max_size=300))
def test_any_bytes_are_decided_without_a_crash(raw: bytes) -> None:
    assert isinstance(verdict(request(path="/mcp", raw=raw), DOCS), Verdict)


# -- the credential, the pod, the policy, the conditions ---------------------------------------


def test_a_revoked_pod_an_ended_lifetime_and_a_removed_subject_are_refused() -> None:
    ok = request(body={"model": "small-1"})
    assert verdict(ok, CHAT, revoked=True).reason == "revoked"
    old = task("llm", admitted=NOW - dt.timedelta(hours=9))
    assert verdict(ok, CHAT, pod=old).reason == "max-lifetime"
    stranger = PodTask(**{**task("llm").__dict__, "service_account": "other"})
    assert verdict(ok, CHAT, pod=stranger).reason == "not-a-subject"
    assert verdict(ok, CHAT, pod=task()).reason == "no-route"  # a pod not admitted for it


def test_the_policy_bounds_the_intent() -> None:
    import dataclasses

    allowed_by = dataclasses.replace(CHAT, allowed_by="team-a")
    policy = parse_policy_spec({"namespaceSelector": {}, "sources": ["jwt"], "scope": {"resources": ["model:small-1"]}})
    assert verdict(request(body={"model": "small-1"}), allowed_by, policy=policy).allowed
    refused = verdict(request(body={"model": "small-2"}), allowed_by, policy=policy)
    assert (refused.reason, refused.rule) == ("policy-denied", "policy:team-a")


def test_conditions_over_the_call() -> None:
    conditions = [
        {"name": "short-queries", "expression": "size(mcp.arguments.query) <= 10", "message": "queries are short"},
        {"name": "team", "expression": "pod.labels['team'] == 'a' && now.getHours() >= 0"},
    ]
    docs = record("docs", [MCP_ROUTE], DOCS_SCOPE, conditions=conditions)
    team_a = task("docs", labels={"team": "a"})
    assert verdict(
        request(path="/mcp", body=call("search_docs", collection="x", query="rotate")), docs, pod=team_a
    ).allowed
    long = verdict(request(path="/mcp", body=call("search_docs", collection="x", query="r" * 11)), docs, pod=team_a)
    assert (long.allowed, long.reason, long.rule, long.message) == (
        False,
        "condition-false",
        "condition:short-queries",
        "queries are short",
    )
    # A condition that cannot be evaluated (no query argument) refuses: an error is a deny.
    broken = verdict(request(path="/mcp", body=call("search_docs", collection="x")), docs, pod=team_a)
    assert (broken.allowed, broken.reason) == (False, "condition-error")
    other_team = verdict(
        request(path="/mcp", body=call("search_docs", collection="x", query="q")),
        docs,
        pod=task("docs", labels={"team": "b"}),
    )
    assert other_team.rule == "condition:team" and not other_team.allowed

    import dataclasses

    policy = parse_policy_spec(
        {
            "namespaceSelector": {},
            "sources": ["jwt"],
            "gateway": {"conditions": [{"name": "no-x", "expression": "mcp.arguments.collection != 'x'"}]},
        }
    )
    governed = dataclasses.replace(record("docs", [MCP_ROUTE], DOCS_SCOPE), allowed_by="team-a")
    refused = verdict(request(path="/mcp", body=call("search_docs", collection="x")), governed, policy=policy)
    assert (refused.reason, refused.rule) == ("condition-false", "policy:team-a/condition:no-x")


def test_a_condition_that_does_not_compile_makes_the_spec_invalid() -> None:
    from pydantic import ValidationError

    from agentcred.api.model import parse_spec

    with pytest.raises(ValidationError) as refused:
        parse_spec(spec(gateway={"routes": [CHAT_ROUTE], "conditions": [{"name": "bad", "expression": "size(("}]}))
    assert "not a valid CEL expression" in str(refused.value)


def test_refusals_are_bounded_reasons() -> None:
    with pytest.raises(Refused):
        request(path="/mcp", raw=b"[").json_body()


def test_mcp_name_is_the_tool_header_mcp_2026_sends_and_it_must_agree_too() -> None:
    spoofed = request(path="/mcp", body=call("delete_docs", collection="a"), headers={"mcp-name": "search_docs"})
    assert verdict(spoofed, DOCS).reason == "header-mismatch"
    agreed_route = {"name": "docs", "path": "/mcp", "mcp": {"resource": "docs:handbook", "headerAgreement": True}}
    agreed = record("docs", [agreed_route], DOCS_SCOPE)
    named = verdict(request(path="/mcp", headers={"mcp-method": "tools/call", "mcp-name": "search_docs"}), agreed)
    assert named.allowed and named.intent is not None and named.intent.tool == "search_docs"
    two = {"mcp-method": "tools/call", "mcp-name": "search_docs", "mcp-tool-name": "delete_docs"}
    assert verdict(request(path="/mcp", headers=two), agreed).reason == "mcp-headers"
