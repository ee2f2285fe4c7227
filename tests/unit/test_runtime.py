"""The runtime's parts without a cluster: a plan carried out, the one revocation sequence,
status writing and the handover, against an in-memory stand-in for the few API calls they
make (`support.fakes.InMemoryApi`; the real API server is what tests/integration is for)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from agentcred.api import labels
from agentcred.api.pods import PodTask
from agentcred.api.projection import IssuedValue, ProjectionState, Subject
from agentcred.api.times import utcnow
from agentcred.platform.kube import Conflict
from agentcred.rules.credentials import credential_record
from agentcred.runtime.audit import AuditTrail
from agentcred.runtime.events import EventRecorder
from agentcred.runtime.projection.handover import Handover
from agentcred.runtime.projection.pod_checks import PodChecks
from agentcred.runtime.projection.reconciler import UNGATE_PATCH
from agentcred.runtime.projection.revoker import RevokeOrder
from agentcred.runtime.status.status_writer import StatusWriter
from agentcred.sources.base import Sources
from samples import credential
from support.runtime import Runtime
from support.views import FixedView

NS, BINDING = "agents", "0123456789abcdef"
KEY = f"{NS}/{BINDING}"


def record(**overrides: Any):
    body = credential(namespace=NS, **overrides)
    body["metadata"].update(uid="cred-uid", creationTimestamp="2026-11-01T00:00:00Z", generation=1)
    return credential_record(body)


def task(phase: str = "Pending", gated: bool = True, deleted: bool = False) -> PodTask:
    return PodTask(
        NS,
        "agent",
        "pod-uid",
        "research-agent",
        BINDING,
        ("research-llm",),
        "job-1",
        phase,
        deleted,
        gated,
        admitted_at=utcnow() - dt.timedelta(seconds=1),
    )


class Parts(Runtime):
    """One operator's runtime, wired as app.operator wires it (support.runtime), around the
    in-memory API; `pod` is what the view answers for the binding."""

    def __init__(self, tmp_path: Path, pod: PodTask | None) -> None:
        self.pod = pod
        super().__init__(tmp_path, FixedView(records={"research-llm": record()}, pod_lookup=lambda key: self.pod))
        self.kube = self.api

    def secret(self) -> dict[str, Any] | None:
        return self.kube.secrets.get((NS, labels.secret_name(BINDING)))


def test_a_gated_pod_gets_its_value_written_then_released(tmp_path: Path) -> None:
    parts = Parts(tmp_path, task())
    asyncio.run(parts.reconciler.reconcile(KEY))
    secret = parts.secret()
    assert secret is not None and labels.value_key("research-llm") in secret["data"]
    assert parts.kube.calls == ["create", "patch-pod"]
    assert parts.kube.pod_patches == [(NS, "agent", UNGATE_PATCH)]
    (line,) = parts.audit_lines()
    assert line["action"] == "issue" and line["podUID"] == "pod-uid" and line["serviceAccount"] == "research-agent"
    assert parts.store.get(KEY) is not None and len(parts.scheduler) == 1  # the renewal is scheduled
    assert parts.book.tallies[(NS, "research-llm")].issued == 1


def test_a_task_that_ends_is_revoked_through_the_one_sequence(tmp_path: Path) -> None:
    parts = Parts(tmp_path, task())
    asyncio.run(parts.reconciler.reconcile(KEY))
    parts.pod = task(phase="Succeeded", gated=False)
    asyncio.run(parts.reconciler.reconcile(KEY))
    assert parts.secret() is None and parts.store.get(KEY) is None
    issue, revoke = parts.audit_lines()
    assert (revoke["action"], revoke["reason"], revoke["tokenId"]) == ("revoke", "task-succeeded", issue["tokenId"])
    # Every token of the pod for the credential -- the value and what was exchanged from it.
    assert parts.revocations.covers("pod-uid", "research-llm", utcnow())
    assert parts.book.tallies[(NS, "research-llm")].revoked == 1


def test_a_failed_act_is_voided_and_changes_nothing_else(tmp_path: Path) -> None:
    parts = Parts(tmp_path, task())
    value = IssuedValue(
        "research-llm", "model", utcnow(), utcnow() + dt.timedelta(minutes=5), utcnow(), "fp", token_id="jti-1"
    )

    async def refused() -> None:
        raise Conflict(409, "Conflict", "stale")

    with pytest.raises(Conflict):
        asyncio.run(
            parts.revoker.revoke(
                Subject(NS, "agent", "pod-uid"), [RevokeOrder("research-llm", value, "emergency")], refused
            )
        )
    revoke, void = parts.audit_lines()
    assert revoke["action"] == "revoke" and void == {**void, "action": "void", "voids": "revoke", "tokenId": "jti-1"}
    assert "409" in void["reason"]
    assert not parts.revocations.covers("pod-uid", "research-llm", utcnow())


def test_a_minting_service_hears_of_its_values_revocation(tmp_path: Path) -> None:
    parts = Parts(tmp_path, task())
    told: list[tuple[str, str, str]] = []

    class Minting:
        kind = "webhook"

        async def revoked(self, record, credential, value, subject, reason, until):
            told.append((credential, value.token_id, reason))

    parts.revoker.sources = Sources(Minting())
    value = IssuedValue(
        "research-llm",
        "model",
        utcnow(),
        utcnow() + dt.timedelta(minutes=5),
        utcnow(),
        "fp",
        token_id="minted-7",
        source="webhook",
    )

    async def done() -> None:
        pass

    asyncio.run(
        parts.revoker.revoke(Subject(NS, "agent", "pod-uid"), [RevokeOrder("research-llm", value, "emergency")], done)
    )
    assert told == [("research-llm", "minted-7", "emergency")]


def test_a_stale_picture_is_read_again_and_planned_anew(tmp_path: Path) -> None:
    parts = Parts(tmp_path, task())
    asyncio.run(parts.reconciler.reconcile(KEY))
    secret = parts.secret()
    assert secret is not None
    secret["metadata"]["resourceVersion"] = "changed-by-someone"  # our memory is now stale
    parts.pod = task(gated=False)
    asyncio.run(parts.reconciler.reconcile(KEY, renew_now=frozenset({"research-llm"})))
    assert parts.kube.calls == ["create", "patch-pod", "patch", "patch"]
    assert [line["action"] for line in parts.audit_lines()] == ["issue", "renew", "void", "renew"]


def test_status_is_written_once_per_change(tmp_path: Path) -> None:
    parts = Parts(tmp_path, task())
    writer = StatusWriter(parts.kube, parts.book, parts.store, parts.events, parts.revocations, parts.view)
    asyncio.run(parts.reconciler.reconcile(KEY))
    asyncio.run(writer.flush())
    status = parts.kube.statuses[(NS, "research-llm")]
    assert status["activeProjections"] == 1 and status["issuedTotal"] == 1
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "True"
    writes = parts.kube.calls.count("status")
    parts.book.touch((NS, "research-llm"))
    asyncio.run(writer.flush())
    assert parts.kube.calls.count("status") == writes  # nothing changed: nothing written


def test_a_new_leader_records_what_the_garbage_collector_already_removed(tmp_path: Path) -> None:
    parts = Parts(tmp_path, None)
    handover = Handover(parts.reconciler, parts.revoker, parts.store, parts.book, window=dt.timedelta(seconds=60))
    handover.note_ended(task(phase="Running", gated=False, deleted=True))
    orphan = ProjectionState(
        NS,
        "1111111111111111",
        "gone",
        "gone-uid",
        None,
        values={
            "research-llm": IssuedValue(
                "research-llm", "model", utcnow(), utcnow() + dt.timedelta(minutes=5), utcnow(), "fp", token_id="t"
            )
        },
    )
    parts.kube.secrets[(NS, orphan.secret_name)] = {"metadata": {"name": orphan.secret_name, "resourceVersion": "1"}}

    async def take_over_and_let_the_scheduler_run() -> None:
        await handover.take_over([], [orphan])
        runner = asyncio.create_task(parts.scheduler.run())
        await asyncio.sleep(0.3)
        runner.cancel()

    asyncio.run(take_over_and_let_the_scheduler_run())
    lines = parts.audit_lines()
    collected = next(line for line in lines if line.get("removedBy") == "garbage-collector")
    assert (collected["action"], collected["podUID"], collected["reason"]) == ("revoke", "pod-uid", "pod-deleted")
    orphaned = next(line for line in lines if line.get("podUID") == "gone-uid")
    assert orphaned["reason"] == "orphaned" and (NS, orphan.secret_name) not in parts.kube.secrets


def test_unadmitted_pods_a_follower_saw_are_flagged_once_it_leads(tmp_path: Path) -> None:
    view = FixedView(lead=False)
    audit_path = tmp_path / "audit.log"
    events = EventRecorder(None)  # type: ignore[arg-type]  # only its queue is used here
    checks = PodChecks(None, AuditTrail(str(audit_path)), events, view)  # type: ignore[arg-type]

    def pod(uid: str) -> dict:
        meta = {"namespace": NS, "name": f"early-{uid}", "uid": uid, "labels": {labels.INJECT_LABEL: "true"}}
        return {"metadata": meta, "spec": {"serviceAccountName": "research-agent"}}

    checks.flag_unadmitted(pod("u1"))  # seen in the start-up listing, while following
    checks.flag_unadmitted(pod("u2"))
    checks.gone("u2")  # deleted before this replica led
    assert events._queue.qsize() == 0 and not audit_path.read_text()
    view.lead = True
    assert checks.flag_pending() == 1
    checks.flag_unadmitted(pod("u1"))  # seen again: told once only
    assert events._queue.qsize() == 1
    event = events._queue.get_nowait()
    assert (event.reason, event.involved["name"]) == ("NotAdmitted", "early-u1")
    [line] = [json.loads(text) for text in audit_path.read_text().splitlines()]
    assert (line["action"], line["reason"], line["podUID"]) == ("deny", "not-admitted", "u1")


def test_similar_events_above_a_rate_are_folded_into_one_per_window() -> None:
    from support.fakes import InMemoryApi, delivered

    now = [0.0]
    api = InMemoryApi()

    def pod(namespace: str, name: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": name, "uid": f"uid-{name}"}

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        events = EventRecorder(api, burst=3, window=10.0, clock=lambda: now[0])  # type: ignore[arg-type]
        for i in range(8):
            events.post(pod("tenant-a", f"p{i}"), "Normal", "CredentialsIssued", f"issued llm to p{i}")
        events.post(pod("tenant-b", "q0"), "Normal", "CredentialsIssued", "issued llm to q0")  # another tenant's
        events.post(pod("tenant-a", "p8"), "Warning", "CredentialRevoked", "revoked llm: task-succeeded")
        posted = list(await delivered(events, api))
        events.fold()  # the window's end: the five held back become one Event on the last of them
        folded = (await delivered(events, api))[5:]
        now[0] = 10.0  # a new window: one by one again
        events.post(pod("tenant-a", "p9"), "Normal", "CredentialsIssued", "issued llm to p9")
        events.fold()  # nothing held back: nothing more
        return posted, folded, (await delivered(events, api))[6:]

    posted, folded, later = asyncio.run(scenario())
    assert [e["involvedObject"]["name"] for e in posted] == ["p0", "p1", "p2", "q0", "p8"]
    assert len(folded) == 1 and folded[0]["involvedObject"]["name"] == "p7"
    assert folded[0]["reason"] == "CredentialsIssued" and folded[0]["metadata"]["namespace"] == "tenant-a"
    assert folded[0]["message"].startswith("5 similar Events in 10s folded into this one (pods p3, p4, p5, p6, p7;")
    assert folded[0]["message"].endswith("the last: issued llm to p7")
    assert [e["involvedObject"]["name"] for e in later] == ["p9"]


def test_an_audit_line_keeps_its_format(tmp_path: Path) -> None:
    """One JSON object a line with the stdlib's spacing: `"action": "revoke"` is what people
    and log pipelines grep for (a compact encoder once changed it unnoticed)."""
    path = tmp_path / "audit.log"
    trail = AuditTrail(str(path))
    trail.record("revoke", namespace="team-a", at=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))
    line = path.read_text()
    assert line.endswith("\n") and line.count("\n") == 1
    assert '"audit": "agentcred", "action": "revoke", "namespace": "team-a"' in line
    assert json.loads(line)["at"] == "2026-01-02 00:00:00+00:00"  # what str() says of a datetime
