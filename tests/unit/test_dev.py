"""The local control plane's naming, without starting one."""

from pathlib import Path

from agentcred.devcluster.commands import default_name


def test_each_checkout_gets_its_own_dev_control_plane(tmp_path: Path) -> None:
    one, two = tmp_path / "one" / "agentcred", tmp_path / "two" / "agentcred"
    for checkout in (one, two):
        (checkout / ".git").mkdir(parents=True)
        (checkout / "operator").mkdir()
    assert default_name(one) == default_name(one / "operator")  # anywhere inside the checkout
    assert default_name(one) != default_name(two)  # a second clone of the same project
    assert default_name(one).startswith("agentcred-")
