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


def test_dev_up_on_a_host_without_cgroups_says_what_is_missing(tmp_path: Path, monkeypatch, capsys) -> None:
    """No hang, no traceback: what is missing, how to use the stand-in, nothing left behind."""
    from agentcred.cli import main
    from agentcred.devcluster import node

    monkeypatch.setenv("AGENTCRED_CACHE", str(tmp_path))
    monkeypatch.setattr(node, "_cgroup_hierarchies", lambda: [])
    assert main(["dev", "up", "--name", "nocgroups"]) == 1
    said = capsys.readouterr().err
    assert "this host cannot run a real node" in said and "no cgroup filesystem is mounted" in said
    assert "agentcred dev up --stand-in" in said and "Traceback" not in said
    assert not (tmp_path / "dev" / "nocgroups").exists()
