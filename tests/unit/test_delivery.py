"""The renewal rule against a kubelet's volume refresh delay: renew at least that long before
expiry, refuse a ttl under twice that (rules.delivery, applied by the Gatekeeper)."""

import dataclasses
import datetime as dt

from agentcred.api.policy_model import parse_policy_spec
from agentcred.app.config import parse_delay
from agentcred.devcluster.install import permissive_policy
from agentcred.rules.credentials import Gatekeeper
from agentcred.rules.delivery import DEFAULT_VOLUME_REFRESH_DELAY, renew_before, ttl_problem
from agentcred.rules.planning import plan

from .test_planning import MIN, NOW, record, state, task, value

SECOND = dt.timedelta(seconds=1)


def gatekeeper(delay: dt.timedelta) -> Gatekeeper:
    allowing_all = parse_policy_spec(permissive_policy("everything", {})["spec"])
    return Gatekeeper(
        policies=lambda: {"everything": allowing_all},
        namespace_labels=lambda namespace: {},
        shared=lambda namespace, name: None,
        refresh_delay=delay,
    )


def test_renewal_starts_no_later_than_the_kubelet_may_take_to_deliver() -> None:
    spec = record(ttl="15m", renewBefore="30s").spec
    assert renew_before(spec, DEFAULT_VOLUME_REFRESH_DELAY) == 95 * SECOND  # not the 30s asked
    assert renew_before(spec, dt.timedelta(0)) == 30 * SECOND
    assert renew_before(record(ttl="15m").spec, 95 * SECOND) == 5 * MIN  # a third of ttl is longer


def test_the_plan_renews_early_enough_for_the_kubelet() -> None:
    early = dataclasses.replace(record(ttl="15m", renewBefore="30s"), refresh_delay=95 * SECOND)
    live = state(**{"research-llm": value(14 * MIN)})  # expires in 1m: renewBefore 30s says wait
    decided = plan(task(gated=False, phase="Running"), live, {"research-llm": early}, NOW)
    (renewal,) = decided.issue
    assert renewal.is_renewal
    waiting = plan(
        task(gated=False, phase="Running"), state(**{"research-llm": value(12 * MIN)}), {"research-llm": early}, NOW
    )
    assert waiting.idle and waiting.next_due == NOW + 3 * MIN - 95 * SECOND


def test_a_ttl_under_twice_the_delay_is_refused_with_the_figures() -> None:
    message = ttl_problem(record(ttl="3m").spec, DEFAULT_VOLUME_REFRESH_DELAY)
    assert message is not None
    assert "ttl 3m" in message and "1m35s" in message and "3m10s" in message
    assert ttl_problem(record(ttl="3m10s").spec, DEFAULT_VOLUME_REFRESH_DELAY) is None
    assert ttl_problem(record(ttl="4s", renewBefore="2s", maxLifetime="9s").spec, dt.timedelta(0)) is None


def test_the_gatekeeper_marks_such_a_credential_not_ready() -> None:
    judged = gatekeeper(DEFAULT_VOLUME_REFRESH_DELAY).judged(record(ttl="1m"))
    assert judged is not None
    verdict = judged.verdict()
    assert not verdict.ready and verdict.reason == "TTLTooShort" and "ttl 1m" in verdict.message
    fine = gatekeeper(DEFAULT_VOLUME_REFRESH_DELAY).judged(record(ttl="15m"))
    assert fine is not None and fine.ready and fine.refresh_delay == DEFAULT_VOLUME_REFRESH_DELAY


def test_the_delay_setting_reads_durations_and_zero() -> None:
    assert parse_delay("95s") == 95 * SECOND and parse_delay("1m40s") == 100 * SECOND
    assert parse_delay("0") == dt.timedelta(0) and parse_delay("") is None
    try:
        parse_delay("soon")
    except ValueError as error:
        assert "volume refresh delay" in str(error) and "soon" in str(error)
    else:
        raise AssertionError("a delay that is no duration was accepted")
