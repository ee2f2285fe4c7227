"""The two pod admission policies (the pod guard on UPDATE, the opt-in check on CREATE) share one
builder: what each one matches, the order of its fields and its binding are pinned here, so that
a change to the builder shows which policy it moved. The chart ships the same objects
(tests/integration/operations/test_chart.py compares them)."""

from agentcred.api import labels
from agentcred.api.webhook_configuration import opt_in_check, pod_guard

NAME_LABEL = "kubernetes.io/metadata.name"


def _pods(operation: str) -> list[dict[str, object]]:
    return [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": [operation]}]


def test_the_pod_guard_matches_updates_of_labelled_pods_and_denies() -> None:
    (kind, policy), (binding_kind, binding) = pod_guard("x", ("a", "b"))
    assert (kind, binding_kind) == ("validatingadmissionpolicies", "validatingadmissionpolicybindings")
    assert policy["kind"] == "ValidatingAdmissionPolicy" and policy["metadata"] == {
        "name": "x-pod-guard",
        "labels": {"app.kubernetes.io/name": "agentcred"},
    }
    spec = policy["spec"]
    assert list(spec) == ["failurePolicy", "matchConstraints", "validations"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"] == {
        "resourceRules": _pods("UPDATE"),
        "objectSelector": {"matchExpressions": [{"key": labels.INJECT_LABEL, "operator": "Exists"}]},
        "namespaceSelector": {"matchExpressions": [{"key": NAME_LABEL, "operator": "In", "values": ["a", "b"]}]},
    }
    assert list(spec["matchConstraints"]) == ["resourceRules", "objectSelector", "namespaceSelector"]
    assert [v["reason"] for v in spec["validations"]] == ["Forbidden"] * 3
    assert binding["kind"] == "ValidatingAdmissionPolicyBinding" and binding["metadata"] == policy["metadata"]
    assert binding["spec"] == {"policyName": "x-pod-guard", "validationActions": ["Deny"]}


def test_the_opt_in_check_matches_creates_where_the_webhook_looks_and_denies() -> None:
    (_, policy), (_, binding) = opt_in_check("x", "ops", namespaces=("a",), excluded=("legacy",))
    spec = policy["spec"]
    assert policy["metadata"]["name"] == "x-opt-in"
    assert list(spec) == ["failurePolicy", "matchConstraints", "matchConditions", "validations"]
    assert spec["failurePolicy"] == "Fail"
    # No object selector: a pod that forgot the label is what it is there to catch.
    assert spec["matchConstraints"] == {
        "resourceRules": _pods("CREATE"),
        "namespaceSelector": {
            "matchExpressions": [
                {"key": NAME_LABEL, "operator": "NotIn", "values": ["kube-system", "ops", "legacy"]},
                {"key": NAME_LABEL, "operator": "In", "values": ["a"]},
            ]
        },
    }
    assert [c["name"] for c in spec["matchConditions"]] == ["mentions-agentcred"]
    assert [v["reason"] for v in spec["validations"]] == ["Invalid"] * 5 + ["Forbidden"]
    assert binding["spec"] == {"policyName": "x-opt-in", "validationActions": ["Deny"]}
    # Failing open, the webhook admits nothing it did not see: then the check cannot ask for its seal.
    (_, lenient), _ = opt_in_check("x", "ops", admitted_only=False)
    assert [v["reason"] for v in lenient["spec"]["validations"]] == ["Invalid"] * 5


def test_cluster_wide_the_pod_guard_has_no_namespace_selector_and_the_opt_in_check_keeps_its_own() -> None:
    (_, guard), _ = pod_guard("x")
    assert list(guard["spec"]["matchConstraints"]) == ["resourceRules", "objectSelector"]
    (_, check), _ = opt_in_check("x", "ops")
    assert check["spec"]["matchConstraints"]["namespaceSelector"] == {
        "matchExpressions": [{"key": NAME_LABEL, "operator": "NotIn", "values": ["kube-system", "ops"]}]
    }
