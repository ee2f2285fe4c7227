"""AgentCredentialPolicy evaluation: selectors, allow patterns, scope bounds, verdicts."""

from fnmatch import fnmatchcase

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcred.api.model import parse_spec
from agentcred.api.policy_model import AgentCredentialPolicySpec, LabelSelector, parse_policy_spec
from agentcred.rules.tenancy import allows_value, covers, judge, selects
from samples import EXCEPTION, spec


def policy(**overrides) -> AgentCredentialPolicySpec:
    base = {
        "namespaceSelector": {"matchLabels": {"team": "research"}},
        "sources": ["jwt"],
        "audiences": ["https://llm-gateway.internal"],
        "maxTTL": "1h",
        "maxLifetime": "8h",
    }
    return parse_policy_spec({**base, **overrides})


RESEARCH = {"team": "research", "kubernetes.io/metadata.name": "agents"}


def test_selector_semantics() -> None:
    selector = LabelSelector.model_validate(
        {
            "matchLabels": {"team": "a"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["dev", "test"]},
                {"key": "frozen", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selects(selector, {"team": "a", "env": "dev"})
    assert not selects(selector, {"team": "a", "env": "prod"})
    assert not selects(selector, {"team": "a", "env": "dev", "frozen": "yes"})
    assert not selects(selector, {"team": "b", "env": "dev"})
    assert selects(LabelSelector(), {})


def test_no_policy_no_credential() -> None:
    verdict = judge(
        parse_spec(spec()), "agents", RESEARCH, {"other": policy(namespaceSelector={"matchLabels": {"team": "x"}})}
    )
    assert (verdict.allowed, verdict.reason) == (False, "NoPolicy")
    assert "no AgentCredentialPolicy applies to namespace agents" in verdict.message
    # It says what the namespace carries and what each policy selects: usually a label is missing.
    assert "other selects team=x" in verdict.message and "A cluster admin labels the namespace" in verdict.message
    expressions = policy(
        namespaceSelector={
            "matchLabels": {"agentcred.dev/enabled": "true"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["dev", "test"]},
                {"key": "frozen", "operator": "DoesNotExist"},
            ],
        }
    )
    bare = judge(parse_spec(spec()), "agents", {"kubernetes.io/metadata.name": "agents"}, {"default": expressions})
    assert "(its labels: none)" in bare.message
    assert "default selects agentcred.dev/enabled=true,env in (dev,test),!frozen" in bare.message
    assert "there is no AgentCredentialPolicy" in judge(parse_spec(spec()), "agents", RESEARCH, {}).message


def test_allowed_names_the_policy() -> None:
    verdict = judge(parse_spec(spec()), "agents", RESEARCH, {"research": policy()})
    assert (verdict.allowed, verdict.policy) == (True, "research")


@pytest.mark.parametrize(
    ("credential", "allowed", "phrase"),
    [
        (
            spec(source={"jwt": {"audiences": ["https://team-b-gateway.internal"]}}),
            policy(),
            "audience 'https://team-b-gateway.internal' is not allowed",
        ),
        (spec(ttl="2h"), policy(), "ttl 2h is over the maximum 1h"),
        (spec(maxLifetime="24h"), policy(), "maxLifetime 24h is over the maximum 8h"),
        (
            spec(source={"secretRef": {"name": "k", "key": "v"}}, exception=EXCEPTION),
            policy(),
            "source secretRef is not allowed",
        ),
        (
            spec(source={"webhook": {"url": "https://169.254.169.254/latest"}}),
            policy(sources=["webhook"], mintingServices=["https://minter.research.internal/*"]),
            "minting service 'https://169.254.169.254/latest'",
        ),
        (
            spec(scope={"tools": ["*"], "actions": ["read"], "resources": ["repo:acme/*"]}),
            policy(scope={"tools": ["web-*"]}),
            "scope tools pattern '*' is wider than allowed",
        ),
        (spec(category="deployment"), policy(categories=["model", "tool"]), "category deployment is not allowed"),
    ],
)
def test_each_rule_refuses_with_its_reason(credential, allowed, phrase) -> None:
    verdict = judge(parse_spec(credential), "agents", RESEARCH, {"research": allowed})
    assert (verdict.allowed, verdict.reason) == (False, "PolicyDenied")
    assert phrase in verdict.message and verdict.message.startswith("policy research: ")


def test_any_applicable_policy_may_allow() -> None:
    strict, broad = policy(), policy(audiences=["https://*.internal"], maxTTL="4h")
    assert (
        judge(parse_spec(spec(ttl="2h")), "agents", RESEARCH, {"a-strict": strict, "b-broad": broad}).policy
        == "b-broad"
    )


def test_allow_patterns_have_only_star() -> None:
    assert allows_value(["https://*.team-a.internal"], "https://llm.team-a.internal")
    assert not allows_value(["https://*.team-a.internal"], "https://llm.team-b.internal")
    assert not allows_value(["https://gateway?internal"], "https://gateway.internal")  # ? is literal here
    assert allows_value(["https://minter.internal/*"], "https://minter.internal/mint")
    assert not allows_value([], "anything")


@pytest.mark.parametrize(
    ("bound", "pattern", "expected"),
    [
        ("repo:acme/*", "repo:acme/app-*", True),
        ("repo:acme/*", "repo:acme/*", True),
        ("repo:acme/*", "repo:*", False),
        ("repo:acme/?", "repo:acme/*", False),  # ? is literal in a bound
        ("web-*", "web-search", True),
        ("web-search", "web-?earch", False),
        ("web-*", "[w]eb-search", False),
        ("*", "[!a]*?", True),
        ("a*b*c", "a?x*yb[c]zc", True),
    ],
)
def test_scope_bounds(bound: str, pattern: str, expected: bool) -> None:
    assert covers(bound, pattern) is expected


alphabet = st.sampled_from("ab*?[]!")


@settings(max_examples=3000)
@given(st.text("ab*", max_size=6), st.text(alphabet, max_size=6), st.text("ab?[]!", max_size=8))
def test_covering_is_sound(bound: str, pattern: str, value: str) -> None:
    """Whatever the credential's pattern lets through, the bound lets through too."""
    if covers(bound, pattern) and fnmatchcase(value, pattern):
        assert allows_value([bound], value), (bound, pattern, value)


def test_the_charts_default_policy_keeps_each_tenant_to_its_own_gateways() -> None:
    import yaml

    from clusterkit import REPO

    values = yaml.safe_load((REPO / "charts" / "agentcred" / "values.yaml").read_text())["defaultPolicy"]
    default = parse_policy_spec({k: v for k, v in values.items() if k != "enabled"})
    enabled = {"agentcred.dev/enabled": "true"}

    def verdict(namespace: str, audience: str):
        return judge(
            parse_spec(spec(source={"jwt": {"audiences": [audience]}})), namespace, enabled, {"default": default}
        )

    assert verdict("team-a", "https://gateway.team-a.svc").allowed
    assert verdict("team-a", "https://gateway.team-a.svc.cluster.local").allowed
    assert not verdict("team-a", "https://gateway.team-b.svc").allowed
    assert not verdict("team-a", "https://llm-gateway.internal").allowed
    assert not verdict("team-a", "https://evil.example/x.team-a.svc.example").allowed


def test_minting_service_urls_are_matched_part_by_part() -> None:
    from agentcred.rules.tenancy import allows_url

    allowed = ["https://*.team-a.internal/mint", "https://minter.team-a.internal:8443/v1/*"]
    assert allows_url(allowed, "https://minter.team-a.internal/mint")
    assert allows_url(allowed, "https://minter.team-a.internal:8443/v1/tokens")
    for url in (
        "https://127.0.0.1:41501/x.team-a.internal/mint",  # the host is a host, not a substring
        "https://evil.example/?.team-a.internal/mint",
        "https://evil.example/#.team-a.internal/mint",
        "https://a.b.team-a.internal/mint",  # `*` is one label
        "https://minter.team-a.internal@evil.example/mint",
        "https://minter.team-a.internal/mint?x=1",
        "https://minter.team-a.internal:444/mint",
        "http://minter.team-a.internal/mint",
        "https://minter.team-a.internal:8443/v2/tokens",
    ):
        assert not allows_url(allowed, url), url


def test_wide_url_patterns_say_so() -> None:
    from agentcred.rules.tenancy import allows_url

    assert allows_url(["https://*:*/*"], "https://127.0.0.1:41501/mint")
    assert allows_url(["https://*/*"], "https://minter.example/mint") and not allows_url(
        ["https://*/*"], "https://m.example:8443/"
    )
    assert not allows_url(["https://*:*/*"], "https://user@127.0.0.1:41501/mint")


def test_a_policy_decision_is_kept_until_what_it_was_made_from_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentcred.rules import credentials as gatekeeping
    from agentcred.rules.credentials import Gatekeeper, credential_record
    from samples import credential

    judged: list[str] = []
    original = gatekeeping.tenancy.judge

    def counted(*args, **kwargs):
        judged.append("judged")
        return original(*args, **kwargs)

    monkeypatch.setattr(gatekeeping.tenancy, "judge", counted)
    record = credential_record(credential(namespace="agents"))
    policies = {"research": policy()}
    namespaces = {"agents": RESEARCH}
    gate = Gatekeeper(lambda: dict(policies), namespaces.get, lambda namespace, name: None)
    first = gate.judged(record)
    assert first is not None and first.ready and first.allowed_by == "research"
    assert gate.judged(record) is first and len(judged) == 1  # asked again: the same answer, not judged again
    namespaces["agents"] = {"team": "elsewhere"}  # the namespace's labels changed
    moved = gate.judged(record)
    assert moved is not None and not moved.ready and moved.verdict().reason == "NoPolicy" and len(judged) == 2
    namespaces["agents"] = RESEARCH
    assert gate.judged(record).ready
    policies["research"] = policy(maxTTL="1m")  # the policy changed: the default ttl is beyond it now
    assert not gate.judged(record).ready
    policies.clear()
    assert gate.judged(record).verdict().reason == "NoPolicy"
    policies["research"] = policy()
    changed = credential_record(credential(namespace="agents", ttl="2h"))  # a new spec: judged anew
    assert not gate.judged(changed).ready and gate.judged(record).ready and len(judged) == 7


def test_a_static_credential_is_judged_against_its_upstream_secret_every_time() -> None:
    from agentcred.rules.credentials import Gatekeeper, SharedSecret, credential_record
    from samples import EXCEPTION, STATIC_SOURCE, credential

    record = credential_record(credential(name="vendor", namespace="agents", source=STATIC_SOURCE, exception=EXCEPTION))
    key = STATIC_SOURCE["secretRef"]["key"]
    shared: dict[tuple[str, str], SharedSecret] = {}
    allowing = {"research": policy(sources=["jwt", "secretRef"])}
    gate = Gatekeeper(lambda: allowing, {"agents": RESEARCH}.get, lambda ns, name: shared.get((ns, name)))
    before = gate.judged(record)
    assert before is not None and before.verdict().reason == "UpstreamNotShared"
    shared[("agents", STATIC_SOURCE["secretRef"]["name"])] = SharedSecret(
        frozenset({key}), frozenset({f"vendor/{key}"})
    )
    after = gate.judged(record)  # the same record and policies: the upstream Secret alone changed
    assert after is not None and after.verdict().reason != "UpstreamNotShared"


def test_a_policy_that_requires_dpop_allows_only_credentials_whose_tokens_are_bound() -> None:
    strict = {"strict": policy(requireDPoP=True)}
    bearer = judge(parse_spec(spec()), "agents", RESEARCH, strict)
    assert not bearer.allowed and "set source.jwt.dpop to required" in bearer.message
    bound = spec(source={"jwt": {"audiences": ["https://llm-gateway.internal"], "dpop": "required"}})
    assert judge(parse_spec(bound), "agents", RESEARCH, strict).allowed


def test_an_upstream_secret_says_exactly_what_stands_in_the_way() -> None:
    from agentcred.rules.credentials import SharedSecret, credential_record, upstream_problem
    from samples import EXCEPTION, STATIC_SOURCE, credential

    body = credential(name="vendor", namespace="agents", source=STATIC_SOURCE, exception=EXCEPTION)
    record = credential_record(body)
    key = STATIC_SOURCE["secretRef"]["key"]

    def problem(found: SharedSecret | None) -> tuple[str, str]:
        verdict = upstream_problem(record, found)
        assert verdict is not None
        return verdict.reason, verdict.message

    reason, message = problem(None)
    assert reason == "UpstreamNotShared" and "is not shared with agentcred, or does not exist" in message
    reason, message = problem(SharedSecret(frozenset({key}), frozenset({"other/api"})))
    assert reason == "UpstreamNotShared" and "is shared with other/api, not with vendor" in message
    reason, message = problem(SharedSecret(frozenset({key, "token"}), frozenset({"vendor/token"})))
    assert reason == "UpstreamNotShared" and f"shares key token with AgentCredential vendor, not {key}" in message
    reason, message = problem(SharedSecret(frozenset({"token"}), frozenset({"vendor"})))
    assert (reason, message.endswith(f"has no key {key} (its keys: token)")) == ("UpstreamKeyMissing", True)
    assert upstream_problem(record, SharedSecret(frozenset({key}), frozenset({f"vendor/{key}"}))) is None
