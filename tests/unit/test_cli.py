"""The command line's conventions, checked on the parser itself: help on every flag, -n the
object's namespace, --operator-namespace the operator's, --kubeconfig/--context where a
cluster is reached."""

import argparse
from collections.abc import Iterator

import pytest

from agentcred.cli import build_parser


def _commands(
    parser: argparse.ArgumentParser, path: str = "agentcred"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


COMMANDS = dict(_commands(build_parser()))


def test_every_flag_and_argument_has_help() -> None:
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, parser in COMMANDS.items()
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert missing == []


@pytest.mark.parametrize("command", ["revoke", "renew", "rotate-key", "inventory"])
def test_cluster_commands_take_kubeconfig_and_context(command: str) -> None:
    flags = {flag for action in COMMANDS[f"agentcred {command}"]._actions for flag in action.option_strings}
    assert {"--kubeconfig", "--context"} <= flags


def test_n_is_always_the_objects_namespace() -> None:
    for path, parser in COMMANDS.items():
        for action in parser._actions:
            if "-n" in action.option_strings:
                assert action.dest == "namespace" and "operator" not in (action.help or ""), path
            if "--operator-namespace" in action.option_strings:
                assert "-n" not in action.option_strings, path
    parsed = build_parser().parse_args(["rotate-key", "--operator-namespace", "ops"])
    assert parsed.operator_namespace == "ops"


def test_inventory_scope_and_outputs() -> None:
    parse = build_parser().parse_args
    assert parse(["inventory", "-n", "team-a", "-o", "yaml"]).namespace == "team-a"
    assert parse(["inventory", "-A", "-o", "json"]).all_namespaces
    with pytest.raises(SystemExit):
        parse(["inventory", "-n", "team-a", "-A"])


@pytest.mark.parametrize("command", ["trace", "leak"])
def test_trace_and_leak_take_kubeconfig_and_context(command: str) -> None:
    flags = {flag for action in COMMANDS[f"agentcred {command}"]._actions for flag in action.option_strings}
    assert {"--kubeconfig", "--context", "--operator-namespace", "--instance"} <= flags


@pytest.mark.parametrize("command", ["revoke", "renew", "rotate-key"])
def test_help_shows_the_default_timeout(command: str) -> None:
    [timeout] = [a for a in COMMANDS[f"agentcred {command}"]._actions if "--timeout" in a.option_strings]
    assert "(default 30)" in timeout.help


UNREACHABLE_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (["inventory"], 4, "no usable kubeconfig"),
        (["inventory", "--kubeconfig", "/nonexistent/config"], 2, "--kubeconfig /nonexistent/config: no such file"),
        (["inventory", "--kubeconfig", "{unreachable}"], 4, "cannot reach the cluster at 127.0.0.1:1"),
        (["revoke", "x", "-n", "y", "--kubeconfig", "{unreachable}"], 4, "cannot reach the cluster at 127.0.0.1:1"),
        (["trace", "--url", "https://localhost:1", "--as", "a/b", "--kubeconfig", "{unreachable}"], 4, "127.0.0.1:1"),
    ],
)
def test_a_broken_run_says_what_is_wrong_in_one_line_with_its_own_exit_code(
    args: list[str], code: int, said: str, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a traceback, and never 1 (which a cron job reads as `inventory --fail-on` findings)."""
    from agentcred.cli import main

    unreachable = tmp_path / "unreachable.kubeconfig"
    unreachable.write_text(UNREACHABLE_KUBECONFIG)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("suspect"))
    assert main([a.replace("{unreachable}", str(unreachable)) for a in args]) == code
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
