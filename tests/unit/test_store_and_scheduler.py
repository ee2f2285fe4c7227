import asyncio
import datetime as dt

from agentcred.projection import ProjectionState
from agentcred.scheduler import Scheduler, utcnow
from agentcred.store import ProjectionStore


def state(rv: str, binding: str = "b1") -> ProjectionState:
    return ProjectionState("ns", binding, "pod", "uid", None, resource_version=rv)


def test_store_ignores_older_versions_and_echoes_of_deleted_secrets() -> None:
    store = ProjectionStore()
    store.observe(state("10"))
    store.observe(state("9"))
    assert store.get("ns/b1").resource_version == "10"
    store.forget("ns/b1")
    store.observe(state("10"))  # a late watch event for the Secret we just deleted
    assert store.get("ns/b1") is None
    store.deleted_for_good("ns/b1")
    store.observe(state("11"))
    assert store.get("ns/b1").resource_version == "11"


def test_scheduler_fires_in_order_and_honours_replacement_and_cancel() -> None:
    fired: list[str] = []

    async def main() -> None:
        async def callback(key):
            fired.append(key)

        scheduler = Scheduler(callback)
        runner = asyncio.create_task(scheduler.run())
        now = utcnow()
        scheduler.schedule("late", now + dt.timedelta(milliseconds=300))
        scheduler.schedule("early", now + dt.timedelta(milliseconds=50))
        scheduler.schedule("moved", now + dt.timedelta(milliseconds=100))
        scheduler.schedule("moved", now + dt.timedelta(milliseconds=200))  # replaces the earlier time
        scheduler.schedule("cancelled", now + dt.timedelta(milliseconds=150))
        scheduler.cancel("cancelled")
        await asyncio.sleep(0.5)
        runner.cancel()
        assert len(scheduler) == 0

    asyncio.run(main())
    assert fired == ["early", "moved", "late"]
