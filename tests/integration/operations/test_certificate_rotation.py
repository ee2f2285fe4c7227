"""The shared webhook certificate is renewed before it expires, on the real API server."""

import asyncio
import base64
import datetime as dt

from cryptography import x509

from agentcred.api.labels import StateNames
from agentcred.platform.kube import Kube, load_configuration
from agentcred.runtime.replicas.serving_certificate import (
    CertificateMonitor,
    new_serving_certificate,
    shared_serving_certificate,
)
from clusterkit import Cluster

TLS_SECRET = StateNames().serving_certificate


def test_renewal_while_running(cluster: Cluster, namespace: str) -> None:
    published: list[bytes] = []

    async def scenario() -> None:
        kube = Kube(load_configuration(str(cluster.kubeconfig)))
        try:
            first = await shared_serving_certificate(
                kube, namespace, "agentcred", TLS_SECRET
            )  # created: this replica is first
            assert await shared_serving_certificate(kube, namespace, "agentcred", TLS_SECRET) == first  # then shared
            expiring = new_serving_certificate("agentcred", namespace, validity=dt.timedelta(days=5))
            secret = await kube.read_secret(namespace, TLS_SECRET)
            secret["data"] = {
                "ca.crt": base64.b64encode(expiring.ca_pem).decode(),
                "tls.crt": base64.b64encode(expiring.cert_pem).decode(),
                "tls.key": base64.b64encode(expiring.key_pem).decode(),
            }
            await kube.replace_secret(namespace, TLS_SECRET, secret)

            async def publish(ca_pem: bytes) -> None:
                published.append(ca_pem)

            follower = CertificateMonitor(kube, namespace, "agentcred", TLS_SECRET, expiring, lambda: False, publish)
            await follower.check(dt.datetime.now(dt.timezone.utc))
            assert published == [] and follower.problem is None  # followers never renew
            leader = CertificateMonitor(kube, namespace, "agentcred", TLS_SECRET, expiring, lambda: True, publish)
            await leader.check(dt.datetime.now(dt.timezone.utc))
            renewed = await shared_serving_certificate(kube, namespace, "agentcred", TLS_SECRET)
            assert renewed.cert_pem != expiring.cert_pem
            assert published == [renewed.ca_pem]
            bundle = x509.load_pem_x509_certificates(renewed.ca_pem)
            assert bundle[1] == x509.load_pem_x509_certificate(expiring.ca_pem)  # the old CA is still trusted
            assert leader.problem and "restart" in leader.problem  # it still serves the old one
        finally:
            await kube.close()

    asyncio.run(scenario())
