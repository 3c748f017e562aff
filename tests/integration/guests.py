"""Counter guests on the test host, their snapshots, and the "nothing lost" proof."""
from __future__ import annotations

import hashlib
import os
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from devstack import guest as counter_guest

# TCG by default: under nested KVM (these CI machines) SeaBIOS takes ~10 s to reach the boot
# sector, under TCG 0.1 s; the revert code paths are the same.  VIRT_REVERT_TEST_VIRT_TYPE=kvm
# runs the suite on KVM.
VIRT_TYPE = os.environ.get("VIRT_REVERT_TEST_VIRT_TYPE", "qemu")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_files(directory: Path, exclude: set[str] = frozenset()) -> dict[str, str]:
    return {str(p): sha256(p) for p in sorted(Path(directory).iterdir()) if p.is_file() and str(p) not in exclude}


def assert_nothing_lost(before: dict[str, str], directory: Path) -> None:
    """Every file that existed before is still there, byte for byte."""
    after = hash_files(directory)
    missing = sorted(set(before) - set(after))
    changed = sorted(p for p in before if p in after and after[p] != before[p])
    assert not missing and not changed, f"removed: {missing}; changed: {changed}"


class Unchanged:
    """Everything a refused or rolled-back revert must leave as it was: files (by hash, and no new
    ones), the domain's state and definition, its snapshots and current snapshot."""

    def __init__(self, guest: Guest):
        self.guest = guest
        self.files = self._own_files()
        self.state = self._libvirt_state()

    def _own_files(self) -> dict[str, str]:
        """The guest's files (every file a revert creates is named after its domain)."""
        return {p: h for p, h in hash_files(self.guest.images).items()
                if Path(p).name.startswith(f"{self.guest.name}.")}

    def _libvirt_state(self):
        dom = self.guest.refresh().dom
        current = dom.snapshotCurrent().getName() if dom.hasCurrentSnapshot() else None
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if dom.isPersistent() else 0
        return (dom.state()[0], dom.XMLDesc(flags), sorted(s.getName() for s in dom.listAllSnapshots()), current)

    def check(self):
        assert_nothing_lost(self.files, self.guest.images)
        assert sorted(self._own_files()) == sorted(self.files), "a refused revert created files"
        assert self._libvirt_state() == self.state


@dataclass
class Guest:
    conn: libvirt.virConnect
    name: str
    images: Path
    base: Path
    dom: libvirt.virDomain = field(repr=False, default=None)

    def counter(self) -> int:
        return counter_guest.read_counter(self.dom)

    def wait_ticks(self, ticks: int) -> int:
        return counter_guest.wait_for_counter(self.dom, self.counter() + ticks, timeout=30)

    def top(self) -> str:
        """The file vda writes to now (live definition when active)."""
        xml = self.dom.XMLDesc(0)
        return ET.fromstring(xml).find("devices/disk/source").get("file")

    def refresh(self) -> "Guest":
        self.dom = self.conn.lookupByName(self.name)
        return self

    def snapshot(self, snap: str, *, memory: bool) -> tuple[Path, Path | None]:
        """An external snapshot: memory+disk when `memory`, else disk-only (offline if shut off).

        The memory image is captured when libvirt pauses the guest at the start of the call: read
        the counter *before* calling to get a lower bound of the saved value.
        """
        overlay = self.images / f"{self.name}.{snap}.qcow2"
        mem = self.images / f"{self.name}.{snap}.mem" if memory else None
        memory_xml = f"<memory snapshot='external' file='{mem}'/>" if memory else "<memory snapshot='no'/>"
        xml = (f"<domainsnapshot><name>{snap}</name>{memory_xml}<disks><disk name='vda' snapshot='external'>"
               f"<driver type='qcow2'/><source file='{overlay}'/></disk></disks></domainsnapshot>")
        flags = 0 if memory else libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        if self.dom.isActive():
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        self.dom.snapshotCreateXML(xml, flags)
        return overlay, mem

    def snapshot_xml(self, snap: str) -> str:
        return self.dom.snapshotLookupByName(snap).getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)

    def current_snapshot(self) -> str:
        return self.dom.snapshotCurrent().getName()

    def freeze(self) -> None:
        """Pause the guest: QEMU flushes its disks on stop, so the files hash stably."""
        if self.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
            self.dom.suspend()

    def disk_counter(self, image: str | Path) -> int | None:
        return counter_guest.read_disk_counter(image)

    def wait_disk_counter(self, image: str | Path, at_least: int) -> int:
        return counter_guest.wait_for_disk_counter(image, at_least, timeout=30)


class GuestFactory:
    def __init__(self, conn: libvirt.virConnect, images: Path):
        self.conn = conn
        self.images = images
        self.names: list[str] = []

    def create(self, *, start: bool = True, transient: bool = False, images: Path | None = None,
               memory_mib: int = 64, name: str | None = None) -> Guest:
        name = name or f"vrt-{uuid.uuid4().hex[:8]}"
        images = images or self.images
        base = counter_guest.build_disk(images / f"{name}.{uuid.uuid4().hex[:4]}.base.qcow2")
        xml = counter_guest.domain_xml(name, base, virt_type=VIRT_TYPE, memory_mib=memory_mib)
        self.names.append(name)
        if transient:
            dom = self.conn.createXML(xml, 0)
        else:
            dom = self.conn.defineXML(xml)
            if start:
                dom.create()
        guest = Guest(self.conn, name, images, base, dom)
        if start or transient:
            counter_guest.wait_for_counter(dom, 1, timeout=30)
        return guest

    def reconnect(self, uri: str, guests: list[Guest]) -> None:
        """After a libvirtd restart: a new connection for the factory and the given guests."""
        from devstack.hosts import open_connection

        self.conn = open_connection(uri, timeout=30)
        for guest in guests:
            guest.conn = self.conn
            guest.refresh()

    def remove_all(self) -> None:
        for name in self.names:
            try:
                dom = self.conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            persistent = dom.isPersistent()  # a transient domain is gone once destroyed
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
