"""libvirt snapshot and domain XML as small typed objects.

Parsed once, in validate; callers read attributes and never run an xpath.
Editing is limited to what a revert needs (disk sources), done on the
element tree, never on strings.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

# libvirt's literal strings, so a typo is a NameError rather than a silent mismatch.
LOCATION_EXTERNAL = "external"
LOCATION_INTERNAL = "internal"
LOCATION_NO = "no"
LOCATION_MANUAL = "manual"

STATE_RUNNING = "running"
STATE_PAUSED = "paused"
STATE_SHUTOFF = "shutoff"
STATE_DISK_SNAPSHOT = "disk-snapshot"

DISK_TYPE_FILE = "file"
DEVICE_DISK = "disk"


def _attr(node: ET.Element | None, path: str, attr: str) -> str | None:
    if node is None:
        return None
    found = node.find(path) if path != "." else node
    return None if found is None else found.get(attr)


def _text(node: ET.Element | None, path: str) -> str | None:
    if node is None:
        return None
    found = node.find(path)
    return None if found is None or found.text is None else found.text.strip()


@dataclass(frozen=True)
class DomainDisk:
    """A `<disk>` of a domain definition."""

    target: str
    device: str
    type: str
    source: str | None
    driver_type: str | None

    @classmethod
    def parse(cls, node: ET.Element) -> "DomainDisk":
        source = node.find("source")
        path = None
        if source is not None:
            path = source.get("file") or source.get("dev") or source.get("name")
        return cls(
            target=_attr(node, "target", "dev") or "",
            device=node.get("device", DEVICE_DISK),
            type=node.get("type", DISK_TYPE_FILE),
            source=path,
            driver_type=_attr(node, "driver", "type"),
        )


@dataclass(frozen=True)
class DomainDef:
    """The parts of a `<domain>` a revert reads."""

    name: str
    uuid: str
    memory_kib: int
    disks: tuple[DomainDisk, ...]
    xml: str

    @classmethod
    def parse(cls, node_or_xml: ET.Element | str) -> "DomainDef":
        node = ET.fromstring(node_or_xml) if isinstance(node_or_xml, str) else node_or_xml
        memory = node.find("memory")
        kib = 0
        if memory is not None and memory.text:
            kib = int(int(memory.text) * _UNIT_KIB.get(memory.get("unit", "KiB"), 1))
        return cls(
            name=_text(node, "name") or "",
            uuid=_text(node, "uuid") or "",
            memory_kib=kib,
            disks=tuple(DomainDisk.parse(d) for d in node.findall("devices/disk")),
            xml=ET.tostring(node, encoding="unicode"),
        )

    def disk(self, target: str) -> DomainDisk | None:
        return next((d for d in self.disks if d.target == target), None)


_UNIT_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "KiB": 1, "k": 1, "KB": 1, "MiB": 1024, "M": 1024, "MB": 1024,
             "GiB": 1024 ** 2, "G": 1024 ** 2, "GB": 1024 ** 2}


@dataclass(frozen=True)
class SnapshotDisk:
    """A `<disks><disk>` of a snapshot: how that disk was captured."""

    name: str
    snapshot: str  # LOCATION_*
    source: str | None  # for external: the overlay the domain wrote to after the snapshot
    driver_type: str | None

    @classmethod
    def parse(cls, node: ET.Element, default_location: str) -> "SnapshotDisk":
        return cls(
            name=node.get("name", ""),
            snapshot=node.get("snapshot", default_location),
            source=_attr(node, "source", "file"),
            driver_type=_attr(node, "driver", "type"),
        )


@dataclass(frozen=True)
class Snapshot:
    """A `<domainsnapshot>`; `domain` is the definition captured with it, if any."""

    name: str
    state: str
    memory: str  # LOCATION_*
    memory_file: str | None
    parent: str | None
    creation_time: float
    disks: tuple[SnapshotDisk, ...]
    domain: DomainDef | None
    xml: str

    @classmethod
    def parse(cls, xml: str) -> "Snapshot":
        root = ET.fromstring(xml)
        memory = root.find("memory")
        memory_location = memory.get("snapshot", LOCATION_NO) if memory is not None else LOCATION_NO
        # libvirt records disks without an explicit snapshot= using the snapshot's default.
        default_disk = LOCATION_EXTERNAL if memory_location == LOCATION_EXTERNAL else LOCATION_INTERNAL
        domain = root.find("domain")
        return cls(
            name=_text(root, "name") or "",
            state=_text(root, "state") or STATE_SHUTOFF,
            memory=memory_location,
            memory_file=memory.get("file") if memory is not None else None,
            parent=_text(root, "parent/name"),
            creation_time=float(_text(root, "creationTime") or 0),
            disks=tuple(SnapshotDisk.parse(d, default_disk) for d in root.findall("disks/disk")),
            domain=DomainDef.parse(domain) if domain is not None else None,
            xml=xml,
        )

    @property
    def captured_disks(self) -> tuple[SnapshotDisk, ...]:
        """Disks whose state the snapshot holds (not `no`/`manual`)."""
        return tuple(d for d in self.disks if d.snapshot in (LOCATION_EXTERNAL, LOCATION_INTERNAL))

    @property
    def has_memory(self) -> bool:
        return self.memory != LOCATION_NO

    @property
    def locations(self) -> set[str]:
        """Where the state lives: {'external'}, {'internal'}, or both for a mixed snapshot."""
        found = {d.snapshot for d in self.captured_disks}
        if self.has_memory:
            found.add(self.memory)
        return found


def with_disk_sources(domain_xml: str, sources: dict[str, str], driver_type: str = "qcow2") -> str:
    """Return `domain_xml` with the disks named by target pointing at new files.

    Used to point a domain (inactive definition or save-image XML) at the
    revert's new overlays.  Anything libvirt knew about the old chain
    (`<backingStore>`) is dropped so libvirt re-reads it from the image.
    """
    root = ET.fromstring(domain_xml)
    seen = set()
    for disk in root.findall("devices/disk"):
        target = _attr(disk, "target", "dev")
        if target not in sources:
            continue
        seen.add(target)
        disk.set("type", DISK_TYPE_FILE)
        for child in disk.findall("source") + disk.findall("backingStore"):
            disk.remove(child)
        source = ET.Element("source", {"file": sources[target]})
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", {"name": "qemu"})
        driver.set("type", driver_type)
        # <source> must precede <target> for readability; libvirt accepts either order.
        disk.insert(list(disk).index(driver) + 1, source)
    missing = set(sources) - seen
    if missing:
        raise ValueError(f"domain XML has no disk with target {', '.join(sorted(missing))}")
    return ET.tostring(root, encoding="unicode")
