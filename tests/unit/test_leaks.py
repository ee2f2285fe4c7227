"""Leak response without a cluster: keyed fingerprints and their rotation, recognising our
tokens by signature, reading reports, who may act by reference, and tracing in memory."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json

import pytest

from agentcred.api.fingerprints import is_fingerprint, short
from agentcred.api.projection import IssuedValue, ProjectionState
from agentcred.api.times import utcnow
from agentcred.platform.fingerprints import Fingerprints
from agentcred.platform.keys import KeyRing, NotOurs, b64url, decode_own, encode_jwt, prune
from agentcred.platform.revocations import RevocationList
from agentcred.rules.credentials import credential_record
from agentcred.rules.leaks import (
    MAX_ITEMS,
    BadReport,
    Candidate,
    Compromise,
    in_remit,
    parse_report,
    parse_reporters,
    still_compromised,
    token_state,
)
from agentcred.runtime.leaks.tracer import Tracer
from agentcred.runtime.replicas.keyring import plan_keyring
from agentcred.runtime.store import ProjectionStore
from samples import EXCEPTION, STATIC_SOURCE, credential
from support.views import FixedView

NOW = dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc)
ISSUER = "https://agentcred.test"


def ring_now() -> KeyRing:
    return KeyRing.generate(utcnow())


# -- fingerprints --------------------------------------------------------------------------


def test_fingerprints_are_keyed_long_and_shown_short() -> None:
    value = b"sk-live-0123"
    one, other = Fingerprints(lambda: ring_now()), Fingerprints(lambda: ring_now())
    ring = ring_now()
    print_one = Fingerprints(lambda: ring)(value)
    assert print_one == Fingerprints(lambda: ring)(value), "the same key gives the same fingerprint"
    assert one(value) != other(value), "another key ring gives another fingerprint"
    assert hashlib.sha256(value).hexdigest()[:32] not in print_one, "not the plain hash"
    digest = print_one.rsplit(":", 1)[1]
    assert len(digest) == 32 and is_fingerprint(print_one)  # 128 bits
    assert short(print_one) == f"hmac-sha256:{digest[:12]}" and is_fingerprint(short(print_one))


def test_a_rotated_fingerprint_key_still_traces_what_it_fingerprinted_until_pruned() -> None:
    ring = KeyRing.generate(NOW)
    before = Fingerprints(lambda: ring)(b"value")
    rotated, handled = plan_keyring(
        ring, {"agentcred.dev/rotate": json.dumps({"id": "r1", "algorithm": "fingerprint"})}, NOW, None
    )
    assert handled == "r1"
    assert [k.alg for k in rotated.keys if k.retired_at] == [], "only the fingerprint key rotated"
    after = Fingerprints(lambda: rotated)
    assert after(b"value") != before, "new values are fingerprinted under the new key"
    assert before in after.every(b"value") and after.under(before, b"value") == before
    pruned = prune(rotated, NOW + dt.timedelta(hours=26))
    assert before not in Fingerprints(lambda: pruned).every(b"value")
    assert Fingerprints(lambda: pruned).under(before, b"value") is None


def test_scheduled_rotation_covers_the_fingerprint_key() -> None:
    ring = KeyRing.generate(NOW)
    later = NOW + dt.timedelta(days=31)
    rotated, _ = plan_keyring(ring, {}, later, dt.timedelta(days=30))
    assert rotated.mac_key("fingerprint").created_at == later


# -- our tokens, by signature --------------------------------------------------------------


def test_only_tokens_signed_by_the_ring_verify() -> None:
    ring, stranger = ring_now(), ring_now()
    claims = {"iss": ISSUER, "jti": "t1", "agentcred": {"namespace": "a"}}

    def verified_claims(token: str, ring: KeyRing) -> dict | None:
        try:
            return decode_own(token, ring)[1]
        except NotOurs:
            return None

    for alg in ("EdDSA", "ES256", "RS256"):
        assert verified_claims(encode_jwt(claims, ring.current(alg)), ring) == claims
        assert verified_claims(encode_jwt(claims, stranger.current(alg)), ring) is None
    token = encode_jwt(claims, ring.current("EdDSA"))
    head, _, signature = token.split(".")
    tampered = f"{head}.{b64url(json.dumps({**claims, 'jti': 't2'}).encode())}.{signature}"
    assert verified_claims(tampered, ring) is None
    unsigned = (
        f"{b64url(json.dumps({'alg': 'none', 'kid': ring.current('EdDSA').kid}).encode())}.{token.split('.')[1]}."
    )
    assert verified_claims(unsigned, ring) is None
    assert verified_claims("not a token", ring) is None


# -- reports -------------------------------------------------------------------------------


def test_a_report_in_the_scanners_shape_is_read_and_its_value_kept_out_of_origins() -> None:
    secret = "sk-live-abcdef"
    body = json.dumps(
        [{"token": secret, "type": "agentcred", "url": f"https://paste.example/?t={secret}", "source": "commit"}]
    ).encode()
    [candidate] = parse_report("application/json", body)
    assert candidate.token == secret and not candidate.by_reference
    assert secret not in json.dumps(candidate.origin()) and candidate.origin()["source"] == "commit"


@pytest.mark.parametrize(
    ("content_type", "body", "status", "reason"),
    [
        ("text/plain", b"[]", 415, "unsupported-media-type"),
        ("application/json", b"{", 400, "malformed-body"),
        ("application/json", b"[]", 400, "malformed-body"),
        ("application/json", json.dumps([{"token": "x"}] * (MAX_ITEMS + 1)).encode(), 413, "too-many-items"),
        ("application/json", b"[" + b" " * (1024 * 1024 + 1) + b"]", 413, "body-too-large"),
        ("application/json", json.dumps([{"token": "sk-1", "tokenId": "t"}]).encode(), 400, "invalid-item"),
        ("application/json", json.dumps([{"token": "x" * 20000}]).encode(), 400, "invalid-item"),
        ("application/json", json.dumps([{"fingerprint": "sk-1-pasted-here"}]).encode(), 400, "invalid-item"),
    ],
)
def test_bad_reports_are_refused_without_echoing_the_strings(content_type, body, status, reason) -> None:
    with pytest.raises(BadReport) as refused:
        parse_report(content_type, body)
    assert (refused.value.status, refused.value.reason) == (status, reason)
    assert "sk-1" not in refused.value.message and "xxxx" not in refused.value.message


def test_reporters_and_their_remit() -> None:
    assert parse_reporters(" secops/scanner, team-a/ci ") == {"secops/scanner", "team-a/ci"}
    with pytest.raises(ValueError, match="'scanner' is not namespace/serviceaccount"):
        parse_reporters("scanner")
    assert in_remit("team-a", False, "team-a")
    assert in_remit("secops", True, "team-b")  # listed cluster-wide
    assert not in_remit("team-a", False, "team-b")
    assert not in_remit("agentcred", False, "team-b")  # the operator's namespace alone makes no one cluster-wide


def test_token_states() -> None:
    hour = dt.timedelta(hours=1)
    common = {"issued_at": NOW - hour, "token_id": "t1", "now": NOW}
    assert token_state(expires_at=NOW, covered=False, live_token_id=None, live_issued_at=None, **common) == "expired"
    assert token_state(expires_at=NOW + hour, covered=True, live_token_id="t1", live_issued_at=NOW, **common) == (
        "revoked"
    )
    assert token_state(expires_at=NOW + hour, covered=False, live_token_id="t2", live_issued_at=NOW, **common) == (
        "superseded"
    )
    assert token_state(expires_at=NOW + hour, covered=False, live_token_id="t1", live_issued_at=NOW, **common) == (
        "live"
    )


def test_a_compromise_holds_until_the_upstream_value_differs() -> None:
    mark = Compromise("hmac-sha256:aaaaaaaa:" + "0" * 32, "41", NOW)
    assert still_compromised(mark, mark.fingerprint, "99"), "same value, whatever else changed"
    assert not still_compromised(mark, "hmac-sha256:aaaaaaaa:" + "1" * 32, "41")
    assert still_compromised(mark, None, "41") and not still_compromised(mark, None, "42"), "key gone: by version"
    assert Compromise.from_json(mark.to_json()) == mark and Compromise.from_json({"x": 1}) is None


# -- tracing in memory ---------------------------------------------------------------------


def _state(binding: str, pod: str, uid: str, values: dict[str, IssuedValue]) -> ProjectionState:
    return ProjectionState("agents", binding, pod, uid, "task", values=values)


def _value(credential_name: str, fingerprint: str, token_id: str | None = None, source: str = "jwt") -> IssuedValue:
    now = utcnow()
    return IssuedValue(
        credential_name, "tool", now, now + dt.timedelta(minutes=15), now, fingerprint, token_id, source=source
    )


class World:
    def __init__(self) -> None:
        self.ring = ring_now()
        self.fingerprints = Fingerprints(lambda: self.ring)
        self.store, self.revocations = ProjectionStore(), RevocationList()
        records = {
            "research-llm": credential_record(credential(namespace="agents")),
            "vendor": credential_record(
                credential("vendor", namespace="agents", source=STATIC_SOURCE, exception=EXCEPTION)
            ),
        }
        self.tracer = Tracer(
            keyring=lambda: self.ring,
            issuer=ISSUER,
            fingerprints=self.fingerprints,
            store=self.store,
            revocations=self.revocations,
            view=FixedView(records=records),
        )

    def minted(self, uid: str, token_id: str, iat: dt.datetime, exchanged: bool = False) -> str:
        facts = {"namespace": "agents", "credential": "research-llm", "pod": "p", "podUID": uid, "category": "model"}
        claims = {
            "iss": ISSUER,
            "sub": "system:serviceaccount:agents:research-agent",
            "iat": int(iat.timestamp()),
            "exp": int((iat + dt.timedelta(minutes=15)).timestamp()),
            "jti": token_id,
            "agentcred": {**facts, **({"grant": "urn:ietf:params:oauth:grant-type:jwt-bearer"} if exchanged else {})},
        }
        return encode_jwt(claims, self.ring.current("EdDSA"))


def test_a_static_value_held_by_three_pods_is_traced_to_all_three_then_remembered() -> None:
    world = World()
    fingerprint = world.fingerprints(b"sk-vendor")
    for i in range(3):
        world.store.put(
            _state(f"{i:016x}", f"agent-{i}", f"uid-{i}", {"vendor": _value("vendor", fingerprint, None, "secretRef")})
        )
    trace = world.tracer.trace(Candidate(token="sk-vendor\n"))
    assert trace.verdict == "ours" and {h.pod for h in trace.holders} == {"agent-0", "agent-1", "agent-2"}
    assert {h.state for h in trace.holders} == {"live"} and trace.holders[0].owner == "team-research@example.com"
    assert world.tracer.trace(Candidate(fingerprint=short(fingerprint))).holders == trace.holders
    world.store.forget("agents/0000000000000000")
    world.store.put(_state("0000000000000001", "agent-1", "uid-1", {}))
    world.store.put(_state("0000000000000002", "agent-2", "uid-2", {}))
    again = world.tracer.trace(Candidate(token="sk-vendor"))
    assert again.verdict == "ours" and {h.state for h in again.holders} == {"revoked"} and len(again.holders) == 3


def test_a_minted_token_is_traced_by_its_signature_and_a_forgery_is_not_ours() -> None:
    world = World()
    now = utcnow()
    token = world.minted("uid-1", "t1", now)
    world.store.put(_state("0000000000000001", "p", "uid-1", {"research-llm": _value("research-llm", "f", "t1")}))
    [holder] = world.tracer.trace(Candidate(token=token)).holders
    assert (holder.pod_uid, holder.kind, holder.state, holder.key) == (
        "uid-1",
        "minted",
        "live",
        "agents/0000000000000001",
    )
    assert holder.service_account == "research-agent"
    exchanged = world.tracer.trace(Candidate(token=world.minted("uid-1", "x1", now, exchanged=True)))
    assert exchanged.holders[0].kind == "exchanged"
    older = world.minted("uid-1", "t0", now - dt.timedelta(minutes=5))
    assert world.tracer.trace(Candidate(token=older)).holders[0].state == "superseded"
    world.revocations.revoke("uid-1", "research-llm", now + dt.timedelta(hours=1))
    assert world.tracer.trace(Candidate(token=token)).holders[0].state == "revoked"

    forger = dataclasses.replace(world.ring)
    world.ring = ring_now()  # the token's signer is no key of ours any more: as good as forged
    forged = world.tracer.trace(Candidate(token=encode_jwt({"iss": ISSUER, "agentcred": {}}, forger.current("EdDSA"))))
    assert forged.verdict == "not-ours" and forged.holders == ()
    assert world.tracer.trace(Candidate(token="just some string")).verdict == "unknown"


def test_token_ids_are_indexed_and_a_renewal_supersedes() -> None:
    world = World()
    world.store.put(_state("0000000000000001", "p", "uid-1", {"research-llm": _value("research-llm", "f1", "t1")}))
    assert world.tracer.trace(Candidate(tokenId="t1")).holders[0].state == "live"
    world.store.put(_state("0000000000000001", "p", "uid-1", {"research-llm": _value("research-llm", "f2", "t2")}))
    assert world.tracer.trace(Candidate(tokenId="t1")).holders[0].state == "superseded"
    assert world.tracer.trace(Candidate(tokenId="t2")).holders[0].state == "live"
    assert world.tracer.trace(Candidate(tokenId="nope")).verdict == "unknown"


# -- detectors for secret scanners ---------------------------------------------------------


def _detector_patterns() -> list[str]:
    import re
    import tomllib
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2] / "detectors"
    gitleaks = tomllib.loads((root / "gitleaks.toml").read_text())["rules"][0]
    trufflehog = yaml.safe_load((root / "trufflehog.yaml").read_text())["detectors"][0]
    assert gitleaks["keywords"] == trufflehog["keywords"] == ["eyJhZ2VudGNyZWQiOnsi", "eyJhY3QiOnsi"]
    for pattern in (gitleaks["regex"], trufflehog["regex"]["token"]):
        assert not re.search(r"\(\?[=!<]", pattern), "RE2 (Go) has no lookaround"
    return [gitleaks["regex"], trufflehog["regex"]["token"]]


def test_the_scanner_rules_find_our_tokens_and_only_ours() -> None:
    import re

    from agentcred.api.pods import PodTask
    from agentcred.rules.planning import Issue
    from agentcred.sources.jwt import JwtSource

    ring = ring_now()
    pod = PodTask(
        "agents", "agent", "uid", "research-agent", "0123456789abcdef", ("research-llm",), None, "Pending", False, True
    )
    tokens = []
    for alg in ("EdDSA", "ES256", "RS256"):
        record = credential_record(
            credential(namespace="agents", source={"jwt": {"audiences": ["a"], "algorithm": alg}})
        )
        issue = Issue("research-llm", utcnow() + dt.timedelta(minutes=15), utcnow())
        produced = asyncio.run(JwtSource(lambda: ring, ISSUER).produce(pod, record, issue, utcnow()))
        tokens.append(produced.value.decode())
    acted_through = {"act": {"sub": "system:serviceaccount:agents:planner"}, "agentcred": {"pod": "p"}, "iss": ISSUER}
    tokens.append(encode_jwt(acted_through, ring.current("RS256")))
    foreign = encode_jwt({"iss": ISSUER, "sub": "x", "exp": 1}, ring.current("EdDSA"))
    for pattern in _detector_patterns():
        for token in tokens:
            found = re.findall(pattern, f"export LLM_TOKEN={token}\n")
            assert found == [token]
        assert re.findall(pattern, foreign) == [], "another JWT is not an agentcred token"


def test_the_trace_table_reads_as_the_readme_shows_it() -> None:
    from agentcred.client.leaks import TRACE_COLUMNS, render
    from clusterkit import REPO

    readme = (REPO / "README.md").read_text()
    shown = next(line for line in readme.splitlines() if line.strip().startswith("STATE  KIND"))
    holder = {field: f"x-{field}" for field in TRACE_COLUMNS}
    printed = render([{"verdict": "ours", "fingerprint": "hmac-sha256:3f9a61c0d2b4", "holders": [holder]}], False)
    assert printed.splitlines()[1].split() == shown.split()
