"""Undo a revert that stopped before its point of no return, from its journal.

The domain goes back to its pre-revert definition, files and current
snapshot; it is restarted from the safety snapshot's memory when one was
saved; files this revert created and nothing uses are removed.  Every action
checks the state first, so a rollback interrupted by a crash can run again.
"""
from __future__ import annotations

import os

import libvirt

from workers.conn import find_domain, find_snapshot
from workers.journal import JournalState
from workers.plan import KIND_INTERNAL, Plan
from workers.probe import STATE_NAMES
from workers.snapshot_xml import DomainDef, with_disk_sources

REDEFINE = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE


def roll_back(conn: libvirt.virConnect, state: JournalState) -> dict:
    """Put the domain back; return what was done, for the journal and the record."""
    plan, pre = Plan.from_dict(state.plan), state.pre
    actions: list[str] = []
    dom = find_domain(conn, plan.domain_uuid)
    # Its name carries this revert's id: if it exists, this revert made it and its files.
    safety_ours = state.did("safety-snapshot") or find_snapshot(dom, plan.safety_snapshot) is not None
    if dom is not None and dom.isActive() and state.intended("restore"):
        dom.destroy()  # whatever runs now, this revert's restore started it
        actions.append("stopped the half-restored domain")
    if plan.kind == KIND_INTERNAL:
        _roll_back_internal(dom, plan, pre, state, actions)
    elif dom is not None and dom.isActive():
        actions.append("the domain was never stopped: it keeps running" +
                       (" on the safety snapshot's overlays" if find_snapshot(dom, plan.safety_snapshot) else ""))
    else:
        dom = _put_back(conn, dom, plan, pre, state, actions)
    in_use = _files_in_use(dom)
    for path in _removable(dom, plan, state, safety_ours):
        if path in in_use or not os.path.exists(path):
            continue
        os.unlink(path)
        actions.append(f"removed {path}")
    end_state = STATE_NAMES.get(dom.state()[0]) if dom is not None else None
    kept = plan.safety_snapshot if find_snapshot(dom, plan.safety_snapshot) is not None else None
    return {"actions": actions, "end_state": end_state, "safety_snapshot": kept}


def _put_back(conn, dom, plan: Plan, pre: dict, state: JournalState, actions: list[str]):
    """The domain is shut off (or gone, if transient): back to its pre-revert definition and state."""
    if pre["persistent"]:
        dom = conn.defineXML(pre["definition"])
        actions.append("redefined the pre-revert definition")
    safety = find_snapshot(dom, plan.safety_snapshot)
    if safety is not None:
        safety.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        actions.append(f"dropped the safety snapshot '{plan.safety_snapshot}' (its files are removed below)")
    if pre["active"]:
        try:
            dom = _restart(conn, dom, plan, pre, state, actions)
        except libvirt.libvirtError as err:  # the definition and files are back; running it is a bonus
            actions.append(f"could not restart the domain: {err.get_error_message()}")
            dom = find_domain(conn, plan.domain_uuid)
    if dom is not None and not pre["persistent"]:
        for xml in pre["snapshots"]:
            dom.snapshotCreateXML(xml, REDEFINE)
    if dom is not None and pre["current_xml"]:
        _mark_current(dom, pre, actions)
    return dom


def _mark_current(dom, pre: dict, actions: list[str]) -> None:
    """Best effort: dropping the safety snapshot usually made its parent, the old current, current."""
    if dom.hasCurrentSnapshot() and dom.snapshotCurrent().getName() == pre["current"]:
        return
    try:
        dom.snapshotCreateXML(pre["current_xml"], REDEFINE | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT)
        actions.append(f"marked '{pre['current']}' current again")
    except libvirt.libvirtError as err:
        actions.append(f"could not mark '{pre['current']}' current again: {err.get_error_message()}")


def _restart(conn, dom, plan: Plan, pre: dict, state: JournalState, actions: list[str]):
    memory = plan.safety_memory_file
    running = pre["state"] == "running"
    if memory and state.did("safety-snapshot") and os.path.exists(memory):
        saved = conn.saveImageGetXMLDesc(memory, libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE)
        live = DomainDef.parse(pre["live"])
        xml = with_disk_sources(saved, {t: live.disk(t).source for t, _ in plan.safety_overlays})
        conn.restoreFlags(memory, xml, libvirt.VIR_DOMAIN_SAVE_RUNNING if running else libvirt.VIR_DOMAIN_SAVE_PAUSED)
        actions.append("restarted the domain from the safety snapshot's memory")
    elif not pre["persistent"]:
        # libvirt forgets a stopped transient domain: it must run to exist at all
        conn.createXML(pre["live"], 0 if running else libvirt.VIR_DOMAIN_START_PAUSED)
        actions.append("re-created the transient domain from its pre-revert XML (booted: no memory was saved)")
    else:
        actions.append("left shut off: its memory was not saved (--safety-memory keeps it)")
    return find_domain(conn, plan.domain_uuid)


def _roll_back_internal(dom, plan: Plan, pre: dict, state: JournalState, actions: list[str]) -> None:
    """libvirt reverted inside the image: revert again, to the internal safety snapshot."""
    safety = find_snapshot(dom, plan.safety_snapshot)
    if safety is None or not state.intended("restore"):
        if dom is not None and not dom.isActive() and pre["active"]:
            actions.append("left shut off: no internal safety snapshot was taken")
        return
    flags = 0
    if pre["active"]:
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING if pre["state"] == "running"
                 else libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED)
    dom.revertToSnapshot(safety, flags | libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE)
    actions.append(f"reverted to the internal safety snapshot '{plan.safety_snapshot}'")


def _removable(dom, plan: Plan, state: JournalState, safety_ours: bool) -> list[str]:
    """The new overlays this revert claimed, and its safety snapshot's files once the snapshot is dropped."""
    paths = list(state.claimed_files)
    if safety_ours and find_snapshot(dom, plan.safety_snapshot) is None:
        paths += plan.safety_paths
    return paths


def _files_in_use(dom) -> set[str]:
    if dom is None:
        return set()
    sources: set[str] = set()
    for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
        sources |= {d.source for d in DomainDef.parse(dom.XMLDesc(flags)).disks if d.source}
    return sources
