"""The seven steps of a revert, each a plain function of a :class:`StepContext`.

A step reads what the revert decided and did from the host-local journal,
and journals each side effect (`intent`) before doing it and (`done`) after,
so a redelivered step does its side effects once and recovery knows exactly
what to undo.  The Celery wrappers live in ``workers.celery_tasks``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import libvirt

from tasks import locks
from tasks.config import Config
from tasks.errors import ErrorCode, Refusal, StepFailure
from tasks.events import LifecycleEvent, RevertFinishedEvent
from tasks.model import EndState, RevertRequest, RevertState
from tasks.store import Store
from workers import conn as conns
from workers import faults, overlays, probe, restore as restoring, safety
from workers.journal import Journal, JournalState, unfinished
from workers.plan import KIND_INTERNAL, Plan, plan as make_plan
from workers.snapshot_xml import DomainDef, Snapshot, with_disk_sources


@dataclass
class Outcome:
    skipped: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


def skipped(reason: str) -> Outcome:
    return Outcome(skipped=True, detail={"reason": reason})


@dataclass
class StepContext:
    request: RevertRequest
    journal: Journal
    state: JournalState
    host: str
    uri: str
    store: Store
    config: Config
    locked_uuid: str | None = None  # set once validate holds the domain's cluster-wide lock

    @property
    def conn(self) -> libvirt.virConnect:
        """The worker's connection, reopened if libvirtd restarted since the last call."""
        return conns.connection(self.uri)

    @property
    def plan(self) -> Plan | None:
        return Plan.from_dict(self.state.plan) if self.state.begun else None

    @property
    def where(self) -> str:
        return f"domain '{self.request.domain}', snapshot '{self.request.snapshot}'"

    def domain(self) -> libvirt.virDomain:
        return self.conn.lookupByUUIDString(self.state.plan["domain_uuid"])

    def record(self, kind: str, **fields: Any) -> None:
        """Journal an entry and keep the folded state current."""
        self.state.apply(self.journal.append(kind, **fields))

    def intent(self, action: str, path: str | None = None) -> None:
        self.record("intent", action=action, path=path)

    def did(self, action: str, path: str | None = None) -> None:
        self.record("done", action=action, path=path)

    def checkpoint(self, point: str) -> None:
        faults.checkpoint(point, self.request.revert_id, self.config.state_dir)

    def fence(self) -> None:
        """Before anything destructive: this revert must still own the domain's lock."""
        uuid = self.state.lock.get("uuid")
        if uuid and not locks.owns(self.store.redis, uuid, self.request.revert_id):
            raise StepFailure(ErrorCode.LOCK_LOST, f"{self.where}: revert {self.request.revert_id} no longer "
                                                   f"holds the domain's lock; stopping before it changes anything")


@dataclass
class Target:
    """The domain and snapshot a request names, as libvirt has them now."""

    dom: libvirt.virDomain
    snapshot_handle: libvirt.virDomainSnapshot
    snapshot_xml: str
    snapshot: Snapshot
    facts: probe.DomainFacts


def look_up(conn: libvirt.virConnect, request: RevertRequest) -> Target:
    dom = conns.lookup_domain(conn, request.domain)
    handle = conns.lookup_snapshot(dom, request.snapshot)
    xml = handle.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
    return Target(dom, handle, xml, Snapshot.parse(xml), probe.domain_facts(dom))


def dry_run(conn: libvirt.virConnect, request: RevertRequest, config: Config) -> dict[str, Any]:
    """What validate would decide, without taking the lock or writing anything."""
    try:
        target = look_up(conn, request)
        host_probe = probe.host_probe(target.snapshot, target.facts, config)
        plan = make_plan(request, target.snapshot, target.facts, host_probe)
    except Refusal as refusal:
        return {"domain": request.domain, "refusal": refusal.to_dict()}
    risks = list(plan.risks)
    if children := target.snapshot_handle.numChildren():
        risks.append(f"{children} child snapshot(s): kept, still revertible")
    free = min((d.free_bytes for d in host_probe.dirs.values()), default=0)
    return {"domain": request.domain, "current_state": target.facts.state, "end_state": str(plan.end_state),
            "kind": plan.kind, "load_memory": plan.load_memory, "risks": risks, "free_bytes": free,
            "refusal": None}


def validate(ctx: StepContext) -> Outcome:
    if ctx.state.begun:
        return skipped("validated by an earlier delivery")
    target = look_up(ctx.conn, ctx.request)
    dom, snapshot_xml, snapshot, facts = target.dom, target.snapshot_xml, target.snapshot, target.facts
    for other in unfinished(ctx.config.state_dir):
        if other.revert_id != ctx.request.revert_id and other.state().plan.get("domain_uuid") == facts.uuid:
            raise Refusal(ErrorCode.REVERT_IN_FLIGHT, f"{ctx.where}: domain busy, revert {other.revert_id} is "
                                                      f"unfinished on this host (`virt-revert recover` settles it)")
    holder = locks.acquire(ctx.store.redis, facts.uuid, ctx.request.revert_id, ctx.config.lock_ttl)
    if holder is not None:
        raise Refusal(ErrorCode.REVERT_IN_FLIGHT, f"{ctx.where}: domain busy, revert {holder} in flight")
    ctx.locked_uuid = facts.uuid
    plan = make_plan(ctx.request, snapshot, facts, probe.host_probe(snapshot, facts, ctx.config))
    ctx.record("begin", request=ctx.request.to_dict(), plan=plan.to_dict(), pre=probe.pre_revert_state(dom),
               snapshot_xml=snapshot_xml, lock={"uuid": facts.uuid, "owner": ctx.request.revert_id})
    return Outcome(detail={"kind": plan.kind, "from_state": facts.state, "end_state": str(plan.end_state),
                           "load_memory": plan.load_memory, "disks": [d.target for d in plan.disks],
                           "risks": list(plan.risks)})


