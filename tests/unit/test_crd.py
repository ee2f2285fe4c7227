"""The committed CRD is exactly what the models generate, and is a structural schema."""

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from agentcred.api import model
from agentcred.api.crd import build_crd, build_policy_crd, render_crd_yaml
from clusterkit import CRD_FILE, CRD_FILES


def _walk(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_committed_crds_match_the_models(path) -> None:
    resource = path.name.split(".")[0]
    assert path.read_text() == render_crd_yaml(resource), "run `make crd`"
    chart_copy = path.parent.parent / "charts" / "agentcred" / "crds" / path.name
    assert chart_copy.read_text() == path.read_text(), "run `make crd` to copy the CRDs into the chart"


@pytest.mark.parametrize("build", [build_crd, build_policy_crd])
def test_schema_is_structural(build) -> None:
    schema = build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node
        assert isinstance(node.get("additionalProperties", {}), dict)  # a map's value schema, never a boolean
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


def _fields(node: dict, path: str) -> Iterator[tuple[str, dict]]:
    """Every field of a schema, by its path as `kubectl explain` spells it."""
    for name, field in (node.get("properties") or {}).items():
        yield f"{path}.{name}", field
        yield from _fields(field, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _fields(node["items"], path)


@pytest.mark.parametrize("build", [build_crd, build_policy_crd], ids=["agentcredentials", "agentcredentialpolicies"])
def test_every_field_has_a_description(build) -> None:
    schema = build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # metadata is the API server's own ObjectMeta (a CRD may say nothing else about it).
    undescribed = [
        path for path, field in _fields(schema, "") if path != ".metadata" and not field.get("description", "").strip()
    ]
    assert undescribed == [], f"`kubectl explain` would show <no description> for: {', '.join(undescribed)}"


@pytest.mark.parametrize("build", [build_crd, build_policy_crd], ids=["agentcredentials", "agentcredentialpolicies"])
def test_duration_fields_name_their_units_and_default(build) -> None:
    schema = build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    durations = [
        (path, field)
        for path, field in _fields(schema, "")
        if any("must be a duration" in rule.get("message", "") for rule in field.get("x-kubernetes-validations", []))
    ]
    assert durations
    for path, field in durations:
        assert "(s, m, h, d" in field["description"], path
        if "default" in field:
            assert f"Default {field['default']}" in field["description"] or (
                f"default {field['default']}" in field["description"]
            ), path
