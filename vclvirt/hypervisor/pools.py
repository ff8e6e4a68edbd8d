"""A host's directories as libvirt storage pools: files created, read and removed over the
open libvirt connection (about half a millisecond a call) instead of one SSH command each.

Each directory vclvirt keeps files in (datastore, vm_path, xml_dir) is a `dir` pool. An
active pool that already covers the directory (the host's `default` pool, say) is used
as it is. Otherwise vclvirt starts a *transient* pool named `vclvirt-<dir>-<hash>`: it is
never defined, so it leaves nothing in the host's configuration, vanishes when libvirtd
restarts, and is started again by the next call that needs it. A directory covered by a
pool the operator defined and left inactive is not touched (PoolUnavailable): whoever
uses this module falls back to commands for it.

libvirt lists a directory's files when its pool starts or is refreshed. Files written
behind libvirt's back (master copies over SSH, an operator's `cp`) are found by
refreshing the pool once when a lookup misses; a file removed behind its back is seen
as missing as soon as its volume is read.
"""

from __future__ import annotations

import hashlib
import posixpath
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TypeVar

import defusedxml.ElementTree as SafeET
import libvirt
import structlog

from vclvirt.hypervisor.connection import libvirt_errors

log = structlog.get_logger(__name__)

POOL_PREFIX = "vclvirt-"
T = TypeVar("T")

# libvirt refuses to refresh a pool while a volume of it is being built (another process
# creating an overlay): wait that long for it, at most.
_REFRESH_WAIT = 10.0


class DirectoryMissing(Exception):
    """The directory does not exist on the host (so no pool can cover it yet)."""


class PoolUnavailable(Exception):
    """The directory is covered by a pool vclvirt must not start (defined by the operator,
    inactive)."""


def pool_name(directory: str) -> str:
    """`vclvirt-<last component>-<8 hex of the path's hash>`: recognisable in `virsh
    pool-list`, distinct for every directory."""
    digest = hashlib.sha256(directory.encode()).hexdigest()[:8]
    return f"{POOL_PREFIX}{posixpath.basename(directory.rstrip('/')) or 'root'}-{digest}"


def _pool_xml(name: str, directory: str) -> str:
    root = ET.Element("pool", type="dir")
    ET.SubElement(root, "name").text = name
    ET.SubElement(ET.SubElement(root, "target"), "path").text = directory
    return ET.tostring(root, encoding="unicode")


class DirectoryPools:
    """The pools of one host's directories, on the process's libvirt connection to it."""

    def __init__(self, connect: Callable[[], libvirt.virConnect], host_name: str) -> None:
        self._connect = connect
        self.host_name = host_name
        self._conn: libvirt.virConnect | None = None
        self._pools: dict[str, libvirt.virStoragePool] = {}
        self._lock = threading.Lock()

    def call(self, directory: str, fn: Callable[[libvirt.virStoragePool], T], action: str) -> T:
        """fn on the directory's pool; once more on a fresh pool when the pool went away
        under it (libvirtd restarted, the pool was stopped, its directory removed)."""
        pool = self.pool(directory)
        try:
            with libvirt_errors(self.host_name, action):
                try:
                    return fn(pool)
                except libvirt.libvirtError as error:
                    if _still_active(pool):
                        raise
                    log.info("storage_pool_gone", pool=pool.name(), error=str(error))
            self.forget(directory)
            pool = self.pool(directory)
            with libvirt_errors(self.host_name, action):
                return fn(pool)
        except DirectoryMissing:
            self.forget(directory)
            raise

    def pool(self, directory: str) -> libvirt.virStoragePool:
        """The active pool covering the directory, started as a transient pool if need be."""
        with self._lock:
            conn = self._connect()
            if conn is not self._conn:  # a new connection (the old one died): new objects
                self._conn, self._pools = conn, {}
            pool = self._pools.get(directory)
            if pool is None:
                with libvirt_errors(self.host_name, f"starting a storage pool for {directory}"):
                    pool = _find_or_start(conn, directory)
                self._pools[directory] = pool
            return pool

    def forget(self, directory: str) -> None:
        with self._lock:
            self._pools.pop(directory, None)


def _still_active(pool: libvirt.virStoragePool) -> bool:
    try:
        return bool(pool.isActive())
    except libvirt.libvirtError:
        return False


def _find_or_start(conn: libvirt.virConnect, directory: str) -> libvirt.virStoragePool:
    found = _active_pool_at(conn, directory)
    if found is not None:
        return found
    try:
        pool = conn.storagePoolCreateXML(_pool_xml(pool_name(directory), directory), 0)
    except libvirt.libvirtError as error:
        found = _active_pool_at(conn, directory)  # another process started it meanwhile
        if found is not None:
            return found
        inactive = _inactive_pool_at(conn, directory)
        if inactive is not None:
            raise PoolUnavailable(
                f"storage pool {inactive} covers {directory} but is not active"
            ) from None
        if error.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR:  # cannot open directory
            raise DirectoryMissing(directory) from None
        raise
    log.info("storage_pool_started", pool=pool.name(), directory=directory)
    return pool


def _active_pool_at(conn: libvirt.virConnect, directory: str) -> libvirt.virStoragePool | None:
    try:
        pool = conn.storagePoolLookupByTargetPath(directory)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return None
        raise
    return pool if pool.isActive() else None


def _inactive_pool_at(conn: libvirt.virConnect, directory: str) -> str | None:
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_INACTIVE):
        target = SafeET.fromstring(pool.XMLDesc(0)).findtext("./target/path")
        if target and posixpath.normpath(target) == directory:
            return str(pool.name())
    return None


