import asyncio
import datetime as dt

from agentcred.api.projection import ProjectionState
from agentcred.runtime.scheduler import Scheduler, utcnow
from agentcred.runtime.store import ProjectionStore


def test_store_indexes_projections_by_credential() -> None:
    from agentcred.api.projection import IssuedValue

    now = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc)
    value = IssuedValue("llm", "model", now, now, now, "f")
    store = ProjectionStore()
    store.put(ProjectionState("ns", "0123456789abcdef", "pod", "uid", None, values={"llm": value}))
    store.put(ProjectionState("ns", "1111111111111111", "pod2", "uid2", None, values={"llm": value}))
    assert store.keys_with("ns", "llm") == {
        "ns/0123456789abcdef",
        "ns/1111111111111111",
    } and store.count_by_category() == {"model": 2}
    store.put(ProjectionState("ns", "0123456789abcdef", "pod", "uid", None))  # its value revoked
    assert store.keys_with("ns", "llm") == {"ns/1111111111111111"}
    store.forget("ns/1111111111111111")
    assert store.keys_with("ns", "llm") == set() and len(store) == 1


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


def test_one_partition_hanging_does_not_hold_another_back() -> None:
    fired: list[str] = []

    async def main() -> None:
        async def callback(key):
            if key.startswith("hung/"):
                await asyncio.sleep(3600)  # a minting service that never answers
            fired.append(key)

        scheduler = Scheduler(callback, concurrency=4, partition=lambda key: key.split("/")[0])
        runner = asyncio.create_task(scheduler.run())
        now = utcnow()
        for i in range(50):
            scheduler.schedule(f"hung/{i}", now)
        scheduler.schedule("fine/renewal", now + dt.timedelta(milliseconds=50))
        await asyncio.sleep(0.3)
        runner.cancel()

    asyncio.run(main())
    assert fired == ["fine/renewal"]


def test_rescheduling_a_key_again_and_again_keeps_the_heap_bounded() -> None:
    """Every reschedule used to leave its predecessor in the heap until it came due (hours for
    a renewal): a tenant editing a credential over and over grew it without end."""

    async def scenario() -> None:
        scheduler = Scheduler(lambda key: asyncio.sleep(0))
        later = utcnow() + dt.timedelta(hours=1)
        for round_ in range(200):
            for pod in range(50):
                scheduler.schedule(("binding", f"ns/{pod}"), later + dt.timedelta(seconds=round_))
        assert len(scheduler) == 50
        assert len(scheduler._heap) <= 2 * 50 + 1024 + 1
        for pod in range(50):
            scheduler.cancel(("binding", f"ns/{pod}"))
        scheduler.schedule(("binding", "ns/last"), later)
        assert len(scheduler._heap) <= 1024 + 3

    asyncio.run(scenario())
