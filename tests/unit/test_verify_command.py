"""`agentcred verify` offline (--jwks-file): RFC 9068 tokens, and what a narrowed token grants
said in its own terms (scope, authorization_details), a token that names none its
credential's patterns, and who acts through it."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from agentcred.cli import main
from agentcred.platform.keys import KeyRing, encode_jwt

ISSUER = "https://agentcred.agentcred.svc:8443"
AUDIENCE = "https://llm-gateway.internal"
RING = KeyRing.generate(dt.datetime.now(dt.timezone.utc))


def _token(**claims: Any) -> str:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "sub": "system:serviceaccount:agents:research-agent",
        "client_id": "system:serviceaccount:agents:research-agent",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "t1",
        "agentcred": {"credential": "research-llm", "namespace": "agents", "pod": "agent", "podUID": "u1"},
    }
    return encode_jwt({**base, **claims}, RING.current("RS256"))


def _verify(
    token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(RING.jwks()))
    monkeypatch.setattr("sys.stdin", io.StringIO(token))
    code = main(["verify", "--audience", AUDIENCE, "-n", "agents", "--jwks-file", str(jwks), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_narrowed_token_shows_what_it_grants(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _token(
        scope="tool:web-search action:read resource:repo:acme/app",
        authorization_details=[
            {
                "type": "agentcred.dev/tool",
                "tool": "fetch-page",
                "actions": ["read"],
                "identifier": "repo:acme/docs",
                "locations": [AUDIENCE],
            }
        ],
        act={"sub": "system:serviceaccount:agents:planner", "act": {"sub": "user:alice"}},
    )
    args = ("--issuer", ISSUER, "--tool", "fetch-page", "--action", "read", "--resource", "repo:acme/docs")
    code, out, _ = _verify(token, tmp_path, monkeypatch, capsys, *args)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("valid: sub=system:serviceaccount:agents:research-agent namespace=agents")
    assert lines[1:] == [
        f"  audience: {AUDIENCE}",
        "  scope: tool:web-search action:read resource:repo:acme/app",
        "  authorization_details: type=agentcred.dev/tool tool=fetch-page actions=read identifier=repo:acme/docs "
        f"locations={AUDIENCE}",
        "  acting: system:serviceaccount:agents:planner <- user:alice",
    ]
    # The narrowed token grants what it names, not more.
    args = ("--issuer", ISSUER, "--tool", "fetch-page", "--action", "read", "--resource", "repo:acme/app")
    code, out, _ = _verify(token, tmp_path, monkeypatch, capsys, *args)
    assert code == 1 and out.startswith("refused (out-of-scope)")


def test_a_token_that_names_no_intent_shows_its_credentials_patterns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scope = {"tools": ["web-search", "fetch-*"], "actions": ["read"], "resources": ["repo:acme/*"]}
    token = _token(
        agentcred={
            "credential": "research-llm",
            "namespace": "agents",
            "pod": "agent",
            "podUID": "u1",
            "scope": {**scope, "deny": {"resources": ["repo:acme/secrets*"]}},
        }
    )
    code, out, _ = _verify(token, tmp_path, monkeypatch, capsys, "--issuer", ISSUER)
    assert code == 0, out
    assert out.splitlines()[1:] == [
        f"  audience: {AUDIENCE}",
        "  not narrowed: the credential's scope tools=web-search,fetch-* actions=read resources=repo:acme/*",
        "    deny resources=repo:acme/secrets*",
    ]


def test_only_access_tokens_pass_and_offline_needs_an_issuer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(time.time())
    id_token = encode_jwt(
        {"iss": ISSUER, "sub": "x", "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 60, "jti": "j"},
        RING.current("ES256"),
        typ="JWT",
    )
    code, out, _ = _verify(id_token, tmp_path, monkeypatch, capsys, "--issuer", ISSUER)
    assert code == 1 and out.startswith("refused (wrong-type): type 'JWT' is not at+jwt (RFC 9068)")
    # Without --issuer there is no discovery to learn it from: a sentence, not a refusal of every token.
    code, out, err = _verify(_token(), tmp_path, monkeypatch, capsys)
    assert code == 2 and "--issuer" in err and out == ""
