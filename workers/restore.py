"""Bring the domain up on the target: load memory or define (and maybe boot)
the reverted disks, then put libvirt's snapshot metadata right.
"""
from __future__ import annotations

from typing import Callable

import libvirt

from workers.conn import find_domain
from workers.plan import KIND_INTERNAL, Plan
from workers.snapshot_xml import DomainDef, with_disk_sources

REDEFINE = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE


def reverted_definition(plan: Plan) -> str:
    """The target's definition with every reverted disk on its new overlay."""
    return with_disk_sources(plan.definition, {d.target: d.overlay for d in plan.disks})


def running_on_new_overlays(conn: libvirt.virConnect, plan: Plan) -> bool:
    """True when an earlier attempt already started the domain on this revert's overlays."""
    dom = find_domain(conn, plan.domain_uuid)
    if dom is None or not dom.isActive():
        return False
    live = DomainDef.parse(dom.XMLDesc(0))
    return all(live.disk(d.target) is not None and live.disk(d.target).source == d.overlay for d in plan.disks)


def restore_external(conn: libvirt.virConnect, plan: Plan, restore_xml: str | None) -> None:
    """Define first, so a running domain never has a stale persistent config; then start it paused."""
    definition = reverted_definition(plan)
    if plan.persistent:
        conn.defineXML(definition)
    if running_on_new_overlays(conn, plan):
        return
    if plan.load_memory:
        conn.restoreFlags(plan.memory_file, restore_xml, libvirt.VIR_DOMAIN_SAVE_PAUSED)
    elif plan.cold_boot:
        if plan.persistent:
            conn.lookupByUUIDString(plan.domain_uuid).createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        else:
            conn.createXML(definition, libvirt.VIR_DOMAIN_START_PAUSED)


def revert_internal(dom: libvirt.virDomain, plan: Plan, allow_respawn: bool) -> None:
    """libvirt's own revert; active targets come up paused and the resume step sets the end state."""
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED if (plan.load_memory or plan.cold_boot) else 0
    if allow_respawn:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE
    dom.revertToSnapshot(dom.snapshotLookupByName(plan.snapshot), flags)


def redefine_snapshots(dom: libvirt.virDomain, snapshot_xmls: list[str]) -> None:
    """Give back a transient domain the snapshot metadata libvirt dropped when it stopped."""
    for xml in snapshot_xmls:
        dom.snapshotCreateXML(xml, REDEFINE)


def mark_current(dom: libvirt.virDomain, snapshot_xml: str) -> None:
    dom.snapshotCreateXML(snapshot_xml, REDEFINE | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT)


def restore(conn: libvirt.virConnect, plan: Plan, *, restore_xml: str | None, allow_respawn: bool,
            snapshot_xml: str, transient_snapshots: list[str],
            checkpoint: Callable[[str], None] = lambda point: None) -> libvirt.virDomain:
    if plan.kind == KIND_INTERNAL:
        dom = conn.lookupByUUIDString(plan.domain_uuid)
        revert_internal(dom, plan, allow_respawn)
        return dom
    restore_external(conn, plan, restore_xml)
    checkpoint("restore:mid")
    dom = conn.lookupByUUIDString(plan.domain_uuid)
    redefine_snapshots(dom, transient_snapshots)
    mark_current(dom, snapshot_xml)
    return dom
