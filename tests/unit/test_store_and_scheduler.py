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


def test_store_keeps_each_credentials_count_and_earliest_expiry_as_values_come_and_go() -> None:
    from agentcred.api.projection import IssuedValue

    now = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc)

    def value(minutes: int, category: str = "model") -> IssuedValue:
        expires = now + dt.timedelta(minutes=minutes)
        return IssuedValue("llm", category, now, expires, now, f"f{minutes}")

    store = ProjectionStore()
    assert store.held("ns", "llm") == (0, None) and store.count_by_category() == {}
    for i, minutes in enumerate((30, 10, 20)):
        store.put(ProjectionState("ns", f"{i:016x}", f"p{i}", f"u{i}", None, values={"llm": value(minutes)}))
    assert store.held("ns", "llm") == (3, now + dt.timedelta(minutes=10))
    # The earliest renewed (a later expiry), then revoked: the next earliest is reported, never a stale one.
    store.put(ProjectionState("ns", f"{1:016x}", "p1", "u1", None, values={"llm": value(40)}))
    assert store.held("ns", "llm") == (3, now + dt.timedelta(minutes=20))
    store.put(ProjectionState("ns", f"{2:016x}", "p2", "u2", None))
    assert store.held("ns", "llm") == (2, now + dt.timedelta(minutes=30))
    assert store.held("other", "llm") == (0, None) and store.count_by_category() == {"model": 2}
    for _ in range(500):  # rewritten again and again (renewals): what is kept for it stays bounded
        store.put(ProjectionState("ns", f"{0:016x}", "p0", "u0", None, values={"llm": value(30, "tool")}))
        assert store.held("ns", "llm") == (2, now + dt.timedelta(minutes=30))
    assert len(store._expiries[("ns", "llm")]) <= 2 * 2 + 64 + 1
    assert store.count_by_category() == {"model": 1, "tool": 1}
    store.forget(f"ns/{0:016x}")
    store.forget(f"ns/{1:016x}")
    assert store.held("ns", "llm") == (0, None) and store.count_by_category() == {}


def test_past_values_name_their_pod_without_keeping_each_renewals_bookkeeping() -> None:
    from agentcred.api.projection import IssuedValue

    now = utcnow()  # past values are forgotten an hour after they expire
    store = ProjectionStore()

    def renewed(n: int) -> ProjectionState:
        value = IssuedValue("llm", "model", now, now + dt.timedelta(minutes=n), now, f"fp-{n}", f"jti-{n}", renewals=n)
        return ProjectionState("ns", "0123456789abcdef", "agent", "uid-1", "job-1", values={"llm": value})

    for n in range(4):
        store.put(renewed(n))
    pasts = [store.past(f"jti-{n}") for n in range(3)] + [store.past(f"fp-{n}") for n in range(3)]
    assert all(len(past) == 1 and past[0].ended == "superseded" for past in pasts)
    whose = {id(past[0].state) for past in pasts}
    assert len(whose) == 1  # one record of the pod for all its past values
    state = pasts[0][0].state
    assert (state.key, state.pod_name, state.pod_uid, state.job, state.values) == (
        "ns/0123456789abcdef",
        "agent",
        "uid-1",
        "job-1",
        {},
    )
    store.forget("ns/0123456789abcdef")  # the task ended: its last value remembered as revoked, by the same pod
    (last,) = store.past("jti-3")
    assert last.ended == "revoked" and last.value.expires_at == now + dt.timedelta(minutes=3)
    assert last.state.pod_uid == "uid-1" and not store._whose
