import datetime as dt

from agentcred.api.pods import PodTask
from agentcred.api.projection import IssuedValue, ProjectionState
from agentcred.rules.credentials import credential_record
from agentcred.rules.planning import plan
from samples import EXCEPTION, STATIC_SOURCE, credential

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)
MIN = dt.timedelta(minutes=1)


def record(name="research-llm", **overrides):
    body = credential(name=name, namespace="agents", **overrides)
    body["metadata"]["creationTimestamp"] = "2026-11-01T00:00:00Z"
    return credential_record(body)


def task(
    phase="Pending", gated=True, deleted=False, credentials=("research-llm",), sa="research-agent", admitted_ago=None
) -> PodTask:
    admitted = NOW - admitted_ago if admitted_ago is not None else None
    return PodTask(
        "agents",
        "pod-1",
        "uid-1",
        sa,
        "0123456789abcdef",
        tuple(credentials),
        "job-1",
        phase,
        deleted,
        gated,
        admitted_at=admitted,
    )


def state(**values: IssuedValue) -> ProjectionState:
    return ProjectionState("agents", "0123456789abcdef", "pod-1", "uid-1", "job-1", values=dict(values))


def value(issued_ago: dt.timedelta, ttl=15 * MIN, started_ago: dt.timedelta | None = None, name="research-llm"):
    issued = NOW - issued_ago
    return IssuedValue(name, "model", issued, issued + ttl, NOW - (started_ago or issued_ago), "sha256:x", "jti-1")


def test_fresh_pod_gets_issued_and_ungated_with_renewal_scheduled() -> None:
    decided = plan(task(), None, {"research-llm": record()}, NOW)
    (issue,) = decided.issue
    assert issue.expires_at == NOW + 15 * MIN and issue.task_started_at == NOW and not issue.is_renewal
    assert decided.ungate and not decided.problems
    assert decided.next_due == NOW + 10 * MIN  # renewBefore defaults to a third of ttl


def test_live_value_is_left_alone_until_renewal_time() -> None:
    decided = plan(
        task(gated=False, phase="Running"), state(**{"research-llm": value(2 * MIN)}), {"research-llm": record()}, NOW
    )
    assert decided.idle and decided.next_due == NOW + 8 * MIN


def test_renewal_keeps_the_task_start_and_counts() -> None:
    decided = plan(
        task(gated=False, admitted_ago=11 * MIN),
        state(**{"research-llm": value(11 * MIN)}),
        {"research-llm": record()},
        NOW,
    )
    (renewal,) = decided.issue
    assert renewal.is_renewal and renewal.renewals == 1
    assert renewal.task_started_at == NOW - 11 * MIN and renewal.expires_at == NOW + 15 * MIN


def test_renewal_is_capped_at_max_lifetime_then_revoked() -> None:
    records = {"research-llm": record(maxLifetime="1h")}
    near_end = state(**{"research-llm": value(11 * MIN)})
    (renewal,) = plan(task(gated=False, admitted_ago=55 * MIN), near_end, records, NOW).issue
    assert renewal.expires_at == NOW + 5 * MIN  # never beyond admission + maxLifetime
    capped = state(**{"research-llm": IssuedValue("research-llm", "model", NOW, NOW + 5 * MIN, NOW, "f", "j")})
    assert plan(task(gated=False, admitted_ago=55 * MIN), capped, records, NOW).next_due == NOW + 5 * MIN
    over = state(**{"research-llm": value(1 * MIN)})
    decided = plan(task(gated=False, admitted_ago=61 * MIN), over, records, NOW)
    assert [(r.credential, r.reason) for r in decided.revoke] == [("research-llm", "max-lifetime")]
    assert not decided.issue


def test_the_lifetime_counts_from_the_sealed_admission_whatever_the_secret_says() -> None:
    records = {"research-llm": record(maxLifetime="1h")}
    forged = state(**{"research-llm": value(11 * MIN, started_ago=-1000 * 24 * 60 * MIN)})  # "started" in 2029
    decided = plan(task(gated=False, admitted_ago=61 * MIN), forged, records, NOW)
    assert [(r.credential, r.reason) for r in decided.revoke] == [("research-llm", "max-lifetime")]


def test_a_barred_credential_is_never_issued_again_and_a_live_value_goes() -> None:
    records = {"research-llm": record()}
    gated = plan(task(), None, records, NOW, barred=frozenset({"research-llm"}))
    assert not gated.issue and not gated.ungate and gated.problems[0].reason == "Revoked"
    healed_without_secret = plan(task(gated=False), None, records, NOW, barred=frozenset({"research-llm"}))
    assert healed_without_secret.idle
    live = plan(
        task(gated=False), state(**{"research-llm": value(MIN)}), records, NOW, barred=frozenset({"research-llm"})
    )
    assert [(r.credential, r.reason) for r in live.revoke] == [("research-llm", "barred")]


def test_task_end_deletes_the_secret_with_the_reason() -> None:
    live = state(**{"research-llm": value(MIN)})
    for phase, deleted, reason in [
        ("Succeeded", False, "task-succeeded"),
        ("Failed", False, "task-failed"),
        ("Running", True, "pod-deleted"),
    ]:
        decided = plan(task(phase=phase, deleted=deleted, gated=False), live, {"research-llm": record()}, NOW)
        assert decided.delete_secret and [r.reason for r in decided.revoke] == [reason]
    assert plan(task(phase="Succeeded"), None, {}, NOW).idle


