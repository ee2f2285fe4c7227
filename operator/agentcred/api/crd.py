"""Render the AgentCredential CRD from the pydantic models.

The committed `crds/` file is this function's output (`agentcred crd > crds/...`), and a
test fails when the two differ, so the schema the API server enforces and the models the
operator validates with cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import yaml

from . import model, policy_model

STRUCTURAL_NOISE = {"title"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Category", "type": "string", "jsonPath": ".spec.category"},
    {"name": "Owner", "type": "string", "jsonPath": ".spec.owner"},
    {"name": "Source", "type": "string", "jsonPath": ".status.sourceKind"},
    {"name": "TTL", "type": "string", "jsonPath": ".spec.ttl"},
    {"name": "Active", "type": "integer", "jsonPath": ".status.activeProjections"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    # The reason of the first condition that is False (Ready, then SourceAvailable), so the list
    # shows a credential whose pods wait on a failing source although it is Ready.
    {
        "name": "Problem",
        "type": "string",
        "description": "Why it is not Ready, or why its source fails (the reason of the first False condition).",
        "jsonPath": '.status.conditions[?(@.status=="False")].reason',
    },
    {"name": "Reason", "type": "string", "priority": 1, "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    # A string, not a date: kubectl renders a date column as an age, and a time still to
    # come as `<invalid>`; the RFC 3339 text reads as it is.
    {"name": "Next-Expiry", "type": "string", "priority": 1, "jsonPath": ".status.nextExpiry"},
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
        if key in STRUCTURAL_NOISE or (key == "additionalProperties" and not isinstance(value, dict)):
            continue
        if key == "additionalProperties" and isinstance(value, dict):
            result[key] = _structural(value, defs)  # a map's values (labels); `false` is dropped
        elif key == "properties":
            result[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "items":
            result[key] = _structural(value, defs)
        else:
            result[key] = value
    return dict(sorted(result.items()))


POLICY_PRINTER_COLUMNS: list[dict[str, Any]] = [
    # Which namespaces it selects (`kubectl get ns -l ...` lists them): what a NoPolicy refusal
    # usually comes down to, a label a namespace lacks.
    {"name": "Selector", "type": "string", "jsonPath": ".spec.namespaceSelector"},
    {"name": "Sources", "type": "string", "jsonPath": ".spec.sources"},
    {"name": "Audiences", "type": "string", "priority": 1, "jsonPath": ".spec.audiences"},
    {"name": "Max-TTL", "type": "string", "jsonPath": ".spec.maxTTL"},
    {"name": "Max-Lifetime", "type": "string", "jsonPath": ".spec.maxLifetime"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def openapi_schema(root: type[model.Model] = model.AgentCredentialRoot) -> dict[str, Any]:
    """The v1alpha1 schema of the whole object."""
    raw = root.model_json_schema(by_alias=True)
    schema = _structural(raw, raw.get("$defs", {}))
    schema.pop("$defs", None)
    schema["properties"]["metadata"] = {"type": "object"}
    return dict(schema)


def _definition(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: list[str],
    scope: str,
    root: type[model.Model],
    columns: list[dict[str, Any]],
    status: bool,
) -> dict[str, Any]:
    version: dict[str, Any] = {"name": model.VERSION, "served": True, "storage": True}
    if status:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    version["schema"] = {"openAPIV3Schema": openapi_schema(root)}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{model.GROUP}"},
        "spec": {
            "group": model.GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": ["agentcred"],
            },
            "versions": [version],
        },
    }


def build_crd() -> dict[str, Any]:
    return _definition(
        kind=model.KIND,
        plural=model.PLURAL,
        singular=model.SINGULAR,
        short_names=model.SHORT_NAMES,
        scope="Namespaced",
        root=model.AgentCredentialRoot,
        columns=PRINTER_COLUMNS,
        status=True,
    )


def build_policy_crd() -> dict[str, Any]:
    return _definition(
        kind=model.POLICY_KIND,
        plural=model.POLICY_PLURAL,
        singular=model.POLICY_SINGULAR,
        short_names=model.POLICY_SHORT_NAMES,
        scope="Cluster",
        root=policy_model.AgentCredentialPolicyRoot,
        columns=POLICY_PRINTER_COLUMNS,
        status=False,
    )


CRDS = {"agentcredentials": build_crd, "agentcredentialpolicies": build_policy_crd}


def render_crd_yaml(which: str = "agentcredentials") -> str:
    header = "# Generated from agentcred.model by `agentcred crd`; do not edit by hand.\n"
    return header + yaml.safe_dump(CRDS[which](), sort_keys=False, width=100)
