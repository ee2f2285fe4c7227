import datetime as dt

import pytest
from pydantic import ValidationError

from agentcred.api.model import AgentCredentialSpec, parse_spec
from agentcred.rules.verdicts import describe_validation_error
from samples import DROP, EXCEPTION, INVALID, STATIC_SOURCE, spec


def test_sample_spec_parses_with_typed_fields() -> None:
    parsed = parse_spec(spec())
    assert parsed.category == "model"
    assert parsed.source.kind == "jwt"
    assert parsed.ttl_delta == dt.timedelta(minutes=15)
    assert parsed.max_lifetime_delta == dt.timedelta(hours=8)
    assert parsed.renew_before_delta == dt.timedelta(minutes=5)  # a third of ttl by default
    assert parsed.review is not None and parsed.review.last_reviewed == dt.date(2026, 11, 1)


def test_defaults_apply_when_optional_fields_are_absent() -> None:
    parsed = parse_spec(spec(ttl=DROP, maxLifetime=DROP, scope=DROP, review=DROP))
    assert (parsed.ttl, parsed.max_lifetime, parsed.scope, parsed.review) == ("15m", "8h", None, None)


def test_explicit_renew_before_wins() -> None:
    assert parse_spec(spec(renewBefore="2m")).renew_before_delta == dt.timedelta(minutes=2)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"owner": DROP}, "owner"),
        ({"category": "database"}, "category"),
        ({"subjects": {"serviceAccounts": []}}, "subjects.serviceAccounts"),
        ({"subjects": {"serviceAccounts": ["Not_A_Name"]}}, "subjects.serviceAccounts.0"),
        ({"ttl": "15 minutes"}, "ttl"),
        ({"projection": {"mountPath": "relative/path"}}, "projection.mountPath"),
        ({"projection": {"mountPath": "/var/../etc"}}, "projection.mountPath"),
        ({"projection": {"mountPath": "/ok", "envVar": "1BAD"}}, "projection.envVar"),
        ({"source": {"webhook": {"url": "http://insecure.example"}}}, "source.webhook.url"),
        (
            {"source": {"webhook": {"url": "https://m.example", "caBundle": "not a certificate"}}},
            "source.webhook.caBundle",
        ),
        ({"exception": {**EXCEPTION, "expires": "someday"}, "source": STATIC_SOURCE}, "exception.expires"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_invalid_specs_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        AgentCredentialSpec.model_validate(spec(**overrides))
    locations = {".".join(str(part) for part in error["loc"]) for error in refused.value.errors()}
    assert any(location.startswith(field) for location in locations), locations


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ({"jwt": {"audiences": ["a"]}}, "jwt"),
        (STATIC_SOURCE, "secretRef"),
        ({"webhook": {"url": "https://minter.internal/mint"}}, "webhook"),
    ],
)
def test_source_kind(source: dict, kind: str) -> None:
    extra = {"exception": EXCEPTION} if kind == "secretRef" else {}
    assert parse_spec(spec(source=source, **extra)).source.kind == kind


@pytest.mark.parametrize(("case", "overrides", "field", "phrase"), INVALID, ids=[case[0] for case in INVALID])
def test_models_refuse_what_the_api_server_refuses(case: str, overrides: dict, field: str, phrase: str) -> None:
    """The CRD's schema and CEL rules and the models agree on every invalid sample."""
    with pytest.raises(ValidationError):
        AgentCredentialSpec.model_validate(spec(**overrides))


@pytest.mark.parametrize(("written", "mode"), [("0400", 0o400), ("440", 0o440), (0o444, 0o444), (256, 0o400)])
def test_file_mode_is_octal_text_or_a_number(written: object, mode: int) -> None:
    parsed = parse_spec(spec(projection={"mountPath": "/var/run/agentcred/x", "fileMode": written}))
    assert parsed.projection.file_mode == mode


@pytest.mark.parametrize(
    ("written", "said"), [(0o600, "fileMode 0600 (octal; 384 in decimal)"), ("0644", "0644"), ("rw", "'rw'")]
)
def test_a_wrong_file_mode_is_said_in_octal(written: object, said: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_spec(spec(projection={"mountPath": "/var/run/agentcred/x", "fileMode": written}))
    message = describe_validation_error(refused.value)
    assert said in message and message.startswith("spec.projection.fileMode: ") and "Value error" not in message


def test_a_problem_of_the_whole_spec_names_no_internal_path() -> None:
    with pytest.raises(ValidationError) as refused:
        parse_spec(spec(ttl="2h", maxLifetime="1h"))
    assert describe_validation_error(refused.value) == "spec: ttl must not exceed maxLifetime"


def test_a_ca_bundle_that_is_no_certificate_is_refused_by_name() -> None:
    with pytest.raises(ValidationError) as refused:
        parse_spec(spec(source={"webhook": {"url": "https://m.example", "caBundle": "-----BEGIN CERTIFICATE-----"}}))
    assert describe_validation_error(refused.value).startswith(
        "spec.source.webhook.caBundle: not a PEM bundle of CA certificates"
    )
