"""The admission objects agentcred installs, as plain Kubernetes objects: the mutating
webhook configuration (opted-in pods only, fail closed, a short timeout) and the pod guard
(an in-tree ValidatingAdmissionPolicy). `agentcred run` applies them when it manages its own
configuration; the Helm chart ships the same (a test compares them).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Literal

from . import labels
from .model import GROUP

DEFAULT_CONFIGURATION_NAME = "agentcred.dev"
HANDLER_ID = "agentcred-inject"
TIMEOUT_SECONDS = 5
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


# How the operator treats the MutatingWebhookConfiguration: "manage" creates and owns it;
# "inject-ca" only keeps the caBundle of the one the chart installed up to date; "none" leaves it.
WebhookMode = Literal["manage", "inject-ca", "none"]
WEBHOOK_MODES: tuple[WebhookMode, ...] = ("manage", "inject-ca", "none")
# The serving certificate: "managed" (made, shared and renewed by the replicas) or "external"
# (issued into the Secret by cert-manager or another issuer: only read).
CertificateMode = Literal["managed", "external"]
CERTIFICATE_MODES: tuple[CertificateMode, ...] = ("managed", "external")


def configuration(
    ca_pem: bytes,
    *,
    url: str | None = None,
    service: tuple[str, str, int] | None = None,
    operator_namespace: str,
    name: str = DEFAULT_CONFIGURATION_NAME,
    namespaces: Sequence[str] = (),
) -> dict[str, Any]:
    """The MutatingWebhookConfiguration: opted-in pods only, fail closed, short timeout; with
    `namespaces` (namespace-scoped mode), only pods in those."""
    client_config: dict[str, Any] = {"caBundle": base64.b64encode(ca_pem).decode()}
    if url is not None:
        client_config["url"] = f"{url.rstrip('/')}/{HANDLER_ID}"
    elif service is not None:
        service_name, service_namespace, port = service
        client_config["service"] = {
            "name": service_name,
            "namespace": service_namespace,
            "port": port,
            "path": f"/{HANDLER_ID}",
        }
    else:
        raise ValueError("the webhook needs either a URL or a Service to be reached at")
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "agentcred"}},
        "webhooks": [
            {
                "name": "pods.agentcred.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "IfNeeded",
                "timeoutSeconds": TIMEOUT_SECONDS,
                "objectSelector": {"matchLabels": {labels.INJECT_LABEL: "true"}},
                # The operator's own pods must never wait on the operator.
                "namespaceSelector": {"matchExpressions": namespace_expressions(operator_namespace, namespaces)},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                        "operations": ["CREATE"],
                        "scope": "Namespaced",
                    }
                ],
                "clientConfig": client_config,
            }
        ],
    }


def skipped_namespaces(operator_namespace: str) -> tuple[str, ...]:
    """Where the webhook is never called: the operator's own pods must never wait on it."""
    return ("kube-system", operator_namespace)


def namespace_expressions(operator_namespace: str, namespaces: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Never kube-system or the operator's own namespace; in namespace-scoped mode, only the
    namespaces watched (the API server sets kubernetes.io/metadata.name on every namespace)."""
    expressions: list[dict[str, Any]] = [
        {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": list(skipped_namespaces(operator_namespace))}
    ]
    if namespaces:
        expressions.append({"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": list(namespaces)})
    return expressions


def _only_in(namespaces: Sequence[str]) -> dict[str, Any]:
    return {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": list(namespaces)}


def _pod_policy(
    name: str,
    operation: Literal["CREATE", "UPDATE"],
    validations: list[dict[str, Any]],
    *,
    object_selector: dict[str, Any] | None = None,
    namespace_match: list[dict[str, Any]],
    match_conditions: list[dict[str, Any]] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """A ValidatingAdmissionPolicy on pods' `operation`, failing closed, and its binding (Deny)."""
    match_constraints: dict[str, Any] = {
        "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": [operation]}]
    }
    if object_selector is not None:
        match_constraints["objectSelector"] = object_selector
    if namespace_match:
        match_constraints["namespaceSelector"] = {"matchExpressions": namespace_match}
    spec: dict[str, Any] = {"failurePolicy": "Fail", "matchConstraints": match_constraints}
    if match_conditions is not None:
        spec["matchConditions"] = match_conditions
    spec["validations"] = validations
    meta = {"labels": {"app.kubernetes.io/name": "agentcred"}}
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, **meta},
        "spec": spec,
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, **meta},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    return [("validatingadmissionpolicies", policy), ("validatingadmissionpolicybindings", binding)]