def test_orphaned_secret_is_deleted() -> None:
    decided = plan(None, state(**{"research-llm": value(MIN)}), {}, NOW)
    assert decided.delete_secret and decided.revoke[0].reason == "orphaned"


def test_credential_gone_or_subject_removed_revokes_live_values() -> None:
    live = state(**{"research-llm": value(MIN)})
    assert plan(task(gated=False), live, {"research-llm": None}, NOW).revoke[0].reason == "credential-deleted"
    narrowed = record(subjects={"serviceAccounts": ["someone-else"]})
    assert plan(task(gated=False), live, {"research-llm": narrowed}, NOW).revoke[0].reason == "subject-removed"


def test_static_value_is_revoked_when_its_exception_ends() -> None:
    static = record(source=STATIC_SOURCE, exception={**EXCEPTION, "expires": "2026-11-28"}, maxLifetime="48h")
    live = state(**{"research-llm": value(MIN)})
    assert plan(task(gated=False), live, {"research-llm": static}, NOW).next_due == NOW + 9 * MIN
    long_lived = state(**{"research-llm": value(MIN, ttl=20 * 60 * MIN)})
    assert plan(task(gated=False), long_lived, {"research-llm": static}, NOW).next_due == dt.datetime(
        2026, 11, 29, tzinfo=dt.timezone.utc
    )  # the exception's end comes before the renewal
    later = NOW + dt.timedelta(days=1)
    assert plan(task(gated=False), live, {"research-llm": static}, later).revoke[0].reason == "exception-expired"


def test_problems_keep_the_pod_gated() -> None:
    decided = plan(
        task(credentials=("research-llm", "missing")), None, {"research-llm": record(), "missing": None}, NOW
    )
    assert not decided.ungate and decided.problems[0].reason == "CredentialNotFound"
    assert [i.credential for i in decided.issue] == ["research-llm"]
    intruder = plan(task(sa="intruder"), None, {"research-llm": record()}, NOW)
    assert intruder.problems[0].reason == "NotASubject" and not intruder.issue


def test_revoked_values_are_never_issued_again_in_the_same_task() -> None:
    tombstone = ProjectionState(
        "agents", "0123456789abcdef", "pod-1", "uid-1", "job-1", revoked={"research-llm": "emergency"}
    )
    assert plan(task(gated=False), tombstone, {"research-llm": record()}, NOW).idle
    gated = plan(task(gated=True), tombstone, {"research-llm": record()}, NOW)
    assert not gated.ungate and gated.problems[0].reason == "Revoked"


def test_values_no_longer_requested_are_revoked() -> None:
    extra = state(**{"research-llm": value(MIN), "old": value(MIN, name="old")})
    decided = plan(task(gated=False), extra, {"research-llm": record()}, NOW)
    assert [(r.credential, r.reason) for r in decided.revoke] == [("old", "not-requested")]


def test_a_gateway_only_credential_is_never_issued_and_does_not_hold_the_pod() -> None:
    import dataclasses

    from samples import GATEWAY_ONLY

    admitted = dataclasses.replace(task(credentials=("upstream",)), gateway=("upstream",))
    decided = plan(admitted, None, {"upstream": record("upstream", **GATEWAY_ONLY)}, NOW)
    assert decided.issue == () and decided.ungate and decided.problems == ()
    # A credential made gateway-only after the pod got its value: the value goes, nothing new comes.
    mixed = task(gated=False, credentials=("research-llm",))
    held = state(**{"research-llm": value(MIN)})
    now_gateway = plan(mixed, held, {"research-llm": record(**GATEWAY_ONLY)}, NOW)
    assert [(r.credential, r.reason) for r in now_gateway.revoke] == [("research-llm", "gateway-only")]
    assert now_gateway.issue == ()


def test_a_running_pod_gets_its_credential_again_once_it_is_allowed_again() -> None:
    """Revoked because the credential stopped allowing it (no tombstone is left for these
    reasons): while that lasts the pod waits with the reason; once allowed again it is issued a
    fresh value, but never inside the revocation's cut-off second."""
    running = task(gated=False, phase="Running", admitted_ago=5 * MIN)
    narrowed = record(subjects={"serviceAccounts": ["someone-else"]})
    revoked = plan(running, state(**{"research-llm": value(MIN)}), {"research-llm": narrowed}, NOW)
    assert [r.reason for r in revoked.revoke] == ["subject-removed"]
    assert [p.reason for p in revoked.problems] == ["NotASubject"]  # it waits from now on, told why
    emptied = state()  # the value went, no tombstone
    waiting = plan(running, emptied, {"research-llm": narrowed}, NOW)
    assert not waiting.issue and waiting.problems[0].reason == "NotASubject"
    cut_off = NOW + dt.timedelta(milliseconds=300)
    held = plan(running, emptied, {"research-llm": record()}, NOW, not_before={"research-llm": cut_off})
    assert held.idle and not held.problems and held.next_due == cut_off
    (fresh,) = plan(running, emptied, {"research-llm": record()}, cut_off, not_before={"research-llm": cut_off}).issue
    assert not fresh.is_renewal and fresh.task_started_at == NOW - 5 * MIN  # its lifetime still counts from admission
