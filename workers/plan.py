"""Validation and planning: a pure function from a request, the parsed
snapshot and a probe of the host to a :class:`Plan`, or a :class:`Refusal`.

Nothing here touches libvirt or the filesystem; ``workers.probe`` gathers the
facts first.  Every refusal of the revert contract is decided here, so each
one is a table row in ``tests/unit/test_plan.py``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping

from tasks.errors import ErrorCode, Refusal
from tasks.model import EndState, RevertRequest
from workers.snapshot_xml import (
    DEVICE_DISK,
    DISK_TYPE_FILE,
    LOCATION_EXTERNAL,
    LOCATION_INTERNAL,
    STATE_PAUSED,
    STATE_RUNNING,
    DomainDef,
    Snapshot,
)

KIND_EXTERNAL = "external"
KIND_INTERNAL = "internal"

# A new, empty qcow2 overlay is a few hundred KiB of metadata; count 1 MiB.
OVERLAY_ESTIMATE = 1024 * 1024

SAVE_IMAGE = "libvirt-save"


@dataclass(frozen=True)
class DomainFacts:
    """What libvirt says about the domain right now."""

    name: str
    uuid: str
    state: str  # libvirt's name: running, paused, shutoff, ...
    active: bool
    persistent: bool
    definition: DomainDef  # inactive (persistent) definition, or the live one for a transient domain
    block_jobs: tuple[str, ...] = ()  # disk targets with a job running


@dataclass(frozen=True)
class FileFacts:
    path: str
    exists: bool
    readable: bool = False
    kind: str | None = None  # "qcow2", "raw", SAVE_IMAGE, or None when unknown
    realpath: str = ""
    chain: tuple[str, ...] = ()  # files below it, nearest first
    chain_missing: str | None = None  # the first link of the chain that is absent


@dataclass(frozen=True)
class DirFacts:
    path: str
    realpath: str
    device: int
    free_bytes: int


@dataclass(frozen=True)
class HostProbe:
    storage_roots: tuple[str, ...]
    files: Mapping[str, FileFacts]
    dirs: Mapping[str, DirFacts]
    space_reserve: int = 64 * 1024 * 1024

    def file(self, path: str) -> FileFacts:
        return self.files.get(path) or FileFacts(path, exists=False)


@dataclass(frozen=True)
class DiskPlan:
    target: str
    backing: str  # the file frozen at snapshot time; the new overlay sits on it
    backing_format: str
    overlay: str  # the new top, created by this revert


@dataclass(frozen=True)
class Plan:
    revert_id: str
    domain: str
    domain_uuid: str
    snapshot: str
    kind: str  # KIND_EXTERNAL or KIND_INTERNAL
    was_active: bool
    persistent: bool
    end_state: EndState
    load_memory: bool  # restore the snapshot's memory image
    cold_boot: bool  # boot the reverted disks without memory
    memory_file: str | None
    definition: str  # inactive domain XML the reverted domain is defined from (before overlay edits)
    disks: tuple[DiskPlan, ...]
    safety_snapshot: str | None
    safety_overlays: tuple[tuple[str, str], ...]  # (target, path) for the pre-revert overlays
    safety_skipped: tuple[str, ...]  # current disk targets the safety snapshot leaves out (cdroms, ...)
    safety_memory_file: str | None
    events: tuple[tuple[str, str], ...]  # (event, detail) in libvirt's order
    risks: tuple[str, ...] = ()

    @property
    def safety_paths(self) -> list[str]:
        """Files the safety snapshot creates."""
        paths = [path for _, path in self.safety_overlays]
        return paths + ([self.safety_memory_file] if self.safety_memory_file else [])

    @property
    def created_paths(self) -> list[str]:
        """Files this revert may create; only these may ever be removed by it."""
        return [d.overlay for d in self.disks] + self.safety_paths

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        values = dict(data)
        values["end_state"] = EndState(values["end_state"])
        values["disks"] = tuple(DiskPlan(**d) for d in values["disks"])
        values["safety_overlays"] = tuple(tuple(p) for p in values["safety_overlays"])
        values["events"] = tuple(tuple(e) for e in values["events"])
        values["safety_skipped"] = tuple(values["safety_skipped"])
        values["risks"] = tuple(values["risks"])
        return cls(**values)


def refuse(code: ErrorCode, message: str) -> Refusal:
    return Refusal(code, message)


def snapshot_kind(request: RevertRequest, snapshot: Snapshot) -> str:
    locations = snapshot.locations
    if locations <= {LOCATION_EXTERNAL} and locations:
        return KIND_EXTERNAL
    if locations <= {LOCATION_INTERNAL} and locations:
        return KIND_INTERNAL
    if not locations:
        raise refuse(ErrorCode.SNAPSHOT_MIXED,
                     f"snapshot '{snapshot.name}' of domain '{request.domain}' captured no disk and no memory")
    raise refuse(ErrorCode.SNAPSHOT_MIXED,
                 f"snapshot '{snapshot.name}' of domain '{request.domain}' mixes internal and external "
                 f"state ({', '.join(sorted(locations))})")


def end_state(request: RevertRequest, snapshot: Snapshot) -> EndState:
    """The flag if one was given, else the snapshot's own state."""
    if request.end_state == "running":
        return EndState.RUNNING
    if request.end_state == "paused":
        return EndState.PAUSED
    if request.end_state == "stopped":
        return EndState.SHUTOFF
    if snapshot.state == STATE_RUNNING:
        return EndState.RUNNING
    if snapshot.state == STATE_PAUSED:
        return EndState.PAUSED
    return EndState.SHUTOFF


