"""What the token service remembers and bounds, without a cluster: whose binding it is (a
copied admission is sealed too), how much of the revocation list one pod may fill."""

from __future__ import annotations

import datetime as dt

from agentcred.api.pods import PodTask
from agentcred.runtime.bindings import BindingOwners

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _pod(uid: str, created: dt.datetime, binding: str = "0123456789abcdef") -> PodTask:
    return PodTask(
        "agents", f"pod-{uid}", uid, "research-agent", binding, ("research-llm",), None, "Running", False, False,
        created_at=created,
    )  # fmt: skip


def test_a_binding_belongs_to_the_first_pod_even_once_it_is_gone() -> None:
    owners = BindingOwners()
    original, copy = _pod("a", T0), _pod("b", T0 + dt.timedelta(seconds=5))
    owners.note(original)
    assert owners.owns(original) and not owners.owns(copy)
    # The original is deleted (the index forgets it); the memory does not.
    assert not owners.owns(copy)


def test_of_two_pods_created_in_one_second_the_first_seen_owns_it() -> None:
    owners = BindingOwners()
    original, copy = _pod("z", T0), _pod("a", T0)  # the copy's UID sorts first
    owners.note(original)
    assert not owners.owns(copy) and owners.owns(original)


def test_a_pod_created_earlier_but_seen_later_owns_it() -> None:
    """Listing at start-up delivers pods by name, not by age."""
    owners = BindingOwners()
    copy, original = _pod("b", T0 + dt.timedelta(seconds=3)), _pod("a", T0)
    owners.note(copy)
    owners.note(original)
    assert owners.owns(original) and not owners.owns(copy)


def test_the_memory_is_bounded() -> None:
    owners = BindingOwners(limit=100)
    for i in range(1000):
        owners.note(_pod(str(i), T0, binding=f"{i:016x}"))
    assert len(owners._owners) <= 100
