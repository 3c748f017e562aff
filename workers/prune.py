"""`virt-revert prune`: remove kept pre-revert state explicitly, never a file still in use.

Candidates are the safety snapshots (`virt-revert-pre-*`) of a domain beyond
the newest `keep` and older than `older_than`, with their files: the safety
overlays and memory, and the pre-revert tops they froze.  After their
metadata is dropped, a file is deleted only if no domain on the host and no
remaining snapshot uses it, directly or anywhere in a backing chain, and it
lies inside the storage roots.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import libvirt

from workers import qcow2
from workers.plan import within_roots
from workers.snapshot_xml import DomainDef, Snapshot

SAFETY_PREFIX = "virt-revert-pre-"
SECURE = libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE


@dataclass
class PruneReport:
    domain: str
    dry_run: bool
    snapshots: list[str] = field(default_factory=list)  # safety snapshots dropped (or to drop)
    files: list[str] = field(default_factory=list)  # files deleted (or to delete)
    kept: dict[str, str] = field(default_factory=dict)  # file -> why it stays

    def to_dict(self) -> dict:
        return asdict(self)


def _snapshot_files(snap: Snapshot) -> set[str]:
    files = {d.source for d in snap.disks if d.source}
    if snap.domain:
        files |= {d.source for d in snap.domain.disks if d.source}
    if snap.memory_file:
        files.add(snap.memory_file)
    return files


def _with_chains(paths: set[str]) -> set[str]:
    """The files and every file below them in their backing chains."""
    used = set()
    for path in paths:
        used.add(path)
        if os.path.exists(path):
            try:
                used |= {h.backing_file for h in qcow2.backing_chain(path) if h.backing_file}
            except OSError:
                pass
    return used


def prune(conn: libvirt.virConnect, domain: str, *, keep: int, older_than: float, dry_run: bool,
          storage_roots: tuple[str, ...]) -> PruneReport:
    dom = conn.lookupByName(domain)
    report = PruneReport(domain, dry_run)
    safety = [s for s in dom.listAllSnapshots() if s.getName().startswith(SAFETY_PREFIX)]
    parsed = {s.getName(): Snapshot.parse(s.getXMLDesc(SECURE)) for s in safety}
    newest_first = sorted(parsed, key=lambda n: _age_key(parsed[n]), reverse=True)
    now = time.time()
    victims = [n for i, n in enumerate(newest_first)
               if i >= keep and now - parsed[n].creation_time >= older_than]
    candidates = set().union(*(_snapshot_files(parsed[n]) for n in victims)) if victims else set()
    in_use = _in_use_without(conn, dom, set(victims))
    report.snapshots = victims
    for path in sorted(candidates):
        if path in in_use:
            report.kept[path] = "in use by a domain or a snapshot (directly or as a backing file)"
        elif not within_roots(os.path.realpath(path), storage_roots):
            report.kept[path] = "outside the storage roots"
        elif not os.path.exists(path):
            report.kept[path] = "already gone"
        else:
            report.files.append(path)
    if not dry_run:
        for name in victims:
            dom.snapshotLookupByName(name).delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        for path in report.files:
            os.unlink(path)
    return report


def _age_key(snap: Snapshot) -> tuple[float, int]:
    """creationTime counts whole seconds; the change time of the files the snapshot created breaks ties."""
    files = [d.source for d in snap.disks if d.source] + ([snap.memory_file] if snap.memory_file else [])
    stamps = [os.stat(f).st_ctime_ns for f in files if os.path.exists(f)]
    return snap.creation_time, min(stamps, default=0)


def _in_use_without(conn: libvirt.virConnect, dom: libvirt.virDomain, victims: set[str]) -> set[str]:
    direct: set[str] = set()
    for other in conn.listAllDomains():
        flag_sets = (0, libvirt.VIR_DOMAIN_XML_INACTIVE) if other.isActive() else (libvirt.VIR_DOMAIN_XML_INACTIVE,)
        for flags in flag_sets:
            direct |= {d.source for d in DomainDef.parse(other.XMLDesc(flags)).disks if d.source}
        for snap in other.listAllSnapshots():
            if other.UUIDString() == dom.UUIDString() and snap.getName() in victims:
                continue
            direct |= _snapshot_files(Snapshot.parse(snap.getXMLDesc(SECURE)))
    return _with_chains(direct)
