"""The committed CRD is exactly what the models generate, and is a structural schema."""

from typing import Any, Iterator

import yaml

from agentcred import model
from agentcred.crd import build_crd, render_crd_yaml
from clusterkit import CRD_FILE


def _walk(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == render_crd_yaml(), "run `agentcred crd > crds/agentcredentials.agentcred.dev.yaml`"


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "additionalProperties" not in node
        assert node.get("default", "x") is not None


def test_every_model_field_is_in_the_schema_with_its_required_flag() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for name, field in model.AgentCredentialSpec.model_fields.items():
        alias = field.alias or name
        assert alias in schema["properties"], alias
        assert (alias in schema.get("required", [])) == field.is_required(), alias


def test_enums_and_names() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    version = crd["spec"]["versions"][0]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec_schema["properties"]["category"]["enum"] == list(model.CATEGORIES)
    assert crd["spec"]["names"]["shortNames"] == ["acred"]
    assert version["subresources"] == {"status": {}}
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    for wanted in ("Category", "Owner", "Source", "TTL", "Active", "Ready", "Age"):
        assert wanted in columns


def test_the_chart_ships_the_same_crd() -> None:
    chart_copy = CRD_FILE.parent.parent / "charts" / "agentcred" / "files" / CRD_FILE.name
    assert chart_copy.read_text() == CRD_FILE.read_text(), "run `make crd` to copy the CRD into the chart"
