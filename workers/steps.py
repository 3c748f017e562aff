"""The seven steps of a revert, each a plain function of a :class:`StepContext`.

Each checks the state before acting, because Celery may deliver a step
twice; each returns an :class:`Outcome` whose detail lands in the record.
The Celery wrappers live in ``workers.celery_tasks``.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import libvirt

from tasks import locks
from tasks.config import Config
from tasks.errors import ErrorCode, Refusal
from tasks.events import LifecycleEvent, RevertFinishedEvent
from tasks.model import EndState, RevertRequest, RevertState
from tasks.store import Store
from workers import conn as conns
from workers import overlays, probe, restore as restoring, safety
from workers.plan import KIND_INTERNAL, Plan, plan as make_plan
from workers.snapshot_xml import DomainDef, Snapshot, with_disk_sources


@dataclass
class Done:
    """What the revert has done so far; travels along the chain as JSON."""

    locked_uuid: str | None = None  # the domain whose cluster-wide lock this revert holds
    snapshot_xml: str = ""
    restore_xml: str | None = None
    safety_snapshot: str | None = None
    stopped: bool = False
    created_files: list[str] = field(default_factory=list)
    transient_snapshots: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    skipped: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


def skipped(reason: str) -> Outcome:
    return Outcome(skipped=True, detail={"reason": reason})


@dataclass
class StepContext:
    request: RevertRequest
    plan: Plan | None
    done: Done
    host: str
    conn: libvirt.virConnect
    store: Store
    config: Config

    @classmethod
    def from_state(cls, state: dict[str, Any], *, host: str, conn: libvirt.virConnect, store: Store,
                   config: Config) -> "StepContext":
        plan = Plan.from_dict(state["plan"]) if state.get("plan") else None
        return cls(RevertRequest.from_dict(state["request"]), plan, Done(**state.get("done", {})),
                   host, conn, store, config)

    def to_state(self) -> dict[str, Any]:
        return {"request": self.request.to_dict(), "plan": self.plan.to_dict() if self.plan else None,
                "done": dataclasses.asdict(self.done)}

    @property
    def where(self) -> str:
        return f"domain '{self.request.domain}', snapshot '{self.request.snapshot}'"

    def domain(self) -> libvirt.virDomain:
        assert self.plan is not None
        return self.conn.lookupByUUIDString(self.plan.domain_uuid)


def validate(ctx: StepContext) -> Outcome:
    dom = conns.lookup_domain(ctx.conn, ctx.request.domain)
    snapshot_xml = conns.lookup_snapshot(dom, ctx.request.snapshot).getXMLDesc(
        libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
    snapshot = Snapshot.parse(snapshot_xml)
    facts = probe.domain_facts(dom)
    holder = locks.acquire(ctx.store.redis, facts.uuid, ctx.request.revert_id, ctx.config.lock_ttl)
    if holder is not None:
        raise Refusal(ErrorCode.REVERT_IN_FLIGHT, f"{ctx.where}: domain busy, revert {holder} in flight")
    ctx.done.locked_uuid = facts.uuid
    ctx.done.snapshot_xml = snapshot_xml
    ctx.plan = make_plan(ctx.request, snapshot, facts, probe.host_probe(snapshot, facts, ctx.config))
    plan = ctx.plan
    return Outcome(detail={"kind": plan.kind, "from_state": facts.state, "end_state": str(plan.end_state),
                           "load_memory": plan.load_memory, "disks": [d.target for d in plan.disks],
                           "risks": list(plan.risks)})


def open_memory_image(ctx: StepContext) -> Outcome:
    plan = ctx.plan
    if not plan.load_memory or plan.kind == KIND_INTERNAL:
        return skipped("the target's memory is not loaded" if not plan.load_memory else "internal snapshot")
    try:
        saved_xml = ctx.conn.saveImageGetXMLDesc(plan.memory_file, libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE)
    except libvirt.libvirtError as err:
        raise Refusal(ErrorCode.MEMORY_IMAGE_INVALID,
                      f"{ctx.where}: memory image '{plan.memory_file}' cannot be read by libvirt: "
                      f"{err.get_error_message()}")
    saved = DomainDef.parse(saved_xml)
    target = DomainDef.parse(plan.definition)
    if (saved.uuid, saved.name) != (target.uuid, target.name):
        raise Refusal(ErrorCode.MEMORY_IMAGE_MISMATCH,
                      f"{ctx.where}: memory image '{plan.memory_file}' holds domain '{saved.name}' "
                      f"({saved.uuid}), not '{target.name}' ({target.uuid})")
    ctx.done.restore_xml = with_disk_sources(saved_xml, {d.target: d.overlay for d in plan.disks})
    return Outcome(detail={"memory_file": plan.memory_file, "bytes": os.path.getsize(plan.memory_file)})


def stop(ctx: StepContext) -> Outcome:
    plan = ctx.plan
    dom = ctx.domain()
    detail: dict[str, Any] = {}
    if plan.safety_snapshot:
        # Recorded first: the snapshot's files are this revert's even if taking it fails half-way.
        ctx.done.safety_snapshot = plan.safety_snapshot
        ctx.done.created_files.extend(p for p in plan.safety_paths if p not in ctx.done.created_files)
        detail["safety_snapshot_taken"] = safety.take_safety_snapshot(dom, plan)
    if not plan.persistent:
        ctx.done.transient_snapshots = [
            s.getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
            for s in dom.listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)]
    if dom.isActive():
        dom.destroy()
        ctx.done.stopped = True
        detail["destroyed"] = True
    elif not detail:
        return skipped("domain already shut off and no safety snapshot asked")
    return Outcome(detail=detail)


def recreate_overlays(ctx: StepContext) -> Outcome:
    plan = ctx.plan
    if plan.kind == KIND_INTERNAL:
        return skipped("internal snapshot: libvirt reverts inside the image")
    created = []
    for disk in plan.disks:
        if disk.overlay in ctx.done.created_files and os.path.exists(disk.overlay):
            continue  # created by an earlier delivery of this step
        ctx.done.created_files.append(disk.overlay)
        try:
            overlays.create_overlay(disk)
        except Exception:
            ctx.done.created_files.remove(disk.overlay)
            raise
        created.append(disk.overlay)
    return Outcome(detail={"overlays": created})


def restore(ctx: StepContext) -> Outcome:
    plan = ctx.plan
    try:
        dom = ctx.domain()
        if dom.isActive():
            return skipped("domain already active: restored by an earlier delivery")
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
    restoring.restore(ctx.conn, plan, restore_xml=ctx.done.restore_xml, allow_respawn=ctx.request.allow_respawn,
                      snapshot_xml=ctx.done.snapshot_xml, transient_snapshots=ctx.done.transient_snapshots)
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
    ctx.store.publish_events(events)
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
