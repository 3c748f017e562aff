"""The safety snapshot: the pre-revert state kept reachable through libvirt.

External targets get an external snapshot of the current state, disk-only
unless memory is asked for; internal targets get an internal one.  Every
current disk is listed explicitly, so libvirt never invents a file name.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from workers.conn import find_snapshot
from workers.plan import KIND_INTERNAL, Plan
from workers.snapshot_xml import LOCATION_EXTERNAL, LOCATION_NO


def safety_snapshot_xml(plan: Plan) -> str:
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = plan.safety_snapshot
    ET.SubElement(root, "description").text = (
        f"State of '{plan.domain}' before virt-revert {plan.revert_id} reverted it to '{plan.snapshot}'")
    if plan.kind == KIND_INTERNAL:
        return ET.tostring(root, encoding="unicode")
    if plan.safety_memory_file:
        ET.SubElement(root, "memory", {"snapshot": LOCATION_EXTERNAL, "file": plan.safety_memory_file})
    else:
        ET.SubElement(root, "memory", {"snapshot": LOCATION_NO})
    disks = ET.SubElement(root, "disks")
    for target, path in plan.safety_overlays:
        disk = ET.SubElement(disks, "disk", {"name": target, "snapshot": LOCATION_EXTERNAL})
        ET.SubElement(disk, "driver", {"type": "qcow2"})
        ET.SubElement(disk, "source", {"file": path})
    for target in plan.safety_skipped:
        ET.SubElement(disks, "disk", {"name": target, "snapshot": LOCATION_NO})
    return ET.tostring(root, encoding="unicode")


def safety_snapshot_flags(plan: Plan, active: bool) -> int:
    if plan.kind == KIND_INTERNAL:
        return 0
    flags = 0 if plan.safety_memory_file and active else libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    return flags | (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC if active else 0)


def take_safety_snapshot(dom: libvirt.virDomain, plan: Plan) -> bool:
    """Take it unless it exists (a redelivered step); True when taken now."""
    if find_snapshot(dom, plan.safety_snapshot) is not None:
        return False
    dom.snapshotCreateXML(safety_snapshot_xml(plan), safety_snapshot_flags(plan, bool(dom.isActive())))
    return True