def open_memory_image(ctx: StepContext) -> Outcome:
    plan = ctx.plan
    if not plan.load_memory or plan.kind == KIND_INTERNAL:
        return skipped("the target's memory is not loaded" if not plan.load_memory else "internal snapshot")
    if ctx.state.restore_xml is not None:
        return skipped("opened by an earlier delivery")
    try:
        saved_xml = ctx.conn.saveImageGetXMLDesc(plan.memory_file, libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE)
    except libvirt.libvirtError as err:
        raise Refusal(ErrorCode.MEMORY_IMAGE_INVALID,
                      f"{ctx.where}: memory image '{plan.memory_file}' cannot be read by libvirt: "
                      f"{err.get_error_message()}") from err
    saved = DomainDef.parse(saved_xml)
    target = DomainDef.parse(plan.definition)
    if (saved.uuid, saved.name) != (target.uuid, target.name):
        raise Refusal(ErrorCode.MEMORY_IMAGE_MISMATCH,
                      f"{ctx.where}: memory image '{plan.memory_file}' holds domain '{saved.name}' "
                      f"({saved.uuid}), not '{target.name}' ({target.uuid})")
    ctx.record("memory", restore_xml=with_disk_sources(saved_xml, {d.target: d.overlay for d in plan.disks}))
    return Outcome(detail={"memory_file": plan.memory_file, "bytes": os.path.getsize(plan.memory_file)})


def stop(ctx: StepContext) -> Outcome:
    plan = ctx.plan
    ctx.fence()
    dom = ctx.domain()
    detail: dict[str, Any] = {}
    if plan.safety_snapshot and not ctx.state.did("safety-snapshot"):
        ctx.intent("safety-snapshot")
        detail["safety_snapshot_taken"] = safety.take_safety_snapshot(dom, plan)
        ctx.did("safety-snapshot")
    if not plan.persistent and ctx.state.transient_snapshots is None:
        ctx.record("transient", snapshots=[s.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE) for s in
                                           dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)])
    if dom.isActive():
        ctx.intent("destroy")
        dom.destroy()
        ctx.did("destroy")
        detail["destroyed"] = True
    if not detail:
        return skipped("domain already shut off, safety snapshot already taken or not asked")
    return Outcome(detail=detail)


def recreate_overlays(ctx: StepContext) -> Outcome:
    plan = ctx.plan
    if plan.kind == KIND_INTERNAL:
        return skipped("internal snapshot: libvirt reverts inside the image")
    created = []
    for disk in plan.disks:
        if ctx.state.did("create", disk.overlay):
            continue
        if ctx.state.did("claim", disk.overlay) and os.path.exists(disk.overlay):
            os.unlink(disk.overlay)  # claimed by an earlier delivery that stopped before qemu-img finished
        ctx.intent("create", disk.overlay)
        overlays.claim(disk.overlay)
        ctx.did("claim", disk.overlay)
        ctx.checkpoint("recreate_overlays:claimed")
        overlays.fill_overlay(disk)
        ctx.did("create", disk.overlay)
        created.append(disk.overlay)
    return Outcome(detail={"overlays": created})


def restore(ctx: StepContext) -> Outcome:
    plan = ctx.plan
    if ctx.state.did("restore"):
        return skipped("restored by an earlier delivery")
    ctx.fence()
    ctx.intent("restore")
    restoring.restore(ctx.conn, plan, restore_xml=ctx.state.restore_xml, allow_respawn=ctx.request.allow_respawn,
                      snapshot_xml=ctx.state.snapshot_xml, transient_snapshots=ctx.state.transient_snapshots or [],
                      checkpoint=ctx.checkpoint)
    ctx.did("restore")
    how = "memory" if plan.load_memory else "cold-boot" if plan.cold_boot else "define"
    return Outcome(detail={"how": how if plan.kind != KIND_INTERNAL else "libvirt-internal"})


def resume(ctx: StepContext) -> Outcome:
    """Put the domain in the planned end state."""
    dom = ctx.domain()
    state = dom.state()[0]
    end = ctx.plan.end_state
    if end is EndState.RUNNING and state == libvirt.VIR_DOMAIN_PAUSED:
        dom.resume()
    elif end is EndState.PAUSED and state == libvirt.VIR_DOMAIN_RUNNING:
        dom.suspend()
    elif end is EndState.SHUTOFF and dom.isActive():
        dom.destroy()  # an internal memory snapshot reverted with --stopped: revert paused, then stop
    else:
        return skipped(f"domain already {end}")
    return Outcome(detail={"end_state": str(end)})


def emit_events(ctx: StepContext) -> Outcome:
    plan = ctx.plan
    now = time.time()
    events = [LifecycleEvent(plan.revert_id, ctx.host, plan.domain, plan.domain_uuid, event, detail, now).to_dict()
              for event, detail in plan.events]
    events.append(RevertFinishedEvent(plan.revert_id, ctx.host, plan.domain, plan.domain_uuid, plan.snapshot,
                                      str(RevertState.SUCCEEDED), str(plan.end_state), now).to_dict())
    if not ctx.store.publish_events_once(plan.revert_id, events):
        return skipped("events published by an earlier delivery")
    return Outcome(detail={"events": [e for e, _ in plan.events] + ["revert-finished"]})


STEP_FUNCTIONS: dict[str, Callable[[StepContext], Outcome]] = {
    "validate": validate,
    "open_memory_image": open_memory_image,
    "stop": stop,
    "recreate_overlays": recreate_overlays,
    "restore": restore,
    "resume": resume,
    "emit_events": emit_events,
}
