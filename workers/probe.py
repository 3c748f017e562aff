"""Gather the facts ``workers.plan`` decides on: the domain's state from
libvirt and, for every file the revert would read or write, what is on disk.

Read-only by construction: stat, access, and a header read per file.
"""
from __future__ import annotations

import os
from tasks.config import Config
from workers import qcow2
from workers.plan import SAVE_IMAGE, DirFacts, DomainFacts, FileFacts, HostProbe
from workers.snapshot_xml import DomainDef, Snapshot

SAVE_MAGIC = b"LibvirtQemudSave"  # a finished save; "LibvirtQemudPart" marks an interrupted one

# virDomainState, by libvirt's names.
STATE_NAMES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff",
               6: "crashed", 7: "pmsuspended"}


def domain_facts(dom) -> DomainFacts:
    """One round of cheap libvirt calls; block jobs are asked only of an active domain."""
    import libvirt

    state, _reason = dom.state()
    active = bool(dom.isActive())
    persistent = bool(dom.isPersistent())
    definition = DomainDef.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if persistent else 0))
    jobs: tuple[str, ...] = ()
    if active:
        jobs = tuple(d.target for d in definition.disks if d.source and dom.blockJobInfo(d.target, 0))
    return DomainFacts(
        name=dom.name(),
        uuid=dom.UUIDString(),
        state=STATE_NAMES.get(state, "nostate"),
        active=active,
        persistent=persistent,
        definition=definition,
        block_jobs=jobs,
    )


def file_facts(path: str) -> FileFacts:
    try:
        os.stat(path)
    except OSError:
        return FileFacts(path, exists=False, realpath=os.path.realpath(path))
    readable = os.access(path, os.R_OK)
    kind = None
    chain: tuple[str, ...] = ()
    missing = None
    if readable:
        with open(path, "rb") as fh:
            magic = fh.read(len(SAVE_MAGIC))
        if magic == SAVE_MAGIC:
            kind = SAVE_IMAGE
        else:
            kind = "qcow2" if magic.startswith(qcow2.MAGIC) else "raw"
            links = []
            backing = qcow2.read_header(path).backing_file if kind == "qcow2" else None
            while backing:
                if not os.path.exists(backing):
                    missing = backing
                    break
                links.append(os.path.realpath(backing))
                backing = qcow2.read_header(backing).backing_file
            chain = tuple(links)
    return FileFacts(path, True, readable, kind, os.path.realpath(path), chain, missing)


def dir_facts(path: str) -> DirFacts | None:
    try:
        st = os.statvfs(path)
        device = os.stat(path).st_dev
    except OSError:
        return None
    return DirFacts(path, os.path.realpath(path), device, st.f_bavail * st.f_frsize)


def files_of_interest(snapshot: Snapshot, domain: DomainFacts) -> tuple[set[str], set[str]]:
    """(files to read, directories new files may go to) for this snapshot and domain."""
    definition = snapshot.domain or domain.definition
    files = {d.source for d in definition.disks if d.source}
    if snapshot.memory_file:
        files.add(snapshot.memory_file)
    anchors = files | {d.source for d in snapshot.disks if d.source}
    anchors |= {d.source for d in domain.definition.disks if d.source}
    return files, {os.path.dirname(p) for p in anchors}


def host_probe(snapshot: Snapshot, domain: DomainFacts, config: Config) -> HostProbe:
    files, dirs = files_of_interest(snapshot, domain)
    return HostProbe(
        storage_roots=tuple(config.storage_roots),
        files={path: file_facts(path) for path in files},
        dirs={d: facts for d in dirs if (facts := dir_facts(d)) is not None},
        space_reserve=config.space_reserve,
    )


def pre_revert_state(dom) -> dict:
    """Everything needed to put the domain back as it is now: journaled before any change."""
    import libvirt

    active, persistent = bool(dom.isActive()), bool(dom.isPersistent())
    current = dom.snapshotCurrent() if dom.hasCurrentSnapshot() else None
    secure = libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE
    return {
        "state": STATE_NAMES.get(dom.state()[0], "nostate"),
        "active": active,
        "persistent": persistent,
        "definition": dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
                                  if persistent else libvirt.VIR_DOMAIN_XML_SECURE),
        "live": dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE) if active else None,
        "current": current.getName() if current else None,
        "current_xml": current.getXMLDesc(secure) if current else None,
        # libvirt forgets a transient domain's snapshots when it stops: keep them to give them back
        "snapshots": [] if persistent else [
            s.getXMLDesc(secure) for s in dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)],
    }
