"""Who may ask the operator for a CSI volume's value: the reviews a caller's tokens cost."""

import asyncio
from typing import Any

import pytest

from agentcred.runtime.projection.csi_publishing import CsiPublishing, PluginRefused
from agentcred.runtime.tokens.callers import RateLimiter, ReviewGate, Throttled

PLUGIN = "agentcred/agentcred-csi-node"
REFUSAL_RATE, REFUSAL_BURST = 2.0, 20


def publishing(reviewed: list[str], answer: dict[str, Any]) -> CsiPublishing:
    async def review(token: str) -> dict[str, Any]:
        reviewed.append(token)
        return answer

    # Only the caller's identification is exercised: the rest of the parts are never reached.
    unused: Any = None
    return CsiPublishing(
        ReviewGate(review),
        *[unused] * 8,
        plugin_account=PLUGIN,
        ca=lambda: b"",
        refusals=RateLimiter(REFUSAL_RATE, REFUSAL_BURST),
    )


def test_garbage_tokens_from_one_address_stop_costing_reviews_after_a_burst() -> None:
    reviewed: list[str] = []
    csi = publishing(reviewed, {"authenticated": False, "error": "invalid bearer token"})

    async def flood() -> None:
        for i in range(REFUSAL_BURST):
            with pytest.raises(PluginRefused, match="did not accept"):
                await csi.plugin_node(f"Bearer garbage-{i}", "10.0.0.9")
        with pytest.raises(Throttled):  # answered 429, no review sent
            await csi.plugin_node("Bearer garbage-more", "10.0.0.9")
        with pytest.raises(PluginRefused):  # another address has its own budget
            await csi.plugin_node("Bearer garbage-elsewhere", "10.0.0.10")

    asyncio.run(flood())
    assert reviewed[-1] == "garbage-elsewhere" and len(reviewed) == REFUSAL_BURST + 1


def test_a_token_of_another_service_account_is_not_the_plugin() -> None:
    answer = {"authenticated": True, "user": {"username": "system:serviceaccount:agents:research-agent"}}
    csi = publishing([], answer)
    with pytest.raises(PluginRefused, match="agents/research-agent is not agentcred's node plugin"):
        asyncio.run(csi.plugin_node("Bearer pod-token", "10.0.0.9"))


def test_a_plugin_token_not_bound_to_a_node_is_refused() -> None:
    answer = {"authenticated": True, "user": {"username": f"system:serviceaccount:{PLUGIN.replace('/', ':')}"}}
    csi = publishing([], answer)
    with pytest.raises(PluginRefused, match="not bound to a node"):
        asyncio.run(csi.plugin_node("Bearer plugin-token", "10.0.0.9"))
