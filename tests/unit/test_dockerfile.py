"""The Dockerfile cannot be built here (no Docker engine), so its structure is checked."""

import re

from clusterkit import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
INSTRUCTIONS = [line.strip() for line in DOCKERFILE.splitlines() if line.strip() and not line.startswith("#")]


def test_base_images_are_pinned_slim_python() -> None:
    bases = [line.split()[1] for line in INSTRUCTIONS if line.startswith("FROM ")]
    assert len(bases) >= 2, "multi-stage build expected"
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base


def test_runs_as_non_root_numeric_user() -> None:
    users = [line.split()[1] for line in INSTRUCTIONS if line.startswith("USER ")]
    assert users, "no USER instruction"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_entrypoint_runs_the_operator() -> None:
    assert 'ENTRYPOINT ["agentcred", "run"]' in INSTRUCTIONS


def test_no_secret_material_is_copied_in() -> None:
    copies = " ".join(line for line in INSTRUCTIONS if line.startswith(("COPY", "ADD")))
    for forbidden in (".pem", ".key", ".env", "kubeconfig", "id_rsa", "secret"):
        assert forbidden not in copies.lower(), forbidden
    assert not any(line.startswith("ADD ") for line in INSTRUCTIONS), "use COPY, not ADD"


def test_image_ports_and_version_match_the_chart() -> None:
    import yaml

    import agentcred

    chart = yaml.safe_load((REPO / "charts" / "agentcred" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts" / "agentcred" / "values.yaml").read_text())
    assert chart["appVersion"] == agentcred.__version__  # pyproject reads it from there too
    exposed = {int(p) for line in INSTRUCTIONS if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert exposed == {values["webhook"]["port"], values["api"]["port"], values["health"]["port"]}
    assert values["image"]["repository"] == "ghcr.io/agentcred/agentcred"


def test_the_mcp_examples_image_written_here_copies_what_its_dockerfile_copies() -> None:
    from agentcred.devcluster.images import MCP_EXAMPLE_FILES

    dockerfile = (REPO / "examples" / "mcp" / "Dockerfile").read_text().splitlines()
    copied = [line.split()[1:-1] for line in dockerfile if line.startswith("COPY ") and line.split()[-1] == "./"]
    assert copied == [list(MCP_EXAMPLE_FILES)], copied