def lifecycle_events(was_active: bool, end: EndState, persistent: bool) -> tuple[tuple[str, str], ...]:
    """The events a revert emits, in libvirt's order, re-emitted even when the state looks unchanged."""
    events: list[tuple[str, str]] = []
    if was_active:
        events.append(("stopped", "from-snapshot"))
    if end is not EndState.SHUTOFF:
        events.append(("started", "from-snapshot"))
        events.append(("suspended" if end is EndState.PAUSED else "resumed", "from-snapshot"))
    if persistent:
        events.append(("defined", "from-snapshot"))
    return tuple(events)


def within_roots(realpath: str, roots: tuple[str, ...]) -> bool:
    return any(os.path.commonpath([realpath, os.path.realpath(root)]) == os.path.realpath(root) for root in roots)


def overlay_path(revert_id: str, domain: str, target: str, after_snapshot_file: str | None, backing: str) -> str:
    """A path no one else uses: the revert id is in the name, beside the snapshot's own overlay."""
    anchor = after_snapshot_file or backing
    stem = os.path.basename(anchor)
    if stem.endswith(".qcow2"):
        stem = stem[: -len(".qcow2")]
    if after_snapshot_file is None:
        stem = f"{domain}.{target}"
    return os.path.join(os.path.dirname(anchor), f"{stem}.{revert_id}.qcow2")


