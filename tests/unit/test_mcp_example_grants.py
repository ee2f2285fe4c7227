"""examples/mcp/server.py: which tool calls a token's claims grant (the check the server makes
on each tools/call, over HTTP and again inside the tool), and which tenant it serves."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from clusterkit import REPO

RESOURCE = "http://docs-mcp.agents.svc:8000/mcp"


def _server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mcp_example_server", REPO / "examples" / "mcp" / "server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


server = _server()
TOOLS = server.Tools({"search_docs", "delete_docs"}, "handbook", RESOURCE)


def _detail(**overrides: object) -> dict[str, object]:
    return {
        "type": "agentcred.dev/tool",
        "tool": "search_docs",
        "actions": ["call"],
        "identifier": "docs:handbook",
        **overrides,
    }


@pytest.mark.parametrize(
    ("claims", "granted"),
    [
        ({"scope": "tool:search_docs action:call resource:docs:handbook"}, True),
        # every combination of what scope names
        ({"scope": "tool:delete_docs tool:search_docs action:call resource:docs:handbook"}, True),
        ({"scope": "tool:search_docs action:read resource:docs:handbook"}, False),
        ({"scope": "tool:search_docs action:call resource:docs:other"}, False),
        ({"scope": "tool:delete_docs action:call resource:docs:handbook"}, False),
        ({"authorization_details": [_detail()]}, True),
        ({"authorization_details": [_detail(locations=[RESOURCE])]}, True),
        ({"authorization_details": [_detail(locations=["https://elsewhere"])]}, False),
        ({"authorization_details": [_detail(type="other")]}, False),
        ({"authorization_details": [_detail(actions=["read"])]}, False),
        ({"authorization_details": [_detail(identifier="docs:other")]}, False),
        ({"authorization_details": [_detail(actions="recall")]}, False),
        ({"authorization_details": [_detail(locations=RESOURCE + "-elsewhere")]}, False),
        # a token that names no intent grants no tool here: the client asks for one
        ({"agentcred": {"scope": {"tools": ["*"], "actions": ["*"], "resources": ["*"]}}}, False),
        ({}, False),
    ],
)
def test_a_tool_is_granted_only_as_the_claims_say(claims: dict[str, object], granted: bool) -> None:
    assert TOOLS.granted(claims, "search_docs") is granted


def test_the_scope_a_tool_needs_and_the_check_inside_the_tool() -> None:
    assert TOOLS.needed_scope("delete_docs") == "tool:delete_docs action:call resource:docs:handbook"
    with pytest.raises(server.ToolError, match="does not grant tool:search_docs"):
        TOOLS.require("search_docs")  # no authenticated request: nothing is granted


def test_the_tenant_is_pinned_by_the_standard_sub_claim() -> None:
    agent = {"sub": "system:serviceaccount:agents:docs-agent"}
    assert server.tenant_problem(agent, "agents") is None and server.tenant_problem(agent, None) is None
    for other in ("system:serviceaccount:agents-x:docs-agent", "system:serviceaccount:other:agents", "agents"):
        assert server.tenant_problem({"sub": other}, "agents") is not None
    assert server.tenant_problem({}, "agents") is not None
