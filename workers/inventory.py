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


# A snapshot's XML does not change once taken: parse each one once per worker process.
_summaries: dict[tuple[str, str], dict] = {}


def _summary(dom_uuid: str, handle: libvirt.virDomainSnapshot) -> dict:
    key = (dom_uuid, handle.getName())
    if key not in _summaries:
        snap = Snapshot.parse(handle.getXMLDesc(0))
        _summaries[key] = {"name": snap.name, "kind": snapshot_kind(snap), "state": snap.state,
                           "parent": snap.parent, "has_memory": snap.has_memory}
    return _summaries[key]


def domains(conn: libvirt.virConnect) -> list[dict]:
    found = []
    for dom in conn.listAllDomains():
        uuid = dom.UUIDString()
        current = dom.snapshotCurrent().getName() if dom.hasCurrentSnapshot() else None
        snapshots = [{**_summary(uuid, handle), "current": handle.getName() == current}
                     for handle in dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)]
        found.append({"name": dom.name(), "uuid": uuid, "state": STATE_NAMES.get(dom.state()[0]),
                      "persistent": bool(dom.isPersistent()), "snapshots": snapshots})
    return found
