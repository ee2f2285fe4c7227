from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcred.api.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("8h", 28800), ("90d", 90 * 86400), ("1h30m", 5400), ("45s", 45), ("1d2h3m4s", 93784)],
)
def test_parses_each_unit(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "15", "m", "15 m", "-5m", "1.5h", "15min", "0s", "0m0s", "1w", "PT15M"])
def test_refuses_malformed_and_zero(text: str) -> None:
    with pytest.raises(ValueError, match="duration") as refused:
        parse_duration(text)
    assert repr(text) in str(refused.value)


@given(st.integers(min_value=1, max_value=999999), st.sampled_from(["s", "m", "h", "d"]))
def test_any_amount_of_any_unit(amount: int, unit: str) -> None:
    factor = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert parse_duration(f"{amount}{unit}") == timedelta(seconds=amount * factor)


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_value_error(text: str) -> None:
    try:
        assert parse_duration(text) > timedelta(0)
    except ValueError as error:
        assert "invalid duration" in str(error)


def test_the_chart_takes_the_same_grammar_as_the_crds() -> None:
    """The default policy's durations are checked by the chart's schema before they reach the
    API server: with the very pattern the operator and the CRDs use."""
    import json

    from agentcred.api.durations import DURATION_PATTERN
    from clusterkit import REPO

    schema = json.loads((REPO / "charts" / "agentcred" / "values.schema.json").read_text())
    policy = schema["properties"]["defaultPolicy"]["properties"]
    assert policy["maxTTL"]["pattern"] == policy["maxLifetime"]["pattern"] == DURATION_PATTERN
