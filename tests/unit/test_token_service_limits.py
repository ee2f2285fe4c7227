"""What the token service remembers and bounds, without a cluster: whose binding it is (a
copied admission is sealed too), how much of the revocation list one pod may fill."""

from __future__ import annotations

import datetime as dt

import pytest

from agentcred.api.pods import PodTask
from agentcred.api.projection import IssuedValue, ProjectionState, Subject
from agentcred.platform.keys import KeyRing, encode_jwt
from agentcred.platform.revocations import (
    EXPIRY_SKEW,
    MAX_TOKEN_ENTRIES_PER_POD,
    REVOCATIONS_KEY,
    SHARD_LIMIT_BYTES,
    RevocationList,
)
from agentcred.runtime.projection.bindings import BindingOwners
from agentcred.runtime.projection.revoker import RevokeOrder, Revoker
from agentcred.runtime.store import ProjectionStore
from agentcred.verify import TokenRejected, Verifier, revocation_list

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _pod(uid: str, created: dt.datetime, binding: str = "0123456789abcdef") -> PodTask:
    return PodTask(
        "agents", f"pod-{uid}", uid, "research-agent", binding, ("research-llm",), None, "Running", False, False,
        created_at=created,
    )  # fmt: skip


def test_a_binding_belongs_to_the_first_pod_even_once_it_is_gone() -> None:
    owners = BindingOwners(ProjectionStore())
    original, copy = _pod("a", T0), _pod("b", T0 + dt.timedelta(seconds=5))
    owners.note(original)
    assert owners.owns(original) and not owners.owns(copy)
    # The original is deleted (the index forgets it); the memory does not.
    assert not owners.owns(copy)


def test_of_two_pods_created_in_one_second_the_first_seen_owns_it() -> None:
    owners = BindingOwners(ProjectionStore())
    original, copy = _pod("z", T0), _pod("a", T0)  # the copy's UID sorts first
    owners.note(original)
    assert not owners.owns(copy) and owners.owns(original)


def test_a_pod_created_earlier_but_seen_later_owns_it() -> None:
    """Listing at start-up delivers pods by name, not by age."""
    owners = BindingOwners(ProjectionStore())
    copy, original = _pod("b", T0 + dt.timedelta(seconds=3)), _pod("a", T0)
    owners.note(copy)
    owners.note(original)
    assert owners.owns(original) and not owners.owns(copy)


def test_the_memory_is_bounded() -> None:
    owners = BindingOwners(ProjectionStore(), limit=100)
    for i in range(1000):
        owners.note(_pod(str(i), T0, binding=f"{i:016x}"))
    assert len(owners._owners) <= 100


def test_one_pod_holds_a_bounded_share_of_the_revocation_list() -> None:
    """Holder revocations are bounded per pod, so a shard's size follows pods, not exchanges:
    even the longest names a pod may have fill its shard only with hundreds of such pods."""
    revoked = RevocationList(shards=1)
    until = T0 + dt.timedelta(minutes=5)
    accepted = [
        revoked.revoke_token("pod-a", "research-llm", f"jti-{i}", until + dt.timedelta(seconds=i)) for i in range(100)
    ]
    assert accepted.count(True) == MAX_TOKEN_ENTRIES_PER_POD and not any(accepted[MAX_TOKEN_ENTRIES_PER_POD:])
    assert revoked.revoke_token("pod-a", "research-llm", "jti-0", until)  # again: nothing new
    assert revoked.revoke_token("pod-b", "research-llm", "jti-0", until)  # another pod has its own room
    assert revoked.token_room_at("pod-a") == until + EXPIRY_SKEW
    assert revoked.covers("pod-a", "research-llm", T0, ("jti-3",))
    assert not revoked.covers("pod-a", "research-llm", T0, (f"jti-{MAX_TOKEN_ENTRIES_PER_POD}",))
    # The first lapses: room for one more.
    revoked.prune(until + EXPIRY_SKEW + dt.timedelta(seconds=0.5))
    assert revoked.revoke_token("pod-a", "research-llm", "jti-new", until + dt.timedelta(minutes=1))
    assert not revoked.revoke_token("pod-a", "research-llm", "jti-newer", until + dt.timedelta(minutes=1))
    # Read back from a saved shard, the bound still holds.
    reread = RevocationList(shards=1)
    reread.merge_shard_data(revoked.shard_data(0))
    assert not reread.revoke_token("pod-a", "research-llm", "jti-more", until)
    # Worst case: a pod UID, a credential name of 63 characters and a token id per entry.
    worst = RevocationList(shards=1)
    uid, name = "0" * 36, "c" * 63
    for i in range(MAX_TOKEN_ENTRIES_PER_POD):
        worst.revoke_token(uid, name, secrets_like(i), until)
    per_pod = len(worst.shard_data(0)[REVOCATIONS_KEY])
    assert SHARD_LIMIT_BYTES // per_pod >= 300, per_pod


