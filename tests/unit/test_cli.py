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
