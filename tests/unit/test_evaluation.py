import datetime as dt

from agentcred.api import conditions
from agentcred.rules.status import spec_status, status_patch
from agentcred.rules.verdicts import evaluate
from samples import EXCEPTION, STATIC_SOURCE, spec

TODAY = dt.date(2026, 11, 28)
CREATED = dt.date(2026, 6, 1)


def test_valid_spec_is_ready() -> None:
    verdict = evaluate(spec(), CREATED, TODAY)
    assert (verdict.ready, verdict.reason, verdict.source_kind) == (True, "Valid", "jwt")
    assert verdict.review_due == dt.date(2027, 1, 30) and verdict.review_overdue is False


def test_review_overdue_counts_from_creation_without_last_review() -> None:
    verdict = evaluate(spec(review={"cadence": "30d"}), CREATED, TODAY)
    assert verdict.review_due == dt.date(2026, 7, 1) and verdict.review_overdue is True
    assert verdict.ready  # overdue review is reported, not enforced


def test_expired_exception_is_not_ready_and_names_approver() -> None:
    verdict = evaluate(spec(source=STATIC_SOURCE, exception={**EXCEPTION, "expires": "2026-11-01"}), CREATED, TODAY)
    assert (verdict.ready, verdict.reason, verdict.exception_expired) == (False, "ExceptionExpired", True)
    assert "ciso@example.com" in verdict.message and "2026-11-01" in verdict.message


def test_invalid_spec_message_names_the_field() -> None:
    verdict = evaluate(spec(category="database"), CREATED, TODAY)
    assert (verdict.ready, verdict.reason) == (False, "InvalidSpec")
    assert "spec.category" in verdict.message


def test_status_patch_is_empty_when_nothing_changed() -> None:
    now = dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc)
    body = {"metadata": {"generation": 3}, "spec": spec()}
    desired = spec_status(body, evaluate(spec(), CREATED, TODAY), now)
    assert desired["observedGeneration"] == 3
    body["status"] = desired
    later = now + dt.timedelta(hours=1)
    assert status_patch(body["status"], spec_status(body, evaluate(spec(), CREATED, TODAY), later)) == {}


def test_condition_transition_time_moves_only_on_status_change() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    t1 = t0 + dt.timedelta(minutes=1)
    first = conditions.set_condition([], type_="Ready", status="True", reason="A", message="a", generation=1, now=t0)
    same = conditions.set_condition(first, type_="Ready", status="True", reason="B", message="b", generation=2, now=t1)
    flipped = conditions.set_condition(
        same, type_="Ready", status="False", reason="C", message="c", generation=2, now=t1
    )
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and same[0]["reason"] == "B"
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:01:00Z"
    assert len(flipped) == 1