GUARDED_ANNOTATIONS = (
    labels.CREDENTIALS_ANNOTATION,
    labels.BINDING_ANNOTATION,
    labels.ADMITTED_ANNOTATION,
    labels.SEAL_ANNOTATION,
)


def _cel_value(field: str, key: str, obj: str) -> str:
    return f"(has({obj}.metadata.{field}) && {key} in {obj}.metadata.{field} ? {obj}.metadata.{field}[{key}] : '')"


def pod_guard(
    name: str = DEFAULT_CONFIGURATION_NAME, namespaces: Sequence[str] = ()
) -> list[tuple[str, dict[str, Any]]]:
    """An in-tree ValidatingAdmissionPolicy (and its binding) that refuses, for any pod that
    carries or would carry the opt-in label, adding, changing or removing the label or what
    the webhook sealed, and lifting a quarantine. It needs no webhook, so it holds even while the operator is down.
    With `namespaces` (namespace-scoped mode), only there: admitted pods live nowhere else."""
    label = f"'{labels.INJECT_LABEL}'"
    quarantined = f"'{labels.QUARANTINED_LABEL}'"
    annotations = ", ".join(f"'{a}'" for a in GUARDED_ANNOTATIONS)
    validations: list[dict[str, Any]] = [
        {
            "expression": f"{_cel_value('labels', label, 'object')} == {_cel_value('labels', label, 'oldObject')}",
            "message": f"the {labels.INJECT_LABEL} label cannot be added, changed or removed on an "
            "existing pod: delete the pod and create it again",
            "reason": "Forbidden",
        },
        {
            "expression": f"[{annotations}].all(k, {_cel_value('annotations', 'k', 'object')} == "
            f"{_cel_value('annotations', 'k', 'oldObject')})",
            "message": f"the annotations {', '.join(GUARDED_ANNOTATIONS)} cannot change after admission: "
            "delete the pod and create it again",
            "reason": "Forbidden",
        },
        {
            # A quarantine is what a NetworkPolicy selects: whoever may update the pod
            # must not be able to lift it.
            "expression": f"{_cel_value('labels', quarantined, 'oldObject')} == '' || "
            f"{_cel_value('labels', quarantined, 'object')} == "
            f"{_cel_value('labels', quarantined, 'oldObject')}",
            "message": f"the {labels.QUARANTINED_LABEL} label cannot be changed or removed: the pod's "
            "credential leaked; delete the pod",
            "reason": "Forbidden",
        },
    ]
    return _pod_policy(
        f"{name}-pod-guard",
        "UPDATE",
        validations,
        object_selector={"matchExpressions": [{"key": labels.INJECT_LABEL, "operator": "Exists"}]},
        namespace_match=[_only_in(namespaces)] if namespaces else [],
    )


# What a person puts on a pod; the webhook adds the rest (GUARDED_ANNOTATIONS), the operator
# the quarantine label.
POD_LABELS = (labels.INJECT_LABEL, labels.QUARANTINED_LABEL)


def _present(field: str, key: str) -> str:
    return f"(has(object.metadata.{field}) && '{key}' in object.metadata.{field})"


def _any_ours(field: str) -> str:
    return f"(has(object.metadata.{field}) && object.metadata.{field}.exists(k, k.startsWith('{GROUP}/')))"


def _unknown(field: str, known: Sequence[str]) -> str:
    listed = ", ".join(f"'{k}'" for k in known)
    return f"object.metadata.{field}.filter(k, k.startsWith('{GROUP}/') && !(k in [{listed}]))"


