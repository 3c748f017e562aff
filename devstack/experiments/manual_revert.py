"""Experiment: a manual external revert through libvirt 9.0's public API.

Debian 12's libvirt 9.0 refuses `snapshot-revert` on external snapshots, so
virt-revert does it by hand. This script runs those calls one by one on a
namespaced host with the counter guest, times each, and checks that memory
and disk really went back and that no pre-existing file changed. It then
probes snapshots of a shut-off domain.

    python -m devstack.experiments.manual_revert [--virt-type qemu] [--keep DIR]
"""

import argparse
import hashlib
import os
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from devstack import guest
from devstack.hosts import LibvirtHost, fix_kvm_permissions, open_connection, virt_type

SNAPSHOT_XML = """<domainsnapshot>
  <name>{name}</name>
  {memory}
  <disks><disk name='vda' snapshot='external'><source file='{overlay}'/></disk></disks>
</domainsnapshot>"""


class Timer:
    """Times each step and prints it as it happens."""

    def __init__(self):
        self.steps: list[tuple[str, float, str]] = []

    def __call__(self, label, func, *args):
        start = time.perf_counter()
        try:
            result = func(*args)
            outcome = "ok"
        except libvirt.libvirtError as exc:
            result, outcome = exc, f"FAILED: {exc}"
        elapsed = time.perf_counter() - start
        self.steps.append((label, elapsed, outcome))
        print(f"  {label:<48} {elapsed * 1000:8.1f} ms  {outcome}")
        return result


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set_disk_source(domain: ET.Element, path: Path) -> None:
    """Point the domain's vda at path (and drop a stale <backingStore>)."""
    for disk in domain.iterfind("./devices/disk"):
        if disk.find("target").get("dev") == "vda":
            disk.find("source").set("file", str(path))
            for backing in disk.findall("backingStore"):
                disk.remove(backing)


def revert_experiment(conn, images: Path, vtype: str, timer: Timer) -> None:
    base, memfile = images / "base.qcow2", images / "snap1.mem"
    overlay, safety = images / "snap1-vda.qcow2", images / "safety-vda.qcow2"
    new_top = images / "snap1-vda.revert1.qcow2"
    name = f"vr-exp-revert-{os.getpid()}"  # domain names must be unique on the machine
    guest.build_disk(base)
    dom = conn.defineXML(guest.domain_xml(name, base, vtype))
    timer("create (start) domain", dom.create)
    guest.wait_for_disk_counter(base, 1)
    before = guest.read_counter(dom)
    snap = timer("snapshotCreateXML external memory+disk", dom.snapshotCreateXML,
                 SNAPSHOT_XML.format(name="snap1", overlay=overlay,
                                     memory=f"<memory snapshot='external' file='{memfile}'/>"), 0)
    at_snapshot = guest.read_counter(dom)
    print(f"  counter just before / after snapshot: {before} / {at_snapshot};"
          f" base disk says {guest.read_disk_sector(base)}")
    time.sleep(3)
    before_revert = guest.read_counter(dom)
    print(f"  3 s later: counter {before_revert}, overlay disk {guest.read_disk_sector(overlay)}")

    print("manual revert:")
    saved_xml = timer("saveImageGetXMLDesc(memfile)", conn.saveImageGetXMLDesc, str(memfile), 0)
    timer("safety snapshot DISK_ONLY|ATOMIC (running)", dom.snapshotCreateXML,
          SNAPSHOT_XML.format(name="safety", overlay=safety, memory=""),
          libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
    timer("dom.suspend()", dom.suspend)
    pre_existing = [base, memfile, overlay, safety]
    hashes = {p: sha256(p) for p in pre_existing}
    timer("dom.destroy()", dom.destroy)
    timer("qemu-img create -b base new_top", subprocess.run,
          ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(new_top)])
    new_top.chmod(0o644)
    domain = ET.fromstring(saved_xml)
    set_disk_source(domain, new_top)
    timer("restoreFlags(memfile, edited xml, PAUSED)", conn.restoreFlags,
          str(memfile), ET.tostring(domain, encoding="unicode"), libvirt.VIR_DOMAIN_SAVE_PAUSED)
    snap_xml = ET.fromstring(snap.getXMLDesc(0))
    inactive = snap_xml.find("domain")
    set_disk_source(inactive, new_top)
    timer("defineXML(snapshot's domain, new top)", conn.defineXML,
          ET.tostring(inactive, encoding="unicode"))
    snap_xml.find("./disks/disk/source").set("file", str(new_top))
    timer("redefine snap1 REDEFINE|CURRENT (disks->new top)", dom.snapshotCreateXML,
          ET.tostring(snap_xml, encoding="unicode"),
          libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT)
    dom = conn.lookupByName(name)
    paused_counter = guest.read_counter(dom)
    timer("dom.resume()", dom.resume)
    total = sum(t for _label, t, _outcome in timer.steps[-9:])
    print(f"  revert calls total {total * 1000:.0f} ms (saveImageGetXMLDesc .. resume)")

    after = [guest.read_counter(dom)]
    time.sleep(0.5)
    after.append(guest.read_counter(dom))
    print(f"  counter: at snapshot {at_snapshot}, before revert {before_revert}, restored paused"
          f" {paused_counter}, right after resume {after[0]}, +0.5 s {after[1]}")
    print(f"  current snapshot: {dom.snapshotCurrent().getName()};"
          f" snapshots: {sorted(dom.snapshotListNames())}")
    print(f"  running disk: {ET.fromstring(dom.XMLDesc()).find('./devices/disk/source').get('file')}")
    print(f"  persistent disk: {ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find('./devices/disk/source').get('file')}")
    print(f"  disk sectors (ticks, writes) right after resume: new top {guest.read_disk_sector(new_top)},"
          f" old overlay {guest.read_disk_sector(overlay)}, safety {guest.read_disk_sector(safety)},"
          f" base {guest.read_disk_sector(base)}")
    guest.wait_for_disk_counter(new_top, at_snapshot + 18, timeout=10)
    print(f"  after a guest write: new top {guest.read_disk_sector(new_top)}")
    changed = [p.name for p in pre_existing if sha256(p) != hashes[p]]
    print(f"  pre-existing files changed across the revert: {changed or 'none'}")
    dom.destroy()


