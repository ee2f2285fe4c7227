"""The node plugin's volumes on the node: a tmpfs per volume, its files, and what is kept of each.

Each volume is a small tmpfs the plugin mounts in its own folder (`<state>/mounts/<volume>`),
writes into, and bind-mounts read-only at the target path the kubelet gives: the pod sees the
files through the read-only bind, the plugin keeps writing through its own mount (a renewal
replaces a file with `rename`, so a reader sees the old value or the new one, never a mix; a
revocation removes it). The tmpfs belongs to the node, not to the plugin's process: a plugin
that restarts finds its volumes mounted, their files readable, and its records beside them
(`<state>/volumes/<volume>.json`: the pod, the credential, the operator's sealed record, the
fingerprint held -- never the value). Memory only: nothing of a value touches a disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MNT_DETACH = 2
TMPFS_OPTIONS = "size=1m,mode=0755"  # a value, its expiry and a CA: kilobytes
VOLUME_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class MountFailed(OSError):
    """mount(2) or umount(2) refused; the message names the path and the reason."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _mount(source: str | None, target: Path, fstype: str | None, flags: int, data: str | None) -> None:
    result = _libc().mount(
        source.encode() if source else None,
        str(target).encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if result != 0:
        error = ctypes.get_errno()
        raise MountFailed(error, f"mount {target}: {os.strerror(error)}")


def _unmount(target: Path) -> None:
    if _libc().umount2(str(target).encode(), MNT_DETACH) != 0:
        error = ctypes.get_errno()
        if error not in (2, 22):  # ENOENT: gone; EINVAL: not (or no longer) a mount point
            raise MountFailed(error, f"umount {target}: {os.strerror(error)}")


def mounted(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


@dataclass
class VolumeRecord:
    """What the plugin keeps of one published volume (no value)."""

    volume_id: str
    target: str
    namespace: str
    pod: str
    pod_uid: str
    credential: str
    binding: str
    record: str  # the operator's sealed bookkeeping of the value (opaque here)
    fingerprint: str  # of the value the files hold; "" once revoked
    expires_at: str
    file_mode: int
    group: int | None  # the pod's fsGroup: the files' group

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class NodeVolumes:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.records_folder = state / "volumes"
        self.unpublished_folder = state / "unpublished"
        self.mounts_folder = state / "mounts"
        for folder in (self.records_folder, self.unpublished_folder, self.mounts_folder):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def staging(self, volume_id: str) -> Path:
        return self.mounts_folder / volume_id

    # -- records ------------------------------------------------------------------------

    def records(self) -> list[VolumeRecord]:
        return self._read(self.records_folder)

    def unpublished(self) -> list[VolumeRecord]:
        return self._read(self.unpublished_folder)

    def record(self, volume_id: str) -> VolumeRecord | None:
        found = [r for r in self._read(self.records_folder, volume_id)]
        return found[0] if found else None

    def _read(self, folder: Path, volume_id: str = "*") -> list[VolumeRecord]:
        found = []
        for path in sorted(folder.glob(f"{volume_id}.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                found.append(VolumeRecord(**json.loads(path.read_text())))
        return found

    def save(self, record: VolumeRecord, folder: Path | None = None) -> None:
        folder = folder or self.records_folder
        path = folder / f"{record.volume_id}.json"
        partial = path.with_suffix(".part")
        partial.write_text(json.dumps(record.to_json()))
        os.chmod(partial, 0o600)
        partial.replace(path)

    def forget_unpublished(self, volume_id: str) -> None:
        (self.unpublished_folder / f"{volume_id}.json").unlink(missing_ok=True)

    # -- mounts and files ----------------------------------------------------------------

    def publish(self, record: VolumeRecord, files: list[tuple[str, bytes, int]]) -> None:
        """A tmpfs with the files, bind-mounted read-only at the target; then the record."""
        staging, target = self.staging(record.volume_id), Path(record.target)
        staging.mkdir(mode=0o700, exist_ok=True)
        if not mounted(staging):
            _mount("tmpfs", staging, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, TMPFS_OPTIONS)
        write_files(staging, files, record.group)
        target.mkdir(parents=True, exist_ok=True)
        if not mounted(target):
            _mount(str(staging), target, None, MS_BIND, None)
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
            _mount(None, target, None, flags, None)
        self.save(record)

    def rewrite(self, record: VolumeRecord, files: list[tuple[str, bytes, int]]) -> None:
        write_files(self.staging(record.volume_id), files, record.group)
        self.save(record)

    def empty(self, record: VolumeRecord, names: tuple[str, ...]) -> None:
        for name in names:
            (self.staging(record.volume_id) / name).unlink(missing_ok=True)
        self.save(record)

    def unpublish(self, volume_id: str, target: str) -> VolumeRecord | None:
        """Unmount and remove the target and the tmpfs (the value goes with it); the record
        moves to `unpublished` until the operator has heard of it."""
        record = self.record(volume_id)
        _unmount(Path(target))
        with contextlib.suppress(OSError):
            Path(target).rmdir()
        staging = self.staging(volume_id)
        _unmount(staging)
        with contextlib.suppress(OSError):
            staging.rmdir()
        if record is not None:
            self.save(record, self.unpublished_folder)
            (self.records_folder / f"{volume_id}.json").unlink(missing_ok=True)
        return record


def write_files(folder: Path, files: list[tuple[str, bytes, int]], group: int | None) -> None:
    """Each file written beside its final name and renamed over it: a reader opening it sees
    the whole old content or the whole new one."""
    for name, content, mode in files:
        partial = folder / f".{name}.part"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(descriptor, content)
            if group is not None:
                os.fchown(descriptor, 0, group)
            os.fchmod(descriptor, mode)
        finally:
            os.close(descriptor)
        os.replace(partial, folder / name)