def refresh(pool: libvirt.virStoragePool) -> None:
    """Re-read the directory, waiting while another process builds a volume in it."""
    deadline = time.monotonic() + _REFRESH_WAIT
    while True:
        try:
            pool.refresh(0)
            return
        except libvirt.libvirtError as error:
            busy = "asynchronous jobs" in str(error.get_error_message())
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def _lookup(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    try:
        return pool.storageVolLookupByName(name)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


@dataclass(frozen=True)
class Volume:
    """A file of the directory as libvirt reads it from disk now."""

    handle: libvirt.virStorageVol
    kind: str  # file, dir, ...
    format: str | None
    backing: str | None
    backing_format: str | None


def _read(vol: libvirt.virStorageVol) -> Volume | None:
    """The volume's current facts; None when its file is gone (libvirt re-reads it)."""
    try:
        root = SafeET.fromstring(vol.XMLDesc(0))
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise
    fmt = root.find("./target/format")
    backing_fmt = root.find("./backingStore/format")
    return Volume(
        vol,
        root.get("type", "file"),
        fmt.get("type") if fmt is not None else None,
        root.findtext("./backingStore/path") or None,
        backing_fmt.get("type") if backing_fmt is not None else None,
    )


def volume(pool: libvirt.virStoragePool, name: str) -> Volume | None:
    """The file `name` of the pool's directory as it is on disk, or None. A miss (or a
    volume whose file is gone) refreshes the pool once: the file may have been written
    behind libvirt's back."""
    vol = _lookup(pool, name)
    found = _read(vol) if vol is not None else None
    if found is None:
        refresh(pool)
        vol = _lookup(pool, name)
        found = _read(vol) if vol is not None else None
    return found


def delete(pool: libvirt.virStoragePool, name: str) -> bool:
    """Remove the regular file `name` (like `rm -f`); True when there was one."""
    found = volume(pool, name)
    if found is None or found.kind != "file":
        return False
    found.handle.delete(0)
    return True


def create(pool: libvirt.virStoragePool, name: str, xml: str) -> libvirt.virStorageVol:
    """Create the volume, replacing a file of that name (known to libvirt or not)."""
    try:
        return pool.createXML(xml, 0)
    except libvirt.libvirtError as error:
        # Known to libvirt (VOL_EXIST), or only on disk ("target path ... already exists").
        if error.get_error_code() not in (
            libvirt.VIR_ERR_STORAGE_VOL_EXIST,
            libvirt.VIR_ERR_OPERATION_INVALID,
        ):
            raise
    delete(pool, name)
    return pool.createXML(xml, 0)


def overlay_xml(name: str, backing: str, backing_format: str) -> str:
    """A qcow2 backed by `backing` with its format recorded, as `qemu-img create -f qcow2 -b
    B -F F` makes it (compat 1.1, mode 0644; libvirt's own default would be 0.10, 0600)."""
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity").text = "0"  # the backing file's size
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", type="qcow2")
    ET.SubElement(target, "compat").text = "1.1"
    ET.SubElement(ET.SubElement(target, "permissions"), "mode").text = "0644"
    store = ET.SubElement(root, "backingStore")
    ET.SubElement(store, "path").text = backing
    ET.SubElement(store, "format", type=backing_format)
    return ET.tostring(root, encoding="unicode")


def file_xml(name: str, size: int) -> str:
    """A plain file of `size` bytes, mode 0644, allocated in full when created: libvirt
    (9.0) reports no error when an upload runs out of space, and leaves zeros where the
    data should be; an allocation that does not fit fails at once, "No space left on
    device", and libvirt removes the file."""
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(size)
    ET.SubElement(root, "allocation", unit="bytes").text = str(size)
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", type="raw")
    ET.SubElement(ET.SubElement(target, "permissions"), "mode").text = "0644"
    return ET.tostring(root, encoding="unicode")


def upload(pool: libvirt.virStoragePool, name: str, data: bytes) -> None:
    """Write a file with this content (replacing one of that name); a failed upload
    removes the file rather than leave part of it."""
    vol = create(pool, name, file_xml(name, len(data)))
    if not data:
        return
    stream = pool.connect().newStream(0)
    try:
        vol.upload(stream, 0, len(data), 0)
        stream.sendAll(lambda _stream, size, buffer: buffer.read(size), _Buffer(data))
        stream.finish()
    except BaseException:
        with suppress(libvirt.libvirtError):
            stream.abort()
        with suppress(libvirt.libvirtError):
            vol.delete(0)
        raise


def download(pool: libvirt.virStoragePool, name: str) -> bytes | None:
    """The content of the regular file `name`, or None when there is none."""
    found = volume(pool, name)
    if found is None or found.kind != "file":
        return None
    stream = pool.connect().newStream(0)
    chunks: list[bytes] = []
    try:
        found.handle.download(stream, 0, 0, 0)
        stream.recvAll(lambda _stream, chunk, sink: sink.append(chunk), chunks)
        stream.finish()
    except BaseException:
        with suppress(libvirt.libvirtError):
            stream.abort()
        raise
    return b"".join(chunks)


def names(pool: libvirt.virStoragePool) -> list[str]:
    """Names of the entries of the directory now (the pool refreshed first).

    By name, not with listAllVolumes: over the qemu+libssh transport (libvirt 9.0)
    listAllVolumes crashes the client process once a directory holds a few dozen files."""
    refresh(pool)
    return sorted(str(name) for name in pool.listVolumes())


class _Buffer:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def read(self, size: int) -> bytes:
        chunk = self.data[self.offset : self.offset + size]
        self.offset += len(chunk)
        return chunk
