"""The operator's own pod list and watch: the index, what is handed on, and when."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from agentcred.api.pods import PodTask
from agentcred.platform.kube import Gone
from agentcred.runtime.projection.pod_watch import PodIndex, PodWatch
from support.fakes import ScriptedPodListing

NS = "team-a"


def pod(name: str, uid: str, binding: str | None = "b1", phase: str = "Pending", version: str = "1") -> dict[str, Any]:
    annotations = {"binding": binding} if binding else {}
    return {
        "metadata": {"name": name, "namespace": NS, "uid": uid, "resourceVersion": version, "annotations": annotations},
        "status": {"phase": phase, "conditions": [{"type": "PodScheduled", "status": version}]},
    }


def admitted(body: dict[str, Any], deleted: bool) -> PodTask | None:
    """A stand-in for the seal check: a pod with a binding is admitted."""
    meta = body["metadata"]
    binding = (meta.get("annotations") or {}).get("binding")
    if not binding:
        return None
    phase = (body.get("status") or {}).get("phase", "Pending")
    return PodTask(NS, meta["name"], meta["uid"], "agent", binding, ("llm",), None, phase, deleted, True)


def watcher(
    kube: ScriptedPodListing, handled: list[tuple[str | None, str, PodTask | None]], delay: float = 0.0
) -> PodWatch:
    async def handler(kind: str | None, body: dict[str, Any], task: PodTask | None) -> None:
        handled.append((kind, body["metadata"]["uid"], task))
        await asyncio.sleep(delay)

    return PodWatch(kube, "x=true", admitted, handler, handling=asyncio.Event())  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_listed_pods_are_indexed_at_once_and_handed_on_only_once_handling_starts() -> None:
    async def main() -> None:
        kube = ScriptedPodListing([[pod("a", "u1"), pod("other", "u2", binding=None)]], [])
        handled: list[Any] = []
        watch = watcher(kube, handled)
        runner = asyncio.create_task(watch.run())
        await asyncio.wait_for(watch.listed.wait(), 1)
        assert watch.index.by_name(NS, "a") is not None and watch.index.keys() == [f"{NS}/b1"]
        assert watch.index.by_name(NS, "other") is None and len(watch.index) == 2
        await settle()
        assert handled == []
        watch.handling.set()
        await settle()
        assert sorted((kind, uid) for kind, uid, _ in handled) == [(None, "u1"), (None, "u2")]
        runner.cancel()

    asyncio.run(main())


def test_an_update_that_changes_nothing_read_is_not_handed_on() -> None:
    async def main() -> None:
        events = [
            {"type": "MODIFIED", "object": pod("a", "u1", version="2")},  # a condition changed: nothing we read
            {"type": "MODIFIED", "object": pod("other", "u2", binding=None, version="2")},
            {"type": "MODIFIED", "object": pod("a", "u1", phase="Succeeded", version="3")},
        ]
        kube = ScriptedPodListing([[pod("a", "u1"), pod("other", "u2", binding=None)]], [events])
        handled: list[Any] = []
        watch = watcher(kube, handled)
        watch.handling.set()
        runner = asyncio.create_task(watch.run())
        await asyncio.sleep(0.05)
        assert [(kind, uid) for kind, uid, _ in handled if kind] == [("MODIFIED", "u1")]
        assert handled[-1][2].phase == "Succeeded" and watch.index.by_name(NS, "a").phase == "Succeeded"
        runner.cancel()

    asyncio.run(main())


def test_a_deleted_pod_leaves_the_index_before_its_event_is_handled() -> None:
    async def main() -> None:
        kube = ScriptedPodListing([[pod("a", "u1")]], [[{"type": "DELETED", "object": pod("a", "u1", version="2")}]])
        handled: list[Any] = []
        seen_in_index: list[PodTask | None] = []
        watch = watcher(kube, handled)

        async def handler(kind: str | None, body: dict[str, Any], task: PodTask | None) -> None:
            handled.append((kind, body["metadata"]["uid"], task))
            seen_in_index.append(watch.index.by_name(NS, "a"))

        watch.handler = handler
        watch.handling.set()
        runner = asyncio.create_task(watch.run())
        await asyncio.sleep(0.05)
        assert handled[-1][0] == "DELETED" and handled[-1][2].deleted
        assert seen_in_index[-1] is None and watch.index.keys() == [] and len(watch.index) == 0
        runner.cancel()

    asyncio.run(main())


def test_a_watch_too_old_to_resume_lists_again_and_hands_on_what_vanished_meanwhile() -> None:
    async def main() -> None:
        first = [pod("a", "u1"), pod("b", "u2", binding="b2"), pod("other", "u3", binding=None)]
        again = [pod("b", "u2", binding="b2"), pod("c", "u4", binding="b4")]
        kube = ScriptedPodListing([first, again], [Gone])
        handled: list[Any] = []
        watch = watcher(kube, handled)
        watch.handling.set()
        runner = asyncio.create_task(watch.run())
        await settle()
        assert kube.lists == 2
        after_listing = {(kind, uid): task for kind, uid, task in handled if kind}
        # a's pod was deleted while no watch was open: handed on as deleted, with its last task
        gone = after_listing[("DELETED", "u1")]
        assert gone is not None and gone.deleted and gone.name == "a"
        assert ("DELETED", "u3") in after_listing and after_listing[("DELETED", "u3")] is None
        assert ("MODIFIED", "u4") in after_listing and ("MODIFIED", "u2") not in after_listing  # b unchanged
        assert sorted(watch.index.keys()) == [f"{NS}/b2", f"{NS}/b4"]
        runner.cancel()

    asyncio.run(main())


def test_one_pods_events_are_handled_one_at_a_time_and_collapse_into_the_latest() -> None:
    async def main() -> None:
        events = [
            {"type": "MODIFIED", "object": pod("a", "u1", phase="Running", version="2")},
            {"type": "MODIFIED", "object": pod("a", "u1", phase="Succeeded", version="3")},
            {"type": "ADDED", "object": pod("b", "u2", binding="b2")},
        ]
        kube = ScriptedPodListing([[pod("a", "u1")]], [events])
        handled: list[Any] = []
        watch = watcher(kube, handled, delay=0.05)
        watch.handling.set()
        runner = asyncio.create_task(watch.run())
        await asyncio.sleep(0.2)
        phases = [(kind, task.phase) for kind, uid, task in handled if uid == "u1"]
        # listed (being handled) -> Running superseded by Succeeded while it was
        assert phases == [(None, "Pending"), ("MODIFIED", "Succeeded")]
        assert ("ADDED", "u2") in [(kind, uid) for kind, uid, _ in handled]
        runner.cancel()

    asyncio.run(main())


def test_the_index_keeps_every_pod_naming_a_binding_and_names_by_uid() -> None:
    index = PodIndex()
    original = admitted(pod("a", "u1"), False)
    copy = dataclasses.replace(original, name="copy", uid="u2")
    index.put("u1", NS, "a", original)
    index.put("u2", NS, "copy", copy)
    assert {t.uid for t in index.tasks(f"{NS}/b1")} == {"u1", "u2"}
    recreated = dataclasses.replace(original, uid="u3")  # the same name, a new pod
    index.put("u3", NS, "a", recreated)
    index.drop("u1")  # the old pod's deletion arrives late: the new pod keeps the name
    assert index.by_name(NS, "a") == recreated
    index.drop("u2")
    index.drop("u3")
    assert index.tasks(f"{NS}/b1") == [] and index.keys() == [] and len(index) == 0


def test_an_admitted_pod_is_handed_on_with_only_what_the_handler_reads() -> None:
    """10,000 listed pods wait whole for the handling to begin: a new leader's memory."""
    from agentcred.runtime.projection.pod_watch import _slim

    pod = {
        "metadata": {"namespace": "a", "name": "p", "uid": "u", "annotations": {"big": "x" * 10_000}},
        "spec": {"serviceAccountName": "sa", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running"},
    }
    assert _slim(pod) == {"metadata": {"namespace": "a", "name": "p", "uid": "u"}, "spec": {"serviceAccountName": "sa"}}


def test_listed_pods_are_handled_by_a_bounded_number_of_workers() -> None:
    """A new leader's listed pods are not all handled at once: at most WORKERS at a time."""
    from agentcred.runtime.projection.pod_watch import WORKERS

    async def main() -> None:
        listing = [pod(f"p{n}", f"u{n}", binding=f"b{n}") for n in range(WORKERS * 3)]
        kube = ScriptedPodListing([listing], [])
        running, most = 0, 0

        async def handler(kind: str | None, body: dict[str, Any], task: PodTask | None) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1

        watch = PodWatch(kube, "x=true", admitted, handler, handling=asyncio.Event())  # type: ignore[arg-type]
        watch.handling.set()
        runner = asyncio.create_task(watch.run())
        await asyncio.sleep(0.3)
        assert most == WORKERS and running == 0
        runner.cancel()

    asyncio.run(main())


def test_a_pod_whose_task_ended_is_handled_before_pods_waiting_to_be_issued() -> None:
    """A revocation never waits behind a burst of issues."""
    from agentcred.runtime.projection.pod_watch import WORKERS

    async def main() -> None:
        last, before_last = WORKERS * 3 - 1, WORKERS * 3 - 2  # far back in the line
        waiting = [pod(f"p{n}", f"u{n}", binding=f"b{n}") for n in range(WORKERS * 3)]
        ended = [
            {
                "type": "MODIFIED",
                "object": pod(f"p{last}", f"u{last}", binding=f"b{last}", phase="Succeeded", version="2"),
            },
            {
                "type": "DELETED",
                "object": pod(f"p{before_last}", f"u{before_last}", binding=f"b{before_last}", version="2"),
            },
        ]
        kube = ScriptedPodListing([waiting], [ended])
        order: list[tuple[str | None, str]] = []
        release = asyncio.Event()

        async def handler(kind: str | None, body: dict[str, Any], task: PodTask | None) -> None:
            order.append((kind, body["metadata"]["uid"]))
            await release.wait()  # every worker busy until the ended events are lined up

        watch = PodWatch(kube, "x=true", admitted, handler, handling=asyncio.Event())  # type: ignore[arg-type]
        watch.handling.set()
        runner = asyncio.create_task(watch.run())
        await asyncio.sleep(0.05)
        assert len(order) == WORKERS  # the first WORKERS listed pods; the rest wait in line
        release.set()
        await asyncio.sleep(0.1)
        assert set(order[WORKERS : WORKERS + 2]) == {("MODIFIED", f"u{last}"), ("DELETED", f"u{before_last}")}
        assert len(order) == WORKERS * 3  # the two ended pods' listed events collapsed into their ends
        runner.cancel()

    asyncio.run(main())


def _in(namespace: str, name: str, uid: str, phase: str = "Pending", version: str = "1") -> dict[str, Any]:
    body = pod(name, uid, binding=f"b-{uid}", phase=phase, version=version)
    body["metadata"]["namespace"] = namespace
    return body


def _tenant_admitted(body: dict[str, Any], deleted: bool) -> PodTask | None:
    task = admitted(body, deleted)
    return None if task is None else dataclasses.replace(task, namespace=body["metadata"]["namespace"])


@pytest.mark.parametrize("line", ["ended", "issued"])
def test_one_namespaces_burst_does_not_put_anothers_pod_at_the_back_of_the_line(line: str) -> None:
    """Found attacking the ended line: a tenant who may only create and delete pods deleted
    hundreds at once, and another tenant's pod that ended just after was revoked only once every
    one of them had been. Each line is taken a namespace at a time: the other tenant's pod is
    among the next handled, not the last."""
    from agentcred.runtime.projection.pod_watch import WORKERS

    async def main() -> None:
        burst = WORKERS * 3
        listed = [_in("team-a", f"busy{n}", f"busy{n}") for n in range(WORKERS)]  # every worker taken
        if line == "ended":
            listed += [_in("team-a", f"p{n}", f"u{n}") for n in range(burst)]
            events = [{"type": "DELETED", "object": _in("team-a", f"p{n}", f"u{n}", version="2")} for n in range(burst)]
            events += [
                {"type": "ADDED", "object": _in("team-b", "victim", "victim")},
                {"type": "MODIFIED", "object": _in("team-b", "victim", "victim", "Succeeded", "2")},
            ]
        else:
            events = [{"type": "ADDED", "object": _in("team-a", f"p{n}", f"u{n}")} for n in range(burst)]
            events.append({"type": "ADDED", "object": _in("team-b", "victim", "victim")})
        kube = ScriptedPodListing([listed], [events])
        order: list[str] = []
        release = asyncio.Event()

        async def handler(kind: str | None, body: dict[str, Any], task: PodTask | None) -> None:
            order.append(body["metadata"]["uid"])
            await release.wait()

        watch = PodWatch(kube, "x=true", _tenant_admitted, handler, handling=asyncio.Event())  # type: ignore[arg-type]
        watch.handling.set()
        runner = asyncio.create_task(watch.run())
        await asyncio.sleep(0.05)
        assert order == [f"busy{n}" for n in range(WORKERS)]
        release.set()
        await asyncio.sleep(0.1)
        assert "victim" in order[WORKERS : WORKERS + 2], order.index("victim") - WORKERS
        assert sorted(order[WORKERS:]) == sorted([*(f"u{n}" for n in range(burst)), "victim"])
        runner.cancel()

    asyncio.run(main())
