"""What a host has, for the cluster's inventory: its domains and their snapshots.

Published with every heartbeat, so `virt-revert ls` and host routing never
ask a hypervisor; read-only libvirt calls.
"""
from __future__ import annotations

import libvirt

from workers.plan import KIND_EXTERNAL, KIND_INTERNAL
from workers.probe import STATE_NAMES
from workers.snapshot_xml import Snapshot


def snapshot_kind(snap: Snapshot) -> str:
    locations = snap.locations
    if locations == {"external"}:
        return KIND_EXTERNAL
    if locations == {"internal"}:
        return KIND_INTERNAL
    return "mixed"


def domains(conn: libvirt.virConnect) -> list[dict]:
    found = []
    for dom in conn.listAllDomains():
        current = dom.snapshotCurrent().getName() if dom.hasCurrentSnapshot() else None
        snapshots = []
        for handle in dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL):
            snap = Snapshot.parse(handle.getXMLDesc(0))
            snapshots.append({"name": snap.name, "kind": snapshot_kind(snap), "state": snap.state,
                              "parent": snap.parent, "has_memory": snap.has_memory, "current": snap.name == current})
        found.append({"name": dom.name(), "uuid": dom.UUIDString(), "state": STATE_NAMES.get(dom.state()[0]),
                      "persistent": bool(dom.isPersistent()), "snapshots": snapshots})
    return found
