import pytest

from agentcred.platform.kube import resource_of


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/api/v1/namespaces/team-a/secrets", "secrets"),
        ("/api/v1/namespaces/team-a/secrets/agentcred-1234", "secrets"),
        ("/api/v1/namespaces/team-a/pods/agent-xyz", "pods"),
        ("/apis/agentcred.dev/v1alpha1/namespaces/team-a/agentcredentials/llm/status", "agentcredentials/status"),
        ("/apis/authentication.k8s.io/v1/tokenreviews", "tokenreviews"),
        (
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/agentcred.dev",
            "mutatingwebhookconfigurations",
        ),
        ("/apis/coordination.k8s.io/v1/namespaces/agentcred/leases/agentcred-leader", "leases"),
    ],
)
def test_metric_operation_names_the_resource_never_a_namespace_or_object(path: str, resource: str) -> None:
    assert resource_of(path) == resource