def plan(request: RevertRequest, snapshot: Snapshot, domain: DomainFacts, probe: HostProbe) -> Plan:
    """Decide the whole revert, or refuse it.  Pure: same inputs, same answer."""
    where = f"domain '{domain.name}', snapshot '{snapshot.name}'"
    kind = snapshot_kind(request, snapshot)
    end = end_state(request, snapshot)
    if not domain.persistent and end is EndState.SHUTOFF:
        raise refuse(ErrorCode.TRANSIENT_INACTIVE,
                     f"{where}: the domain is transient and would end shut off, which undefines it")

    if snapshot.domain is not None:
        definition = snapshot.domain
    elif request.force:
        definition = domain.definition
    else:
        raise refuse(ErrorCode.SNAPSHOT_NO_DOMAIN,
                     f"{where}: the snapshot holds no <domain> definition to revert to")

    wants_active = end is not EndState.SHUTOFF
    load_memory = wants_active and snapshot.has_memory
    cold_boot = wants_active and not snapshot.has_memory
    if cold_boot and not request.cold_boot:
        raise refuse(ErrorCode.MEMORY_STATE_MISSING,
                     f"{where}: can't revert to {end} state: the snapshot holds no memory image "
                     f"(snapshot state '{snapshot.state}')")
    if domain.active and load_memory and not request.allow_respawn:
        raise refuse(ErrorCode.REVERT_RISKY,
                     f"{where}: reverting needs to replace the running QEMU process to load the snapshot's memory")
    if domain.block_jobs:
        raise refuse(ErrorCode.BLOCK_JOB_RUNNING,
                     f"{where}: a block job is running on disk(s) {', '.join(domain.block_jobs)}")

    disks: tuple[DiskPlan, ...] = ()
    memory_file = snapshot.memory_file
    if kind == KIND_EXTERNAL:
        if load_memory:
            _check_memory_image(where, snapshot, probe)
        disks = _disk_plans(request, snapshot, definition, probe, where)
    safety_snapshot, safety_overlays, safety_memory = _safety_plan(request, domain, kind)
    kept = {target for target, _ in safety_overlays}
    safety_skipped = tuple(d.target for d in domain.definition.disks if d.target not in kept)

    checked = [d.backing for d in disks] + ([memory_file] if load_memory and memory_file else [])
    _check_roots(where, probe, checked, [d.overlay for d in disks] + [p for _, p in safety_overlays]
                 + ([safety_memory] if safety_memory else []))
    _check_space(where, probe, domain, disks, safety_overlays, safety_memory)

    risks = []
    if cold_boot:
        risks.append("cold-boot: the guest boots from crash-consistent disks")
    if domain.active:
        risks.append("respawn: the running QEMU process is replaced" if load_memory else "stop: the domain is stopped")
    if not request.safety_snapshot:
        risks.append("no safety snapshot: the pre-revert state is kept only as files")
    return Plan(
        revert_id=request.revert_id,
        domain=domain.name,
        domain_uuid=domain.uuid,
        snapshot=snapshot.name,
        kind=kind,
        was_active=domain.active,
        persistent=domain.persistent,
        end_state=end,
        load_memory=load_memory,
        cold_boot=cold_boot,
        memory_file=memory_file if load_memory else None,
        definition=definition.xml,
        disks=disks,
        safety_snapshot=safety_snapshot,
        safety_overlays=safety_overlays,
        safety_skipped=safety_skipped,
        safety_memory_file=safety_memory,
        events=lifecycle_events(domain.active, end, domain.persistent),
        risks=tuple(risks),
    )


def _check_memory_image(where: str, snapshot: Snapshot, probe: HostProbe) -> None:
    if not snapshot.memory_file:
        raise refuse(ErrorCode.MEMORY_IMAGE_UNKNOWN, f"{where}: the snapshot metadata names no memory image file")
    facts = probe.file(snapshot.memory_file)
    if not facts.exists:
        raise refuse(ErrorCode.MEMORY_IMAGE_MISSING, f"{where}: memory image '{facts.path}' does not exist")
    if not facts.readable:
        raise refuse(ErrorCode.MEMORY_IMAGE_UNREADABLE, f"{where}: memory image '{facts.path}' is not readable")
    if facts.kind != SAVE_IMAGE:
        raise refuse(ErrorCode.MEMORY_IMAGE_INVALID,
                     f"{where}: memory image '{facts.path}' is not a complete libvirt save image")