def offline_experiment(conn, images: Path, vtype: str, timer: Timer) -> None:
    """Which external snapshot flags does a shut-off domain accept?"""
    base = images / "off-base.qcow2"
    guest.build_disk(base)
    dom = conn.defineXML(guest.domain_xml(f"vr-exp-offline-{os.getpid()}", base, vtype))
    attempts = [
        ("no flags, no <memory>", "", 0),
        ("no flags, <memory snapshot='no'/>", "<memory snapshot='no'/>", 0),
        ("DISK_ONLY", "", libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY),
        ("DISK_ONLY|ATOMIC", "",
         libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC),
    ]
    for i, (label, memory, flags) in enumerate(attempts):
        overlay = images / f"off-{i}.qcow2"
        result = timer(f"shut-off: {label}", dom.snapshotCreateXML,
                       SNAPSHOT_XML.format(name=f"off{i}", overlay=overlay, memory=memory), flags)
        if not isinstance(result, libvirt.libvirtError):
            snap = ET.fromstring(result.getXMLDesc(0))
            source = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find(
                "./devices/disk/source").get("file")
            print(f"    state={snap.findtext('state')} overlay exists={overlay.exists()}"
                  f" domain now on {Path(source).name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--virt-type", choices=["kvm", "qemu"])
    parser.add_argument("--keep", help="run in this directory and leave the files there")
    args = parser.parse_args()
    fix_kvm_permissions()
    vtype = args.virt_type or virt_type()
    root = Path(args.keep or tempfile.mkdtemp(prefix="vr-exp-"))
    print(f"client libvirt {libvirt.getVersion()}, virt type {vtype}, root {root}")
    with LibvirtHost("exp", root) as host:
        conn = open_connection(host.uri)
        print(f"daemon libvirt {conn.getLibVersion()}, QEMU {conn.getVersion()}")
        timer = Timer()
        revert_experiment(conn, host.images_dir, vtype, timer)
        print("offline snapshots:")
        offline_experiment(conn, host.images_dir, vtype, timer)
        conn.close()
    if not args.keep:
        subprocess.run(["rm", "-rf", str(root)], check=True)


if __name__ == "__main__":
    main()
