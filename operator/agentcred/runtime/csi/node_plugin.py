"""agentcred's CSI node plugin: one per node (`agentcred csi-node`), the kubelet's to call.

It serves the CSI Identity and Node services (the CSI spec's published protobufs, compiled by
`make protos`) on `<kubelet root>/plugins/<driver>/csi.sock`, and registers with the kubelet
through its plugin registration API (the kubelet's `pluginregistration/v1` protobufs) on
`<kubelet root>/plugins_registry/<driver>-reg.sock`: the kubelet watches that folder, asks
GetInfo, then NodeGetInfo, and says whether it registered.

NodePublishVolume (an inline volume of one pod): the pod and the token the kubelet requested for
it go to the operator with the volume's attributes (`rules.csi`); if the operator finds the pod
admitted for the credential, the value is written into a tmpfs of this volume alone, mounted
read-only at the pod's target path. Otherwise the call fails with the operator's reason, which
the kubelet shows in the pod's events, and the container does not start. One sync at a time
asks the operator what each held volume should hold (woken at once by a change): a renewed
value replaces the file, a revocation removes it. NodeUnpublishVolume unmounts and removes the
tmpfs, and tells the operator (which revokes what was still live).

The plugin holds no Kubernetes API rights: it authenticates pods through the operator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import grpc

from agentcred_protos import csi_pb2, csi_pb2_grpc, pluginregistration_pb2, pluginregistration_pb2_grpc

from ... import __version__
from ...api import labels
from ...rules.csi import (
    PUBLISH_PATH,
    REVOKED_FILES,
    SYNC_PATH,
    BadRequest,
    Published,
    PublishRequest,
    Update,
    kubelet_pod,
    volume_files,
)
from .operator_link import OperatorLink, OperatorRefused, OperatorUnavailable
from .volumes import VOLUME_ID, MountFailed, NodeVolumes, VolumeRecord, mounted

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ["1.0.0"]  # CSI versions, as the kubelet's registration asks
SYNC_WAIT = 20.0  # seconds a sync waits at the operator for a change
PUBLISH_TIMEOUT = 60.0  # the kubelet gives a call 2 minutes


class NodePlugin:
    def __init__(self, driver: str, node: str, volumes: NodeVolumes, link: OperatorLink) -> None:
        self.driver, self.node, self.volumes, self.link = driver, node, volumes, link
        self.registered = asyncio.Event()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # publish, unpublish and a sync's writes, one at a time

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        volume_id, target = request.volume_id, request.target_path
        if not VOLUME_ID.fullmatch(volume_id) or not target or not os.path.isabs(target):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a volume id and an absolute target path are needed")
        if not request.volume_capability.HasField("mount"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{self.driver} publishes file system volumes only")
        known = self.volumes.record(volume_id)
        if known is not None and known.target == target and mounted(Path(target)):
            return csi_pb2.NodePublishVolumeResponse()  # published already (a kubelet restart, a retry)
        attributes = dict(request.volume_context)
        try:
            pod = kubelet_pod(attributes)
            ask = PublishRequest(
                volume_id,
                attributes.get(labels.CSI_CREDENTIAL_ATTRIBUTE, ""),
                attributes.get(labels.CSI_BINDING_ATTRIBUTE, ""),
                pod,
            )
            answer = Published.from_json(await self.link.post(PUBLISH_PATH, ask.to_json(), PUBLISH_TIMEOUT))
        except BadRequest as bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(bad))
        except OperatorRefused as refused:
            log.warning("refused to publish %s for pod %s/%s: %s", volume_id, pod.namespace, pod.name, refused)
            code = grpc.StatusCode.PERMISSION_DENIED if refused.status == 403 else grpc.StatusCode.FAILED_PRECONDITION
            await context.abort(code, f"agentcred refused: {refused}")
        except OperatorUnavailable as unavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(unavailable))
        group = request.volume_capability.mount.volume_mount_group
        record = VolumeRecord(
            volume_id=volume_id,
            target=target,
            namespace=pod.namespace,
            pod=pod.name,
            pod_uid=pod.uid,
            credential=ask.credential,
            binding=ask.binding,
            record=answer.record,
            fingerprint=answer.fingerprint,
            expires_at=answer.expires_at,
            file_mode=answer.file_mode,
            group=int(group) if group.isdigit() else None,
        )
        async with self._lock:
            try:
                self.volumes.publish(record, volume_files(answer.value, answer.expires_at, answer.file_mode, answer.ca))
            except (MountFailed, OSError) as error:
                await context.abort(grpc.StatusCode.INTERNAL, f"could not write the volume: {error}")
        log.info("published %s for pod %s/%s (%s)", volume_id, pod.namespace, pod.name, ask.credential)
        self._wake.set()
        return csi_pb2.NodePublishVolumeResponse()

    async def unpublish(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not VOLUME_ID.fullmatch(request.volume_id) or not request.target_path:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a volume id and a target path are needed")
        async with self._lock:
            try:
                record = self.volumes.unpublish(request.volume_id, request.target_path)
            except MountFailed as error:
                await context.abort(grpc.StatusCode.INTERNAL, str(error))
        if record is not None:
            log.info("unpublished %s of pod %s/%s", record.volume_id, record.namespace, record.pod)
        self._wake.set()
        return csi_pb2.NodeUnpublishVolumeResponse()

    # -- what the operator says each volume should hold ------------------------------------

    async def follow(self) -> None:
        """Sync with the operator for as long as the plugin runs."""
        failures = 0
        while True:
            self._wake.clear()
            held = self.volumes.records()
            gone = self.volumes.unpublished()
            body = {"volumes": [_held(r) for r in held], "unpublished": [_held(r) for r in gone], "wait": SYNC_WAIT}
            asking = asyncio.create_task(self.link.post(SYNC_PATH, body, SYNC_WAIT + 15))
            woken = asyncio.create_task(self._wake.wait())
            done, _ = await asyncio.wait({asking, woken}, return_when=asyncio.FIRST_COMPLETED)
            if asking not in done:  # a volume came or went: ask again with the new list
                asking.cancel()
                with contextlib.suppress(asyncio.CancelledError, OperatorUnavailable, OperatorRefused):
                    await asking
                continue
            woken.cancel()
            try:
                answer = asking.result()
                failures = 0
            except (OperatorUnavailable, OperatorRefused) as error:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("could not sync with the operator (%s); asking again", error)
                await asyncio.sleep(min(0.5 * failures, 5.0))
                continue
            await self._apply(answer)

    async def _apply(self, answer: dict[str, Any]) -> None:
        async with self._lock:
            for item in answer.get("updates") or []:
                try:
                    update = Update.from_json(item)
                except BadRequest as bad:
                    log.warning("ignoring an update: %s", bad)
                    continue
                record = self.volumes.record(update.volume_id)
                if record is None:
                    continue
                if update.value is None:
                    record.fingerprint = ""
                    self.volumes.empty(record, REVOKED_FILES)
                    log.info(
                        "revoked %s of pod %s/%s (%s)", record.volume_id, record.namespace, record.pod, update.revoked
                    )
                else:
                    record.fingerprint, record.record, record.expires_at = (
                        update.fingerprint,
                        update.record,
                        update.expires_at,
                    )
                    files = volume_files(update.value, update.expires_at, record.file_mode)
                    self.volumes.rewrite(record, files)
                    log.info("renewed %s of pod %s/%s", record.volume_id, record.namespace, record.pod)
            for volume_id in answer.get("forget") or []:
                if isinstance(volume_id, str) and VOLUME_ID.fullmatch(volume_id):
                    self.volumes.forget_unpublished(volume_id)


def _held(record: VolumeRecord) -> dict[str, str]:
    return {"volumeId": record.volume_id, "record": record.record, "fingerprint": record.fingerprint}


class Identity(csi_pb2_grpc.IdentityServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, plugin: NodePlugin) -> None:
        self.plugin = plugin

    async def GetPluginInfo(self, request: Any, context: Any) -> Any:  # noqa: N802 (the protocol's names)
        return csi_pb2.GetPluginInfoResponse(name=self.plugin.driver, vendor_version=__version__)

    async def GetPluginCapabilities(self, request: Any, context: Any) -> Any:  # noqa: N802
        return csi_pb2.GetPluginCapabilitiesResponse()  # a node plugin only: no controller service

    async def Probe(self, request: Any, context: Any) -> Any:  # noqa: N802
        return csi_pb2.ProbeResponse()


class Node(csi_pb2_grpc.NodeServicer):  # type: ignore[misc]  # generated, untyped
    def __init__(self, plugin: NodePlugin) -> None:
        self.plugin = plugin

    async def NodePublishVolume(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self.plugin.publish(request, context)

    async def NodeUnpublishVolume(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self.plugin.unpublish(request, context)

    async def NodeGetCapabilities(self, request: Any, context: Any) -> Any:  # noqa: N802
        # VOLUME_MOUNT_GROUP: the kubelet hands over the pod's fsGroup (the files' group)
        # instead of changing the files itself, which it would not do again at a renewal.
        group = csi_pb2.NodeServiceCapability.RPC(type=csi_pb2.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP)
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[csi_pb2.NodeServiceCapability(rpc=group)])

    async def NodeGetInfo(self, request: Any, context: Any) -> Any:  # noqa: N802
        return csi_pb2.NodeGetInfoResponse(node_id=self.plugin.node)


class Registration(pluginregistration_pb2_grpc.RegistrationServicer):  # type: ignore[misc]  # generated
    def __init__(self, plugin: NodePlugin, endpoint: Path) -> None:
        self.plugin, self.endpoint = plugin, endpoint

    async def GetInfo(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pluginregistration_pb2.PluginInfo(
            type="CSIPlugin",
            name=self.plugin.driver,
            endpoint=str(self.endpoint),
            supported_versions=SUPPORTED_VERSIONS,
        )

    async def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        if request.plugin_registered:
            log.info("registered with the kubelet as %s on node %s", self.plugin.driver, self.plugin.node)
            self.plugin.registered.set()
        else:
            log.error("the kubelet did not register %s: %s", self.plugin.driver, request.error)
        return pluginregistration_pb2.RegistrationStatusResponse()


def _fresh_socket(socket_path: Path) -> None:
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)


async def _unix_server(socket_path: Path, *servicers: tuple[Any, Any]) -> grpc.aio.Server:
    _fresh_socket(socket_path)
    server = grpc.aio.server()
    for add, servicer in servicers:
        add(servicer, server)
    server.add_insecure_port(f"unix://{socket_path}")  # a unix socket only root on the node reaches
    await server.start()
    os.chmod(socket_path, 0o600)
    return server


async def serve(arguments: argparse.Namespace) -> None:
    kubelet = Path(arguments.kubelet_dir)
    endpoint = kubelet / "plugins" / arguments.driver / "csi.sock"
    registration = kubelet / "plugins_registry" / f"{arguments.driver}-reg.sock"
    state = Path(arguments.state_dir) if arguments.state_dir else kubelet / "plugins" / arguments.driver / "state"
    volumes = NodeVolumes(state)
    plugin = NodePlugin(
        arguments.driver,
        arguments.node_name,
        volumes,
        OperatorLink(Path(arguments.operator_dir), arguments.operator_url),
    )
    csi = await _unix_server(
        endpoint,
        (csi_pb2_grpc.add_IdentityServicer_to_server, Identity(plugin)),
        (csi_pb2_grpc.add_NodeServicer_to_server, Node(plugin)),
    )
    registrar = await _unix_server(
        registration, (pluginregistration_pb2_grpc.add_RegistrationServicer_to_server, Registration(plugin, endpoint))
    )
    log.info(
        "agentcred CSI node plugin %s on node %s: %s, %d volume(s) held",
        arguments.driver,
        arguments.node_name,
        endpoint,
        len(volumes.records()),
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stopping.set)
    follower = asyncio.create_task(plugin.follow(), name="sync")
    await stopping.wait()
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    # The registration socket goes: the kubelet unregisters the driver. Volumes stay mounted
    # and readable; a plugin started again takes them over from their records.
    await registrar.stop(grace=1)
    registration.unlink(missing_ok=True)
    await csi.stop(grace=2)
    endpoint.unlink(missing_ok=True)
