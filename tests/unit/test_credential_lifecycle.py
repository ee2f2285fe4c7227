"""A credential's events (runtime/projection/credential_lifecycle.py) without a cluster: a
deletion is finalized by the leader (every value revoked first), the leader puts its
finalizer on a live credential, `agentcred revoke`/`renew` requests recorded in annotations
are carried out once and malformed ones ignored, and a change around credentials re-plans
only those whose verdict changed. Parts wired as build_parts wires them (support.runtime)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from agentcred.api import labels
from agentcred.api.labels import FINALIZER
from agentcred.api.pods import PodTask
from agentcred.api.times import utcnow
from agentcred.rules.credentials import CredentialRecord, credential_record
from agentcred.rules.verdicts import Verdict
from samples import credential
from support.runtime import Runtime
from support.views import FixedView

NS = "agents"
OTHERS = "example.com/keep"  # somebody else's finalizer


def body(
    name: str = "research-llm",
    *,
    finalizers: list[str] | None = None,
    deleting: bool = False,
    generation: int = 1,
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    spec.setdefault("projection", {"mountPath": f"/var/run/agentcred/{name}"})
    found = credential(name=name, namespace=NS, **spec)
    found["metadata"].update(
        uid=f"{name}-uid", creationTimestamp="2026-11-01T00:00:00Z", generation=generation, finalizers=finalizers or []
    )
    if deleting:
        found["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    if status:
        found["status"] = status
    return found


def record(name: str = "research-llm", **changes: Any) -> CredentialRecord:
    return credential_record(body(name, **changes))


def task(name: str, binding: str, credentials: tuple[str, ...] = ("research-llm",), **changes: Any) -> PodTask:
    base = PodTask(
        NS,
        name,
        f"{name}-uid",
        "research-agent",
        binding,
        credentials,
        None,
        "Running",
        deleted=False,
        gated=False,
        admitted_at=utcnow() - dt.timedelta(seconds=5),
        created_at=utcnow() - dt.timedelta(seconds=5),
    )
    return dataclasses.replace(base, **changes)


AGENT = task("agent", "0123456789abcdef")
HELPER = task("helper", "1111111111111111")


def running(tmp_path: Path, *pods: PodTask, records: tuple[CredentialRecord, ...] = ()) -> Runtime:
    """The operator, leading, with each pod admitted and holding its values (issued, released)."""
    view = FixedView(records={r.name: r for r in records or (record(),)})
    runtime = Runtime(tmp_path, view)
    for pod in pods:
        runtime.admit(dataclasses.replace(pod, gated=True))
        asyncio.run(runtime.reconciler.reconcile(pod.key))
        runtime.view.pods[pod.key] = pod  # released, running
    assert [line["action"] for line in runtime.audit_lines()] == ["issue"] * sum(len(p.credentials) for p in pods)
    return runtime


def holds(runtime: Runtime, pod: PodTask, name: str = "research-llm") -> bool:
    return labels.value_key(name) in runtime.secret_data(pod)


def revocations(runtime: Runtime) -> list[tuple[str, str, str]]:
    return [
        (line["podName"], line["credential"], line["reason"])
        for line in runtime.audit_lines()
        if line["action"] == "revoke"
    ]


# -- deletion and the finalizer ------------------------------------------------------------


def test_a_deleting_credential_is_revoked_in_every_pod_before_the_finalizer_goes(tmp_path: Path) -> None:
    runtime = running(tmp_path, AGENT, HELPER)
    deleting = body(finalizers=[OTHERS, FINALIZER], deleting=True)
    runtime.api.put_credential(deleting)
    asyncio.run(runtime.lifecycle.seen(credential_record(deleting), {}))
    assert sorted(revocations(runtime)) == [
        ("agent", "research-llm", "credential-deleted"),
        ("helper", "research-llm", "credential-deleted"),
    ]
    assert not holds(runtime, AGENT) and not holds(runtime, HELPER)
    for pod in (AGENT, HELPER):
        assert runtime.revocations.covers(pod.uid, "research-llm", utcnow())
    # Then, and only then, its own finalizer (at the index it was seen at, guarded by a test).
    assert runtime.api.calls[-1] == "patch-credential"
    assert runtime.api.credential_patches == [
        (
            NS,
            "research-llm",
            [
                {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ],
        )
    ]
    assert runtime.api.finalizers(NS, "research-llm") == [OTHERS]
    assert (NS, "research-llm") not in runtime.book.tallies  # its counts go with it


def test_a_follower_leaves_a_deletion_to_the_leader_and_does_it_once_it_leads(tmp_path: Path) -> None:
    runtime = running(tmp_path, AGENT)
    deleting = body(finalizers=[FINALIZER], deleting=True)
    runtime.api.put_credential(deleting)
    runtime.view.lead = False
    calls = list(runtime.api.calls)
    asyncio.run(runtime.lifecycle.seen(credential_record(deleting), {}))
    assert runtime.api.calls == calls and revocations(runtime) == [] and holds(runtime, AGENT)
    assert runtime.api.finalizers(NS, "research-llm") == [FINALIZER]
    runtime.view.lead = True  # elected: the credential's next event (or the take-over) finishes it
    asyncio.run(runtime.lifecycle.seen(credential_record(deleting), {}))
    assert revocations(runtime) == [("agent", "research-llm", "credential-deleted")]
    assert runtime.api.finalizers(NS, "research-llm") == []


def test_a_deleting_credential_without_our_finalizer_is_not_ours_to_hold(tmp_path: Path) -> None:
    runtime = running(tmp_path, AGENT)
    deleting = body(finalizers=[OTHERS], deleting=True)
    runtime.api.put_credential(deleting)
    calls = list(runtime.api.calls)
    asyncio.run(runtime.lifecycle.seen(credential_record(deleting), {}))
    assert runtime.api.calls == calls and runtime.api.finalizers(NS, "research-llm") == [OTHERS]
    assert revocations(runtime) == [] and holds(runtime, AGENT)


@pytest.mark.parametrize(
    ("finalizers", "operations"),
    [
        ([], [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]),
        ([OTHERS], [{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]),
    ],
)
def test_the_leader_puts_its_finalizer_on_a_live_credential(
    tmp_path: Path, finalizers: list[str], operations: list[dict[str, Any]]
) -> None:
    runtime = running(tmp_path)
    live = body(finalizers=finalizers)
    runtime.api.put_credential(live)
    asyncio.run(runtime.lifecycle.seen(credential_record(live), {}))
    assert runtime.api.credential_patches == [(NS, "research-llm", operations)]
    assert runtime.api.finalizers(NS, "research-llm") == [*finalizers, FINALIZER]
    # Seen again with it on: nothing more to add.
    asyncio.run(runtime.lifecycle.seen(credential_record(body(finalizers=[*finalizers, FINALIZER])), {}))
    assert len(runtime.api.credential_patches) == 1


def test_a_follower_puts_no_finalizer_on(tmp_path: Path) -> None:
    runtime = running(tmp_path)
    runtime.api.put_credential(body())
    runtime.view.lead = False
    asyncio.run(runtime.lifecycle.seen(record(), {}))
    assert runtime.api.credential_patches == [] and runtime.api.finalizers(NS, "research-llm") == []
    runtime.view.lead = True
    asyncio.run(runtime.lifecycle.seen(record(), {}))
    assert runtime.api.finalizers(NS, "research-llm") == [FINALIZER]


# -- requests recorded in annotations -----------------------------------------------------------


def test_a_revoke_request_for_one_pod_is_carried_out_once(tmp_path: Path) -> None:
    runtime = running(tmp_path, AGENT, HELPER)
    runtime.api.put_credential(body())
    request = {labels.REVOKE_ANNOTATION: json.dumps({"id": "req-1", "pod": "agent", "reason": "laptop\n stolen"})}
    asyncio.run(runtime.lifecycle.seen(record(), request))
    assert revocations(runtime) == [("agent", "research-llm", "emergency")]
    (line,) = [line for line in runtime.audit_lines() if line["action"] == "revoke"]
    assert line["message"] == "laptop stolen"
    assert not holds(runtime, AGENT) and holds(runtime, HELPER)
    outcome = runtime.api.statuses[(NS, "research-llm")]["lastRevocation"]
    assert {k: outcome[k] for k in ("id", "pod", "revoked", "reason")} == {
        "id": "req-1",
        "pod": "agent",
        "revoked": 1,
        "reason": "laptop stolen",
    }
    events = asyncio.run(runtime.events_posted())
    (told,) = [event for event in events if event["reason"] == "EmergencyRevoke"]
    assert told["involvedObject"]["name"] == "research-llm"
    assert told["message"] == "revoked 1 live value(s) of research-llm in pod agent: laptop stolen"
    # The same request seen again (its annotation stays until the command removes it), before
    # and after the status write comes back: done once.
    asyncio.run(runtime.lifecycle.seen(record(), request))
    asyncio.run(runtime.lifecycle.seen(record(status={"lastRevocation": outcome}), request))
    assert len(revocations(runtime)) == 1 and runtime.api.calls.count("status") == 1


def test_a_new_leader_does_not_repeat_a_request_whose_outcome_is_in_status(tmp_path: Path) -> None:
    runtime = running(tmp_path, AGENT)  # a replica that never saw the request carried out
    runtime.api.put_credential(body())
    request = {labels.REVOKE_ANNOTATION: json.dumps({"id": "req-1"})}
    done = {"lastRevocation": {"id": "req-1", "at": "2026-12-01T00:00:00Z", "revoked": 1}}
    asyncio.run(runtime.lifecycle.seen(record(status=done), request))
    assert revocations(runtime) == [] and holds(runtime, AGENT) and "status" not in runtime.api.calls
    # A request it has not seen carried out, it carries out.
    asyncio.run(runtime.lifecycle.seen(record(status=done), {labels.REVOKE_ANNOTATION: json.dumps({"id": "req-2"})}))
    assert revocations(runtime) == [("agent", "research-llm", "emergency")]


def test_a_revoke_request_for_every_pod(tmp_path: Path) -> None:
    runtime = running(tmp_path, AGENT, HELPER)
    runtime.api.put_credential(body())
    asyncio.run(runtime.lifecycle.seen(record(), {labels.REVOKE_ANNOTATION: json.dumps({"id": "req-2"})}))
    assert sorted(revocations(runtime)) == [
        ("agent", "research-llm", "emergency"),
        ("helper", "research-llm", "emergency"),
    ]
    assert runtime.api.statuses[(NS, "research-llm")]["lastRevocation"]["revoked"] == 2


def test_a_request_seen_by_a_follower_waits_for_the_leader(tmp_path: Path) -> None:
    runtime = running(tmp_path, AGENT)
    runtime.api.put_credential(body())
    request = {labels.REVOKE_ANNOTATION: json.dumps({"id": "req-3"})}
    runtime.view.lead = False
    asyncio.run(runtime.lifecycle.seen(record(), request))
    assert revocations(runtime) == [] and holds(runtime, AGENT)
    runtime.view.lead = True  # a new leader finds it still pending
    asyncio.run(runtime.lifecycle.seen(record(), request))
    assert revocations(runtime) == [("agent", "research-llm", "emergency")]


def test_a_renew_request_replaces_every_live_value_now(tmp_path: Path) -> None:
    runtime = running(tmp_path, AGENT, HELPER)
    runtime.api.put_credential(body())
    before = {pod.name: runtime.secret_data(pod)[labels.value_key("research-llm")] for pod in (AGENT, HELPER)}
    asyncio.run(runtime.lifecycle.seen(record(), {labels.RENEW_ANNOTATION: json.dumps({"id": "renew-1"})}))
    renewed = [line for line in runtime.audit_lines() if line["action"] == "renew"]
    assert sorted(line["podName"] for line in renewed) == ["agent", "helper"]
    for pod in (AGENT, HELPER):
        assert runtime.secret_data(pod)[labels.value_key("research-llm")] != before[pod.name]
    assert runtime.api.statuses[(NS, "research-llm")]["lastRenewal"]["renewed"] == 2
    events = asyncio.run(runtime.events_posted())
    assert [e["message"] for e in events if e["reason"] == "Renewed"] == ["renewed 2 live value(s) of research-llm"]


@pytest.mark.parametrize("annotation", [labels.REVOKE_ANNOTATION, labels.RENEW_ANNOTATION])
@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '["req-1"]',
        '"req-1"',
        "[" * 100_000,  # nested too deep for the parser
        json.dumps({"pod": "agent", "reason": "no id"}),
        json.dumps({"id": ""}),
    ],
)
def test_a_malformed_request_is_ignored(tmp_path: Path, annotation: str, text: str) -> None:
    runtime = running(tmp_path, AGENT)
    runtime.api.put_credential(body())
    value = runtime.secret_data(AGENT)[labels.value_key("research-llm")]
    asyncio.run(runtime.lifecycle.seen(record(), {annotation: text}))
    # The event was handled (the finalizer went on), and the request was not acted on.
    assert runtime.api.finalizers(NS, "research-llm") == [FINALIZER]
    assert [line["action"] for line in runtime.audit_lines()] == ["issue"]
    assert runtime.secret_data(AGENT)[labels.value_key("research-llm")] == value
    assert "status" not in runtime.api.calls


# -- re-planning ----------------------------------------------------------------------------


def test_a_new_spec_re_plans_the_pods_holding_it_and_its_own_status_echo_does_not(tmp_path: Path) -> None:
    runtime = running(tmp_path, AGENT)
    runtime.api.put_credential(body())
    asyncio.run(runtime.lifecycle.seen(record(), {}))
    # The ServiceAccount is dropped from the subjects: generation 2. The view has it at once;
    # an event that still carries generation 1 (our own status write coming back) re-plans nothing.
    runtime.view.records["research-llm"] = record(generation=2, subjects={"serviceAccounts": ["other-agent"]})
    asyncio.run(runtime.lifecycle.seen(record(generation=1), {}))
    assert revocations(runtime) == [] and holds(runtime, AGENT)
    asyncio.run(runtime.lifecycle.seen(runtime.view.records["research-llm"], {}))
    assert revocations(runtime) == [("agent", "research-llm", "subject-removed")]


def test_a_change_around_credentials_re_plans_only_those_whose_verdict_changed(tmp_path: Path) -> None:
    # Three credentials, each held by one pod. `changed`'s pod holds it and keeps running;
    # the other two pods have ended without the operator hearing of it yet, so planning either
    # of them again would revoke its value at once: the proof of a re-plan.
    records = (record("research-llm"), record("unchanged"), record("unseen"))
    changed = task("changed", "2222222222222222", ("research-llm",))
    steady = task("steady", "3333333333333333", ("unchanged",))
    fresh = task("fresh", "4444444444444444", ("unseen",))
    runtime = running(tmp_path, changed, steady, fresh, records=records)
    for name in ("research-llm", "unchanged"):
        runtime.api.put_credential(body(name))
        asyncio.run(runtime.lifecycle.seen(record(name), {}))  # their verdicts: Ready
    for pod in (steady, fresh):
        runtime.view.pods[pod.key] = dataclasses.replace(pod, phase="Succeeded")
    # A policy change: research-llm is no longer allowed; the others are judged as before.
    blocked = Verdict(False, "PolicyDenied", "AgentCredentialPolicy strict does not allow category model")
    runtime.view.records["research-llm"] = dataclasses.replace(records[0], blocked=blocked)
    asyncio.run(runtime.lifecycle.surroundings_changed(list(records)))
    assert revocations(runtime) == [("changed", "research-llm", "credential-not-ready")]
    assert holds(runtime, steady, "unchanged") and holds(runtime, fresh, "unseen")
    # Nothing changed since: nothing is planned again.
    asyncio.run(runtime.lifecycle.surroundings_changed(list(records)))
    assert len(revocations(runtime)) == 1 and holds(runtime, steady, "unchanged")
    # The positive control: a verdict change of `unchanged` now does reach its (ended) pod.
    runtime.view.records["unchanged"] = dataclasses.replace(records[1], blocked=blocked)
    asyncio.run(runtime.lifecycle.surroundings_changed(list(records)))
    assert revocations(runtime)[1:] == [("steady", "unchanged", "task-succeeded")]
    assert holds(runtime, fresh, "unseen")
