"""Render the AgentCredential CRD from the pydantic models.

The committed `crds/` file is this function's output (`agentcred crd > crds/...`), and a
test fails when the two differ, so the schema the API server enforces and the models the
operator validates with cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import yaml

from . import model

STRUCTURAL_NOISE = {"title", "additionalProperties"}

PRINTER_COLUMNS = [
    {"name": "Category", "type": "string", "jsonPath": ".spec.category"},
    {"name": "Owner", "type": "string", "jsonPath": ".spec.owner"},
    {"name": "Source", "type": "string", "jsonPath": ".status.sourceKind"},
    {"name": "TTL", "type": "string", "jsonPath": ".spec.ttl"},
    {"name": "Active", "type": "integer", "jsonPath": ".status.activeProjections"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {
        "name": "Reason",
        "type": "string",
        "priority": 1,
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
    },
    {"name": "Next-Expiry", "type": "date", "priority": 1, "jsonPath": ".status.nextExpiry"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Turn pydantic's JSON schema into a Kubernetes structural schema (inline, no nulls)."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node:
        # Optional[X] is "X or null"; Kubernetes expresses optional by omission.
        options = [option for option in node.pop("anyOf") if option != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {options}")
        option = options[0]
        if "$ref" in option:
            option = defs[option["$ref"].rsplit("/", 1)[-1]]
        node = {**option, **node}
    if node.get("default") in (None, []):
        node.pop("default", None)
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in STRUCTURAL_NOISE:
            continue
        if key == "properties":
            result[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "items":
            result[key] = _structural(value, defs)
        else:
            result[key] = value
    return dict(sorted(result.items()))


def openapi_schema() -> dict[str, Any]:
    """The v1alpha1 schema of the whole object."""
    raw = model.AgentCredentialRoot.model_json_schema(by_alias=True)
    schema = _structural(raw, raw.get("$defs", {}))
    schema.pop("$defs", None)
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{model.PLURAL}.{model.GROUP}"},
        "spec": {
            "group": model.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": model.KIND,
                "listKind": f"{model.KIND}List",
                "plural": model.PLURAL,
                "singular": model.SINGULAR,
                "shortNames": model.SHORT_NAMES,
                "categories": ["agentcred"],
            },
            "versions": [
                {
                    "name": model.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    header = "# Generated from agentcred.model by `agentcred crd`; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
