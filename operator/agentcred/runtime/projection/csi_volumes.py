"""What each volume agentcred's CSI node plugins hold should hold now: the operator's side of
CSI delivery, in memory (nothing of it is stored in the API).

The reconciler writes here instead of a Secret: a value issued or renewed for a pod's
credential, or its revocation. Plugins learn it by asking: a publish waits for the first value,
a node's sync is answered with every volume whose content differs from what should be there
(woken at once by a change, so a revocation reaches the file within a second). A value's bytes
are kept only until its plugin reports holding it; what remains is its fingerprint.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

from ...rules.csi import HeldVolume, Update

Holding = tuple[str, str]  # (projection key, credential)


@dataclass
class Desired:
    """What a volume should hold: a value (its bytes until the plugin has it), or nothing."""

    fingerprint: str  # "" when revoked
    expires_at: str = ""
    record: str = ""
    value: bytes | None = None
    revoked: str = ""


@dataclass(frozen=True)
class Volume:
    """A published volume: where it is, and whose value for which credential it holds."""

    volume_id: str
    node: str
    key: str
    credential: str
    pod_uid: str

    @property
    def holding(self) -> Holding:
        return (self.key, self.credential)


class CsiVolumes:
    def __init__(self) -> None:
        self._desired: dict[Holding, Desired] = {}
        self._volumes: dict[str, Volume] = {}
        self._by_holding: dict[Holding, str] = {}
        self._problems: dict[Holding, str] = {}
        self._settled: dict[Holding, asyncio.Event] = {}
        self._nodes: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def __len__(self) -> int:
        return len(self._volumes)

    # -- volumes, as plugins publish, report and unpublish them -------------------------

    def register(self, volume: Volume) -> None:
        previous = self._volumes.get(volume.volume_id)
        if previous is not None and previous.holding != volume.holding:
            self._by_holding.pop(previous.holding, None)
        self._volumes[volume.volume_id] = volume
        self._by_holding[volume.holding] = volume.volume_id

    def published(self, key: str, credential: str) -> bool:
        return (key, credential) in self._by_holding

    def volume(self, volume_id: str) -> Volume | None:
        return self._volumes.get(volume_id)

    def unpublished(self, volume_id: str) -> None:
        """The kubelet took the volume away: nothing more is sent to it."""
        volume = self._volumes.pop(volume_id, None)
        if volume is not None and self._by_holding.get(volume.holding) == volume_id:
            del self._by_holding[volume.holding]
            self._desired.pop(volume.holding, None)

    # -- what the reconciler writes -----------------------------------------------------

    def put(self, key: str, credential: str, value: bytes, fingerprint: str, expires_at: str, record: str) -> None:
        self._desired[(key, credential)] = Desired(fingerprint, expires_at, record, value)
        self._problems.pop((key, credential), None)
        self._changed(key, credential)

    def revoke(self, key: str, credential: str, reason: str) -> None:
        self._desired[(key, credential)] = Desired("", revoked=reason)
        self._changed(key, credential)

    def holds(self, key: str, credential: str, fingerprint: str) -> None:
        """A plugin reported this value (after the operator restarted): what it should hold, until told otherwise."""
        self._desired.setdefault((key, credential), Desired(fingerprint))

    def problem(self, key: str, credential: str, message: str) -> None:
        """Why no value can be issued now (a waiting publish is answered with it)."""
        self._problems[(key, credential)] = message
        self._changed(key, credential)

    def desired(self, key: str, credential: str) -> Desired | None:
        return self._desired.get((key, credential))

    def _changed(self, key: str, credential: str) -> None:
        settled = self._settled.pop((key, credential), None)
        if settled is not None:
            settled.set()
        volume_id = self._by_holding.get((key, credential))
        volume = self._volumes.get(volume_id) if volume_id else None
        if volume is not None:
            self._nodes[volume.node].set()

    # -- what plugins are told ------------------------------------------------------------

    async def first_value(self, key: str, credential: str, within: float) -> Desired | str | None:
        """The value a publish waits for; or why none can be issued (a problem, or revoked);
        None if neither came within `within` seconds."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            desired = self._desired.get((key, credential))
            if desired is not None and (desired.value is not None or desired.revoked):
                return desired if desired.value is not None else f"revoked: {desired.revoked}"
            if (key, credential) in self._problems:
                return self._problems[(key, credential)]
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            settled = self._settled.setdefault((key, credential), asyncio.Event())
            try:
                await asyncio.wait_for(settled.wait(), remaining)
            except TimeoutError:
                return None

    def updates(self, held: list[tuple[HeldVolume, Holding]]) -> tuple[list[Update], list[Holding]]:
        """For the volumes a plugin holds: what to change, and the holdings whose value is
        held but no longer here to send again (the caller has them renewed)."""
        updates, lost = [], []
        for volume, holding in held:
            desired = self._desired.get(holding)
            if desired is None:
                continue
            if desired.revoked:
                if volume.fingerprint:
                    updates.append(Update(volume.volume_id, revoked=desired.revoked))
                else:
                    del self._desired[holding]  # done: the file is gone
            elif desired.fingerprint == volume.fingerprint:
                desired.value = None  # the plugin has it: no copy of the value stays here
            elif desired.value is not None:
                updates.append(
                    Update(volume.volume_id, desired.value, desired.expires_at, desired.fingerprint, desired.record)
                )
            else:
                lost.append(holding)
        return updates, lost

    def arm(self, node: str) -> None:
        """From now on, `changed` waits for a change on `node` (called before looking)."""
        self._nodes[node].clear()

    async def changed(self, node: str, within: float) -> None:
        """Until something changed for a volume on `node` since `arm`, at most `within` seconds."""
        try:
            await asyncio.wait_for(self._nodes[node].wait(), within)
        except TimeoutError:
            pass
