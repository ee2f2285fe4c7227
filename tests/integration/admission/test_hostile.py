"""Hostile requests against the running operator's webhook and exchange endpoint: each
gets a clear answer, nothing crashes, nothing is issued."""

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentcred.api import labels
from agents import create_credential, service_account
from clusterkit import Cluster, OperatorProcess


def _post(
    url: str, cafile: str, body: bytes, content_type: str = "application/json", headers: dict | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=cafile), timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _review(namespace: str, pod: dict) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "11111111-2222-3333-4444-555555555555",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "namespace": namespace,
                "userInfo": {"username": "mallory"},
                "object": pod,
            },
        }
    ).encode()


def _pod(namespace: str, annotation: str, name: str = "probe") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {labels.INJECT_LABEL: "true"},
            "annotations": {labels.CREDENTIALS_ANNOTATION: annotation},
        },
        "spec": {"serviceAccountName": "research-agent", "containers": [{"name": "c", "image": "x"}]},
    }


@pytest.fixture
def target(cluster: Cluster, operator: OperatorProcess, namespace: str) -> dict:
    service_account(cluster, namespace)
    create_credential(cluster, namespace)
    return {
        "webhook": f"https://127.0.0.1:{operator.webhook_port}/agentcred-inject",
        "token": f"{operator.api_url}/oauth2/token",
        "ca": operator.ca_file(),
        "namespace": namespace,
    }


def test_malformed_admission_reviews(cluster: Cluster, operator: OperatorProcess, target: dict) -> None:
    namespace, url, ca = target["namespace"], target["webhook"], target["ca"]
    cases = {
        "not json": b"{not json",
        "empty": b"",
        "no request": json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
        "no object": json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"uid": "x", "operation": "CREATE"},
            }
        ).encode(),
        "metadata not an object": _review(namespace, {"metadata": 7, "spec": {}}),
        "huge annotation": _review(namespace, _pod(namespace, "a," * 200000)),
        "unicode name": _review(namespace, _pod(namespace, "résearch-llm")),
        "injection": _review(namespace, _pod(namespace, 'research-llm"; rm -rf /; echo "')),
        "path traversal": _review(namespace, _pod(namespace, "../../kube-system/secret")),
        "another namespace": _review("kube-system", _pod("kube-system", "research-llm")),
    }
    for case, body in cases.items():
        status, answer = _post(url, ca, body)
        assert status < 600, case
        if status == 200:
            response = json.loads(answer)["response"]
            assert response["allowed"] is False and response["status"]["message"], case
        else:
            assert 400 <= status < 500 or status == 500, (case, status)
        operator.assert_alive()
    assert cluster.core.list_namespaced_secret(namespace, label_selector=f"{labels.MANAGED_LABEL}=true").items == []
    # ... and a well-formed request still works.
    status, answer = _post(url, ca, _review(namespace, _pod(namespace, "research-llm")))
    assert status == 200 and json.loads(answer)["response"]["allowed"] is True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.tuples(
                st.sampled_from(
                    ["grant_type", "subject_token", "subject_token_type", "assertion", "resource", "scope", "x"]
                ),
                st.one_of(
                    st.text(max_size=40),
                    st.sampled_from(
                        [
                            "urn:ietf:params:oauth:grant-type:token-exchange",
                            "urn:ietf:params:oauth:grant-type:jwt-bearer",
                            "urn:ietf:params:oauth:token-type:jwt",
                            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
                        ]
                    ),
                ),
            ),
            max_size=6,
        ).map(lambda pairs: urllib.parse.urlencode(pairs).encode()),
    ),
    content_type=st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain"]),
    authorization=st.sampled_from(["", "Bearer ", "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer " + "A" * 3000]),
)
def test_hostile_token_requests(
    operator: OperatorProcess, target: dict, body: bytes, content_type: str, authorization: str
) -> None:
    status, answer = _post(
        target["token"], target["ca"], body, content_type, {"Authorization": authorization} if authorization else {}
    )
    assert status in (400, 401, 429), (status, answer[:200])
    assert set(json.loads(answer)) == {"error", "error_description"}
    assert b"access_token" not in answer
