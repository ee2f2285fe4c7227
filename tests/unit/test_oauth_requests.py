"""The token endpoint's grammar: every malformed request ends in the RFC's error with a
description that says what is wrong, and nothing hostile crashes the parser."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcred.rules.oauth import (
    ACCESS_TOKEN_TYPE,
    CLIENT_ASSERTION_TYPE,
    CLIENT_CREDENTIALS,
    JWT_BEARER,
    JWT_TOKEN_TYPE,
    MAX_BODY,
    TOKEN_EXCHANGE,
    TOOL_DETAILS_TYPE,
    OAuthError,
    granted_intents,
    parse_form,
    parse_token_request,
)
from agentcred.rules.scope import Intent

FORM = "application/x-www-form-urlencoded"
RFC_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "invalid_authorization_details",
}
EXCHANGE = {"grant_type": TOKEN_EXCHANGE, "subject_token": "t", "subject_token_type": JWT_TOKEN_TYPE}


def request(pairs: list[tuple[str, str]] | dict[str, str], authorization: str | None = None):
    return parse_token_request(parse_form(FORM, urlencode(pairs).encode()), authorization)


def refusal(pairs, authorization: str | None = None) -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        request(pairs, authorization)
    return caught.value


def test_a_token_exchange_with_authorization_details() -> None:
    details = [{"type": TOOL_DETAILS_TYPE, "tool": "web-search", "actions": ["read", "list"], "identifier": "repo:a"}]
    parsed = request({**EXCHANGE, "resource": "https://llm.agents.svc", "authorization_details": json.dumps(details)})
    assert parsed.targets == ("https://llm.agents.svc",)
    assert [r.intent for r in parsed.requested] == [
        Intent("web-search", "read", "repo:a"),
        Intent("web-search", "list", "repo:a"),
    ]
    assert all(r.via == "authorization_details" for r in parsed.requested)


def test_scope_strings_ask_for_every_combination() -> None:
    parsed = request({**EXCHANGE, "scope": "tool:a tool:b action:read resource:repo:x"})
    assert [r.intent for r in parsed.requested] == [Intent("a", "read", "repo:x"), Intent("b", "read", "repo:x")]
    assert parsed.scope == ("tool:a", "tool:b", "action:read", "resource:repo:x")


def test_the_three_grants_name_their_subject() -> None:
    assert request({"grant_type": JWT_BEARER, "assertion": "sa"}).subject_token == "sa"
    client = request(
        {"grant_type": CLIENT_CREDENTIALS, "client_assertion": "sa", "client_assertion_type": CLIENT_ASSERTION_TYPE}
    )
    assert (client.subject_token, client.subject_token_type) == ("sa", JWT_TOKEN_TYPE)
    own = request({**EXCHANGE, "subject_token_type": ACCESS_TOKEN_TYPE})
    assert own.subject_token_type == ACCESS_TOKEN_TYPE


def test_resource_may_repeat_and_locations_name_targets() -> None:
    parsed = request([*EXCHANGE.items(), ("resource", "https://a.svc"), ("resource", "https://b.svc")])
    assert parsed.targets == ("https://a.svc", "https://b.svc")
    details = [
        {"type": TOOL_DETAILS_TYPE, "tool": "t", "actions": ["a"], "identifier": "r", "locations": ["https://x"]}
    ]
    assert request({**EXCHANGE, "authorization_details": json.dumps(details)}).targets == ("https://x",)


@pytest.mark.parametrize(
    ("pairs", "error", "words"),
    [
        ([*EXCHANGE.items(), ("grant_type", TOKEN_EXCHANGE)], "invalid_request", "grant_type is given 2 times"),
        ([*EXCHANGE.items(), ("scope", "tool:a"), ("scope", "tool:b")], "invalid_request", "scope is given 2 times"),
        ({"subject_token": "t"}, "invalid_request", "grant_type is missing"),
        ({"grant_type": "password"}, "unsupported_grant_type", "password is not supported"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type", "authorization_code"),
        ({"grant_type": TOKEN_EXCHANGE, "subject_token": "t"}, "invalid_request", "subject_token_type is missing"),
        ({**EXCHANGE, "subject_token_type": "urn:x:saml2"}, "invalid_request", "urn:x:saml2 is not supported"),
        ({**EXCHANGE, "subject_token": ""}, "invalid_request", "subject_token is missing"),
        ({"grant_type": JWT_BEARER}, "invalid_request", "assertion is missing"),
        ({**EXCHANGE, "actor_token": "a"}, "invalid_request", "actor_token and actor_token_type go together"),
        ({**EXCHANGE, "actor_token": "a", "actor_token_type": "urn:x"}, "invalid_request", "actor_token_type urn:x"),
        ({**EXCHANGE, "requested_token_type": "urn:x:saml2"}, "invalid_request", "requested_token_type"),
        ({**EXCHANGE, "client_secret": "s"}, "invalid_client", "no client secrets"),
        ({**EXCHANGE, "client_assertion": "a"}, "invalid_request", "only with grant_type client_credentials"),
        ({"grant_type": CLIENT_CREDENTIALS}, "invalid_client", "client_assertion"),
        ({**EXCHANGE, "resource": "https://*.svc"}, "invalid_target", "wildcard"),
        ({**EXCHANGE, "resource": "https://llm.svc#frag"}, "invalid_target", "fragment"),
        ({**EXCHANGE, "resource": "llm.agents.svc"}, "invalid_target", "not an absolute URI"),
        ({**EXCHANGE, "resource": "https://ｌｌｍ.svc"}, "invalid_target", "printable ASCII"),
        ({**EXCHANGE, "audience": "a b"}, "invalid_target", "printable ASCII"),
        ({**EXCHANGE, "scope": "read"}, "invalid_scope", "scope read is not one of"),
        ({**EXCHANGE, "scope": "tool:a action:read"}, "invalid_scope", "names no resources"),
        ({**EXCHANGE, "scope": "tool:* action:read resource:x"}, "invalid_scope", "glob character"),
        ({**EXCHANGE, "scope": "tool:a action:read resource:repo/../secrets"}, "invalid_scope", "path spelling"),
        ({**EXCHANGE, "scope": "tool:a action:read resource:repo:acme/vault/"}, "invalid_scope", "path spelling"),
        ({**EXCHANGE, "scope": "tool:a action:read resource:repo:acme/vault."}, "invalid_scope", "path spelling"),
        ({**EXCHANGE, "scope": "tool:a action:read resource:repo:acme/%76ault"}, "invalid_scope", "decode"),
        ({**EXCHANGE, "scope": "tool:a action:read resource:repo:acme/vault;"}, "invalid_scope", "decode"),
        ({**EXCHANGE, "scope": "tool:a action:read resource:repo:acme/vault#"}, "invalid_scope", "decode"),
        ({**EXCHANGE, "authorization_details": "{"}, "invalid_authorization_details", "not valid JSON"),
        ({**EXCHANGE, "authorization_details": "{}"}, "invalid_authorization_details", "array of objects"),
        ({**EXCHANGE, "authorization_details": "[1]"}, "invalid_authorization_details", "array of objects"),
        ({**EXCHANGE, "authorization_details": "[]"}, "invalid_authorization_details", "array of objects"),
        (
            {**EXCHANGE, "authorization_details": '[{"type":"payment_initiation"}]'},
            "invalid_authorization_details",
            "type 'payment_initiation'",
        ),
        (
            {
                **EXCHANGE,
                "authorization_details": json.dumps(
                    [{"type": TOOL_DETAILS_TYPE, "tool": "t", "actions": ["a"], "identifier": "r", "extra": 1}]
                ),
            },
            "invalid_authorization_details",
            "fields extra",
        ),
        (
            {
                **EXCHANGE,
                "authorization_details": json.dumps(
                    [{"type": TOOL_DETAILS_TYPE, "tool": "t", "actions": "read", "identifier": "r"}]
                ),
            },
            "invalid_authorization_details",
            "actions is not a non-empty array",
        ),
        (
            {
                **EXCHANGE,
                "authorization_details": json.dumps(
                    [{"type": TOOL_DETAILS_TYPE, "tool": "t", "actions": ["a"], "identifier": "repo:*"}]
                ),
            },
            "invalid_authorization_details",
            "glob character",
        ),
        (
            {
                **EXCHANGE,
                "resource": "https://a",
                "authorization_details": json.dumps(
                    [
                        {
                            "type": TOOL_DETAILS_TYPE,
                            "tool": "t",
                            "actions": ["a"],
                            "identifier": "r",
                            "locations": ["https://b"],
                        }
                    ]
                ),
            },
            "invalid_authorization_details",
            "not among the requested",
        ),
    ],
)
def test_malformed_requests_get_the_rfc_error(pairs, error: str, words: str) -> None:
    refused = refusal(pairs)
    assert refused.error == error
    assert words in refused.description
    assert refused.status == (401 if error == "invalid_client" else 400)


def test_basic_client_authentication_is_refused_as_unknown_client() -> None:
    refused = refusal(EXCHANGE, authorization="Basic dXNlcjpwYXNz")
    assert (refused.error, refused.status) == ("invalid_client", 401)


@pytest.mark.parametrize(
    ("content_type", "body", "words"),
    [
        ("application/json", b"{}", "application/x-www-form-urlencoded, not application/json"),
        (None, b"a=b", "not no content type"),
        (FORM, b"a=" + b"x" * MAX_BODY, "larger than"),
        (FORM, b"grant_type=%ff", "not percent-encoded UTF-8"),
        (FORM, "grant_type=é".encode(), "not percent-encoded UTF-8"),
        (FORM, b"&".join(b"p%d=1" % i for i in range(100)), "more than 64 parameters"),
    ],
)
def test_bodies_that_are_not_forms(content_type, body: bytes, words: str) -> None:
    with pytest.raises(OAuthError) as caught:
        parse_form(content_type, body)
    assert caught.value.error == "invalid_request" and words in caught.value.description


def test_blank_parameters_count_as_absent() -> None:
    form = parse_form(FORM, b"grant_type=" + TOKEN_EXCHANGE.encode() + b"&scope=&resource=")
    assert "scope" not in form and "resource" not in form


def test_error_descriptions_stay_within_what_rfc_6749_allows() -> None:
    refused = refusal({**EXCHANGE, "scope": 'tool:"\\é action:a resource:r'})
    assert all(" " <= c <= "~" and c not in '"\\' for c in refused.body()["error_description"])


def test_granted_intents_read_back_from_claims() -> None:
    details = [{"type": TOOL_DETAILS_TYPE, "tool": "t", "actions": ["a", "b"], "identifier": "r"}]
    assert granted_intents({"scope": "tool:x action:y resource:z", "authorization_details": details}) == [
        Intent("x", "y", "z"),
        Intent("t", "a", "r"),
        Intent("t", "b", "r"),
    ]
    assert granted_intents({"agentcred": {"scope": {"tools": ["*"]}}}) is None


PARAMETERS = st.sampled_from(
    [
        "grant_type",
        "subject_token",
        "subject_token_type",
        "actor_token",
        "actor_token_type",
        "requested_token_type",
        "resource",
        "audience",
        "scope",
        "authorization_details",
        "assertion",
        "client_assertion",
        "client_assertion_type",
        "client_id",
        "x-unknown",
    ]
)
VALUES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        [
            TOKEN_EXCHANGE,
            JWT_BEARER,
            CLIENT_CREDENTIALS,
            JWT_TOKEN_TYPE,
            ACCESS_TOKEN_TYPE,
            CLIENT_ASSERTION_TYPE,
            "https://llm.agents.svc",
            "https://*.svc",
            "tool:a action:b resource:c",
            "tool:* action:b resource:c",
            '[{"type":"agentcred.dev/tool","tool":"t","actions":["a"],"identifier":"r"}]',
            '[{"type":"agentcred.dev/tool","tool":"t","actions":[],"identifier":null}]',
            "[[]]",
            "\u202egnp.exe",
            "🔑",
        ]
    ),
)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.lists(st.tuples(PARAMETERS, VALUES), max_size=12))
def test_any_form_is_parsed_or_refused_with_an_rfc_error(pairs: list[tuple[str, str]]) -> None:
    try:
        parsed = request(pairs)
    except OAuthError as refused:
        assert refused.error in RFC_ERRORS
        assert refused.description and refused.body()["error_description"].isascii()
    else:
        assert parsed.grant_type in (TOKEN_EXCHANGE, JWT_BEARER, CLIENT_CREDENTIALS)
        assert parsed.subject_token
        assert all("*" not in target for target in parsed.targets)
        for requested in parsed.requested:
            assert not set("*?[]") & set(requested.intent.tool + requested.intent.action + requested.intent.resource)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from([FORM, f"{FORM}; charset=UTF-8", "text/plain", "", None]))
def test_any_body_is_parsed_or_refused(body: bytes, content_type) -> None:
    try:
        form = parse_form(content_type, body)
    except OAuthError as refused:
        assert refused.error == "invalid_request" and refused.status == 400
    else:
        assert all(len(values) == 1 or name in ("resource", "audience") for name, values in form.items())
