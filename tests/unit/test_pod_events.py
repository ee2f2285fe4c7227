"""What the leader does with a pod's event when the API server cannot answer a question."""

import asyncio
import dataclasses
from typing import Any

from agentcred.api.pods import PodTask
from agentcred.runtime.projection.pod_events import PodEvents
from support.views import FixedView

TASK = PodTask(
    "agents", "agent", "pod-uid", "research-agent", "0123456789abcdef", ("research-llm",), None, "Running", False, False
)


class Unanswered:
    """The pod checks of a loaded API server: asking whether a pod is still there times out."""

    async def still_there(self, task: PodTask) -> PodTask:
        raise TimeoutError("the API server did not answer")


class Recording:
    def __init__(self) -> None:
        self.checks = Unanswered()
        self.reconciled: list[tuple[str, PodTask | None]] = []

    async def reconcile(self, key: str, task: PodTask | None = None) -> None:
        self.reconciled.append((key, task))


def test_a_pod_gone_from_the_watch_is_revoked_as_deleted_when_the_api_server_cannot_say_more() -> None:
    reconciler = Recording()
    unused: Any = None
    events = PodEvents(FixedView(), reconciler, unused, unused, unused)  # type: ignore[arg-type]
    gone = dataclasses.replace(TASK, deleted=True)
    body = {"metadata": {"namespace": TASK.namespace, "name": TASK.name, "uid": TASK.uid}}
    asyncio.run(events.handle("DELETED", body, gone))
    # It used to raise out of the handler: the event was dropped and the value never revoked.
    assert reconciler.reconciled == [(TASK.key, gone)]
    assert gone.end_reason == "pod-deleted"