def opt_in_check(
    name: str = DEFAULT_CONFIGURATION_NAME,
    operator_namespace: str = "agentcred",
    namespaces: Sequence[str] = (),
    excluded: Sequence[str] = (),
    admitted_only: bool = True,
) -> list[tuple[str, dict[str, Any]]]:
    """An in-tree ValidatingAdmissionPolicy (and its binding) that refuses, where the webhook
    looks, a new pod that means to opt in but would run without its credentials: the
    credentials annotation without the opt-in label, the label with another value than
    "true" or written as an annotation, an agentcred.dev/ key agentcred does not read (a typo),
    and -- with `admitted_only`, when the webhook fails closed -- a labelled pod no agentcred
    webhook admitted (no operator running, its configuration missing). It needs no webhook, so
    it holds while the operator is down; a Job or a Deployment makes the pod again once fixed."""
    label, credentials = labels.INJECT_LABEL, labels.CREDENTIALS_ANNOTATION
    unknown_annotations = _unknown("annotations", GUARDED_ANNOTATIONS)
    validations: list[dict[str, Any]] = [
        {
            "expression": f"!{_present('labels', label)} || object.metadata.labels['{label}'] == 'true'",
            "messageExpression": f'\'the label {label} opts a pod in with the value "true" only, not "\' + '
            f"object.metadata.labels['{label}'] + '\": as it is, agentcred gives this pod nothing'",
            "reason": "Invalid",
        },
        {
            "expression": f"!{_present('annotations', label)} || {_present('labels', label)}",
            "message": f'{label} is a label, not an annotation: set metadata.labels["{label}"] to "true" (and '
            f"name the credentials in the annotation {credentials})",
            "reason": "Invalid",
        },
        {
            "expression": f"!{_present('annotations', credentials)} || {_present('labels', label)}",
            "message": f"the pod names agentcred credentials (annotation {credentials}) but has no label "
            f'{label}: "true", so agentcred\'s webhook never sees it and it would run without them: add the label',
            "reason": "Invalid",
        },
        {
            "expression": f"!has(object.metadata.annotations) || {unknown_annotations}.size() == 0",
            "messageExpression": f"'agentcred reads no annotation ' + {unknown_annotations}[0]"
            f" + ': did you mean {credentials} (the credentials, comma-separated)?'",
            "reason": "Invalid",
        },
        {
            "expression": f"!has(object.metadata.labels) || {_unknown('labels', POD_LABELS)}.size() == 0",
            "messageExpression": f"'agentcred reads no label ' + {_unknown('labels', POD_LABELS)}[0] + "
            f"': did you mean {label}: \"true\"?'",
            "reason": "Invalid",
        },
    ]
    if admitted_only:
        validations.append(
            {
                "expression": f"!{_present('labels', label)} || object.metadata.labels['{label}'] != 'true' || "
                f"{_present('annotations', labels.SEAL_ANNOTATION)}",
                "message": f'no agentcred webhook admitted this pod (label {label}: "true"), so it would run '
                "without its credentials: the operator is not running, or its webhook configuration is missing. "
                "Start the operator (locally: agentcred run --standalone --namespace agentcred --webhook-url "
                "https://127.0.0.1:9443), then create the pod again: a Job or a Deployment does so by itself",
                "reason": "Forbidden",
            }
        )
    skipped = [*skipped_namespaces(operator_namespace), *excluded]
    expressions: list[dict[str, Any]] = [{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": skipped}]
    if namespaces:
        expressions.append(_only_in(namespaces))
    return _pod_policy(
        f"{name}-opt-in",
        "CREATE",
        validations,
        # Where the webhook looks: elsewhere agentcred admits nothing, by design.
        namespace_match=expressions,
        # Only pods that carry anything of ours are looked at.
        match_conditions=[
            {"name": "mentions-agentcred", "expression": f"{_any_ours('labels')} || {_any_ours('annotations')}"}
        ],
    )