def secrets_like(i: int) -> str:
    return f"{i:022d}"  # as long as secrets.token_urlsafe(16)


def test_a_revoked_value_does_not_verify_again_in_its_last_seconds() -> None:
    """A pod ends while its projected value (ttl 10 minutes) has 8 minutes to live: the entry
    lasted exactly until the value's expiry and was then dropped -- but verifiers accept a
    token up to 30 s past its `exp` (clock skew), so for those 30 s the revoked value verified
    again. The same for a token exchanged moments before the revocation."""
    ring = KeyRing.generate(T0)
    issued = T0 + dt.timedelta(minutes=2)
    expires = issued + dt.timedelta(minutes=10)
    value = IssuedValue("research-llm", "model", issued, expires, issued, "fp", token_id="jti-v")
    claims = {
        "iss": "https://agentcred.test",
        "sub": "system:serviceaccount:agents:research-agent",
        "aud": "https://llm-gateway.internal",
        "iat": int(issued.timestamp()),
        "nbf": int(issued.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": "jti-v",
        "agentcred": {"credential": "research-llm", "namespace": "agents", "podUID": "pod-a", "pod": "agent"},
    }
    token = encode_jwt(claims, ring.current("EdDSA"))
    revoked_at = issued + dt.timedelta(minutes=2)
    subject = Subject("agents", "agent", "pod-a")
    until = Revoker._covered_until(subject, RevokeOrder("research-llm", value, "pod-deleted"), None, revoked_at)
    served = RevocationList()
    served.revoke("pod-a", "research-llm", until)
    for seconds in (1, 10, 25):
        moment = expires + dt.timedelta(seconds=seconds)
        served.prune(moment)  # what the operator serves at that moment
        verifier = Verifier(jwks=ring.jwks(), issuer=claims["iss"], revoked=revocation_list(served.document()))
        with pytest.raises(TokenRejected) as rejected:
            verifier.verify(token, "https://llm-gateway.internal", namespace="agents", now=moment.timestamp())
        assert rejected.value.reason == "revoked", seconds


def test_the_owner_a_sealed_secret_names_wins_over_a_listing() -> None:
    """After a restart, two pods created in one second arrive in name order: the copy first.
    Where the binding's Secret is known, the pod it names owns the binding."""
    original, copy = _pod("z", T0), _pod("a", T0)
    store = ProjectionStore()
    store.put(ProjectionState("agents", original.binding, original.name, "z", None))
    owners = BindingOwners(store)
    owners.note(copy)
    owners.note(original)
    assert owners.owns(original) and not owners.owns(copy)


def test_review_gate_pays_before_reviewing_and_lets_a_burst_of_valid_tokens_through() -> None:
    """Concurrent garbage buys no more reviews than the address's budget; concurrent valid
    tokens beyond the budget wait for theirs to be paid back, and are all answered."""
    import asyncio

    from agentcred.runtime.tokens.callers import RateLimiter, ReviewGate, Throttled

    async def scenario() -> None:
        sent: list[str] = []

        async def review(token: str) -> dict:
            sent.append(token)
            await asyncio.sleep(0.01)
            return {"authenticated": token.startswith("good")}

        gate, budget = ReviewGate(review), RateLimiter(rate=0.001, burst=10)

        async def ask(token: str) -> object:
            try:
                return await gate.review(token, "10.0.0.1", budget)
            except Throttled:
                return "throttled"

        answers = await asyncio.gather(*(ask(f"garbage-{i}") for i in range(100)))
        assert len(sent) <= 10 and answers.count("throttled") >= 90
        sent.clear()
        other = RateLimiter(rate=0.001, burst=10)
        answers = await asyncio.gather(*(gate.review(f"good-{i}", "10.0.0.2", other) for i in range(50)))
        assert all(a == {"authenticated": True} for a in answers) and len(sent) == 50

    asyncio.run(scenario())
