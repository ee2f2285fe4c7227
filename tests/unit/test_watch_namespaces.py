"""Namespace-scoped mode's settings and the admission objects it installs (the operator running
scoped against the real control plane, as the chart's ServiceAccount: tests/integration/test_scoped.py)."""

import pytest

from agentcred.api.webhook_configuration import configuration, pod_guard
from agentcred.app.config import OperatorConfig, parse_namespaces
from agentcred.cli import build_parser, main


def test_the_default_watches_every_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTCRED_WATCH_NAMESPACES", raising=False)
    config = OperatorConfig.from_env()
    assert config.watch_namespaces == () and not config.scoped
    assert config.watches("anything") and config.unwatched("anything") is None


def test_watched_namespaces_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTCRED_WATCH_NAMESPACES", " team-a,team-b,,team-a ")
    config = OperatorConfig.from_env()
    assert config.watch_namespaces == ("team-a", "team-b") and config.scoped
    assert config.watches("team-b") and not config.watches("team-c")
    said = config.unwatched("team-c")
    assert said is not None and "namespace-scoped to team-a, team-b" in said and "team-c" in said


@pytest.mark.parametrize("name", ["Team-A", "team_a", "-a", "a-", "a" * 64, "a.b"])
def test_a_name_that_is_no_namespace_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a namespace name"):
        parse_namespaces([name])


def test_watch_namespace_repeats_on_the_command_line() -> None:
    args = build_parser().parse_args(["run", "--watch-namespace", "team-a", "--watch-namespace", "team-b"])
    assert args.watch_namespace == ["team-a", "team-b"]
    assert build_parser().parse_args(["run"]).watch_namespace is None


def test_run_refuses_a_bad_namespace_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--watch-namespace", "Team_A"]) == 2
    assert "not a namespace name: 'Team_A'" in capsys.readouterr().err


def test_the_webhook_sees_only_watched_namespaces_and_never_its_own() -> None:
    everywhere = configuration(b"ca", url="https://127.0.0.1:9443", operator_namespace="ops")
    assert everywhere["webhooks"][0]["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "ops"]}
        ]
    }
    scoped = configuration(b"ca", url="https://127.0.0.1:9443", operator_namespace="ops", namespaces=("a", "b"))
    assert scoped["webhooks"][0]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "ops"]},
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]},
    ]


def test_the_pod_guard_is_scoped_with_the_operator() -> None:
    (_, everywhere), _ = pod_guard("x")
    assert "namespaceSelector" not in everywhere["spec"]["matchConstraints"]
    (_, scoped), (_, binding) = pod_guard("x", ("a",))
    assert scoped["spec"]["matchConstraints"]["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a"]}]
    }
    assert binding["spec"] == {"policyName": "x-pod-guard", "validationActions": ["Deny"]}


def test_a_webhook_reached_through_its_service_keeps_the_configurations_name() -> None:
    """`agentcred run` without --webhook-url: the Service's name must not become the
    configuration's (it did, and left a second configuration selecting the same pods)."""
    through_service = configuration(b"ca", service=("agentcred", "ops", 443), operator_namespace="ops")
    assert through_service["metadata"]["name"] == "agentcred.dev"
    assert through_service["webhooks"][0]["clientConfig"]["service"] == {
        "name": "agentcred",
        "namespace": "ops",
        "port": 443,
        "path": "/agentcred-inject",
    }
    named = configuration(b"ca", service=("svc", "ops", 443), operator_namespace="ops", name="tokens.agentcred.dev")
    assert named["metadata"]["name"] == "tokens.agentcred.dev"
