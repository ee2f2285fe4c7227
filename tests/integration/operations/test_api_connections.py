"""The operator's API client on the real API server: watches that never end (one per watched
namespace) cannot take the connections its requests need."""

import asyncio

from agentcred.platform.kube import Kube, load_configuration
from clusterkit import Cluster


def test_more_watches_than_pooled_connections_leave_requests_served(cluster: Cluster, namespace: str) -> None:
    async def scenario() -> None:
        kube = Kube(load_configuration(str(cluster.kubeconfig)), concurrency=2)

        async def follow(name: str) -> None:
            async for _ in kube.watch(f"/api/v1/namespaces/{name}/pods", "agentcred.dev/bench=none", ""):
                pass  # bookmarks at most: nothing matches

        watches = [asyncio.create_task(follow(namespace)) for _ in range(4)]  # twice the pool
        try:
            await asyncio.sleep(1.0)  # each watch holds its connection from now on
            assert not any(watch.done() for watch in watches), [w.exception() for w in watches if w.done()]
            answers = await asyncio.wait_for(
                asyncio.gather(*(kube.request("GET", f"/api/v1/namespaces/{namespace}") for _ in range(4))), 20
            )
            assert {answer["metadata"]["name"] for answer in answers} == {namespace}
        finally:
            for watch in watches:
                watch.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
            await kube.close()

    asyncio.run(scenario())
