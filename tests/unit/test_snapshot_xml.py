"""The typed snapshot/domain XML model, on fixtures shaped like libvirt 9.0's output."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from workers.snapshot_xml import DomainDef, Snapshot, with_disk_sources

DATA = Path(__file__).parent.parent / "data"


def load(name: str) -> Snapshot:
    return Snapshot.parse((DATA / "snapshots" / f"{name}.xml").read_text())


def test_memory_snapshot_fields():
    snap = load("running-memory")
    assert (snap.name, snap.state, snap.memory, snap.memory_file) == ("s1", "running", "external", "/images/web1.s1.mem")
    assert snap.parent == "base"
    assert [(d.name, d.snapshot, d.source) for d in snap.captured_disks] == [("vda", "external", "/images/web1.s1.qcow2")]
    assert snap.locations == {"external"}
    assert snap.domain.uuid == "4b1f2a3c-1111-2222-3333-444455556666"
    assert snap.domain.memory_kib == 65536
    assert snap.domain.disk("vda").source == "/images/web1.base.qcow2"
    assert snap.domain.disk("hdc").device == "cdrom" and snap.domain.disk("hdc").source is None


@pytest.mark.parametrize("name, locations, has_memory", [
    ("disk-only", {"external"}, False),
    ("offline", {"external"}, False),
    ("internal", {"internal"}, True),
    ("mixed", {"external", "internal"}, True),
])
def test_locations(name, locations, has_memory):
    snap = load(name)
    assert snap.locations == locations
    assert snap.has_memory is has_memory


def test_snapshot_without_domain():
    assert load("no-domain").domain is None


def test_with_disk_sources_points_disk_at_new_file_and_keeps_the_rest():
    original = (DATA / "domain-web1.xml").read_text()
    edited = with_disk_sources(original, {"vda": "/images/web1.s1.abc.qcow2"})
    before, after = DomainDef.parse(original), DomainDef.parse(edited)
    assert after.disk("vda").source == "/images/web1.s1.abc.qcow2"
    assert after.disk("vda").driver_type == "qcow2"
    assert after.disk("hdc") == before.disk("hdc")
    assert (after.name, after.uuid, after.memory_kib) == (before.name, before.uuid, before.memory_kib)
    # exactly one <source> in the edited disk, and nothing else changed in the document
    vda = [d for d in ET.fromstring(edited).findall("devices/disk") if d.find("target").get("dev") == "vda"][0]
    assert len(vda.findall("source")) == 1


def test_with_disk_sources_drops_stale_backing_store():
    xml = """<domain><name>a</name><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/i/top.qcow2'/><backingStore type='file'><format type='qcow2'/><source file='/i/base.qcow2'/>
      <backingStore/></backingStore><target dev='vda' bus='virtio'/></disk></devices></domain>"""
    edited = ET.fromstring(with_disk_sources(xml, {"vda": "/i/new.qcow2"}))
    assert edited.find("devices/disk/backingStore") is None


def test_with_disk_sources_refuses_unknown_target():
    with pytest.raises(ValueError, match="vdz"):
        with_disk_sources((DATA / "domain-web1.xml").read_text(), {"vdz": "/x"})