def _disk_plans(request: RevertRequest, snapshot: Snapshot, definition: DomainDef, probe: HostProbe,
                where: str) -> tuple[DiskPlan, ...]:
    plans = []
    for snap_disk in snapshot.captured_disks:
        disk = definition.disk(snap_disk.name) or next(
            (d for d in definition.disks if d.source == snap_disk.name), None)
        if disk is None or not disk.source:
            raise refuse(ErrorCode.BACKING_MISSING,
                         f"{where}: disk '{snap_disk.name}' has no source in the snapshot's definition")
        facts = probe.file(disk.source)
        if not facts.exists:
            raise refuse(ErrorCode.BACKING_MISSING, f"{where}: backing file '{disk.source}' of disk "
                                                    f"'{disk.target}' does not exist")
        if not facts.readable:
            raise refuse(ErrorCode.BACKING_UNREADABLE, f"{where}: backing file '{disk.source}' of disk "
                                                       f"'{disk.target}' is not readable")
        if facts.chain_missing:
            raise refuse(ErrorCode.BACKING_MISSING, f"{where}: file '{facts.chain_missing}' in the backing "
                                                    f"chain of disk '{disk.target}' does not exist")
        plans.append(DiskPlan(
            target=disk.target,
            backing=disk.source,
            backing_format=disk.driver_type or facts.kind or "raw",
            overlay=overlay_path(request.revert_id, request.domain, disk.target, snap_disk.source, disk.source),
        ))
    return tuple(plans)


def _safety_plan(request: RevertRequest, domain: DomainFacts, kind: str
                 ) -> tuple[str | None, tuple[tuple[str, str], ...], str | None]:
    if not request.safety_snapshot:
        return None, (), None
    name = request.safety_snapshot_name
    if kind == KIND_INTERNAL:
        return name, (), None
    overlays = tuple(
        (disk.target, os.path.join(os.path.dirname(disk.source), f"{domain.name}.{disk.target}.{name}.qcow2"))
        for disk in safety_disks(domain.definition)
    )
    memory = None
    if request.safety_memory and domain.active and overlays:
        memory = os.path.join(os.path.dirname(overlays[0][1]), f"{domain.name}.{name}.mem")
    return name, overlays, memory


def safety_disks(definition: DomainDef) -> tuple:
    """The writable file disks whose current state the safety snapshot keeps."""
    return tuple(d for d in definition.disks
                 if d.device == DEVICE_DISK and d.type == DISK_TYPE_FILE and d.source)


def _check_roots(where: str, probe: HostProbe, files: list[str], new_files: list[str]) -> None:
    for path in files:
        facts = probe.file(path)
        for link in (facts.realpath or path, *facts.chain):
            if not within_roots(link, probe.storage_roots):
                raise refuse(ErrorCode.FILE_OUTSIDE_ROOTS, f"{where}: file '{link}' is outside the storage roots "
                                                           f"({':'.join(probe.storage_roots)})")
    for path in new_files:
        directory = probe.dirs.get(os.path.dirname(path))
        real = os.path.join(directory.realpath, os.path.basename(path)) if directory else path
        if not within_roots(real, probe.storage_roots):
            raise refuse(ErrorCode.FILE_OUTSIDE_ROOTS, f"{where}: new file '{path}' would be outside the storage "
                                                       f"roots ({':'.join(probe.storage_roots)})")


def _check_space(where: str, probe: HostProbe, domain: DomainFacts, disks: tuple[DiskPlan, ...],
                 safety_overlays: tuple[tuple[str, str], ...], safety_memory: str | None) -> None:
    need: dict[int, int] = {}
    dirs: dict[int, DirFacts] = {}

    def add(path: str, size: int) -> None:
        directory = probe.dirs.get(os.path.dirname(path))
        if directory is None:
            raise refuse(ErrorCode.BACKING_MISSING, f"{where}: directory '{os.path.dirname(path)}' does not exist")
        need[directory.device] = need.get(directory.device, 0) + size
        dirs[directory.device] = directory

    for path in [d.overlay for d in disks] + [p for _, p in safety_overlays]:
        add(path, OVERLAY_ESTIMATE)
    if safety_memory:
        add(safety_memory, domain.definition.memory_kib * 1024)
    for device, size in need.items():
        free = dirs[device].free_bytes
        if free < size + probe.space_reserve:
            raise refuse(ErrorCode.INSUFFICIENT_SPACE,
                         f"{where}: '{dirs[device].path}' has {free // 2**20} MiB free; the revert needs "
                         f"{size // 2**20 + 1} MiB plus a reserve of {probe.space_reserve // 2**20} MiB")
