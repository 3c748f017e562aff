"""Every refusal and decision of `workers.plan`, as tables over fixtures and a probe: no daemon."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tasks.errors import ErrorCode, Refusal
from tasks.model import EndState, RevertRequest
from workers.plan import (
    OVERLAY_ESTIMATE, SAVE_IMAGE, DirFacts, DomainFacts, FileFacts, HostProbe, Plan, lifecycle_events, plan,
)
from workers.snapshot_xml import DomainDef, Snapshot

DATA = Path(__file__).parent.parent / "data"
GiB = 1024 ** 3


def snapshot(name: str) -> Snapshot:
    return Snapshot.parse((DATA / "snapshots" / f"{name}.xml").read_text())


def domain(**changes) -> DomainFacts:
    facts = DomainFacts(name="web1", uuid="4b1f2a3c-1111-2222-3333-444455556666", state="running", active=True,
                        persistent=True, definition=DomainDef.parse((DATA / "domain-web1.xml").read_text()))
    return dataclasses.replace(facts, **changes)


def good_files() -> dict[str, FileFacts]:
    files = {}
    for path, kind in [("/images/web1.base.qcow2", "qcow2"), ("/images/web1.s1.mem", SAVE_IMAGE),
                       ("/images/web1.nd1.mem", SAVE_IMAGE), ("/images/web1.s1.qcow2", "qcow2")]:
        files[path] = FileFacts(path, True, True, kind, path)
    return files


def probe(files: dict | None = None, free: int = 10 * GiB, roots=("/images",)) -> HostProbe:
    return HostProbe(storage_roots=roots, files=good_files() if files is None else files,
                     dirs={"/images": DirFacts("/images", "/images", 42, free)}, space_reserve=64 * 2 ** 20)


def request(**changes) -> RevertRequest:
    return dataclasses.replace(RevertRequest("web1", "s1", "hv1", revert_id="abc123"), **changes)


def test_memory_snapshot_of_running_domain_plans_a_respawn():
    p = plan(request(allow_respawn=True), snapshot("running-memory"), domain(), probe())
    assert p.kind == "external" and p.end_state is EndState.RUNNING and p.load_memory and not p.cold_boot
    assert p.memory_file == "/images/web1.s1.mem"
    assert [(d.target, d.backing, d.backing_format, d.overlay) for d in p.disks] == [
        ("vda", "/images/web1.base.qcow2", "qcow2", "/images/web1.s1.abc123.qcow2")]
    assert p.safety_snapshot == "virt-revert-pre-abc123"
    assert p.safety_overlays == (("vda", "/images/web1.vda.virt-revert-pre-abc123.qcow2"),)
    assert p.safety_skipped == ("hdc",)
    assert p.safety_memory_file is None
    assert p.events == (("stopped", "from-snapshot"), ("started", "from-snapshot"),
                        ("resumed", "from-snapshot"), ("defined", "from-snapshot"))


def test_plan_round_trips_through_json_dict():
    p = plan(request(allow_respawn=True, safety_memory=True), snapshot("running-memory"), domain(), probe())
    assert Plan.from_dict(p.to_dict()) == p
    assert p.safety_memory_file == "/images/web1.virt-revert-pre-abc123.mem"


@pytest.mark.parametrize("snap, flag, expected", [
    ("running-memory", None, EndState.RUNNING),
    ("paused-memory", None, EndState.PAUSED),
    ("disk-only", None, EndState.SHUTOFF),
    ("offline", None, EndState.SHUTOFF),
    ("running-memory", "paused", EndState.PAUSED),
    ("running-memory", "stopped", EndState.SHUTOFF),
    ("paused-memory", "running", EndState.RUNNING),
])
def test_end_state(snap, flag, expected):
    p = plan(request(end_state=flag, allow_respawn=True), snapshot(snap), domain(), probe())
    assert p.end_state is expected
    assert p.load_memory is (expected is not EndState.SHUTOFF)


def test_stopped_end_state_needs_no_respawn_and_no_memory_file():
    files = good_files()
    del files["/images/web1.s1.mem"]
    p = plan(request(end_state="stopped"), snapshot("running-memory"), domain(), probe(files))
    assert not p.load_memory and p.memory_file is None
    assert p.events == (("stopped", "from-snapshot"), ("defined", "from-snapshot"))


def test_cold_boot_of_disk_only_snapshot():
    p = plan(request(end_state="running", cold_boot=True), snapshot("disk-only"), domain(), probe())
    assert p.cold_boot and not p.load_memory and p.end_state is EndState.RUNNING


def test_shut_off_domain_reverting_to_offline_snapshot():
    p = plan(request(snapshot="o1"), snapshot("offline"), domain(active=False, state="shutoff"), probe())
    assert p.events == (("defined", "from-snapshot"),)
    assert not p.was_active


def test_force_uses_current_definition_when_snapshot_has_none():
    p = plan(request(snapshot="nd1", force=True, allow_respawn=True), snapshot("no-domain"), domain(), probe())
    assert p.definition == domain().definition.xml
    assert p.disks[0].backing == "/images/web1.s1.qcow2"


def test_internal_snapshot_goes_to_libvirt():
    p = plan(request(snapshot="i1", allow_respawn=True), snapshot("internal"), domain(), probe())
    assert p.kind == "internal" and p.disks == () and p.safety_overlays == ()
    assert p.safety_snapshot == "virt-revert-pre-abc123"


def _files_without(path):
    files = good_files()
    del files[path]
    return files


def _files_with(path, **changes):
    files = good_files()
    files[path] = dataclasses.replace(files[path], **changes)
    return files


REFUSALS = [
    # (id, request changes, snapshot fixture, domain changes, probe, code)
    ("risky", {}, "running-memory", {}, probe(), ErrorCode.REVERT_RISKY),
    ("no memory state", {"end_state": "running"}, "disk-only", {}, probe(), ErrorCode.MEMORY_STATE_MISSING),
    ("no memory state, paused", {"end_state": "paused"}, "offline", {}, probe(), ErrorCode.MEMORY_STATE_MISSING),
    ("memory file missing", {"allow_respawn": True}, "running-memory", {},
     probe(_files_without("/images/web1.s1.mem")), ErrorCode.MEMORY_IMAGE_MISSING),
    ("memory file unreadable", {"allow_respawn": True}, "running-memory", {},
     probe(_files_with("/images/web1.s1.mem", readable=False)), ErrorCode.MEMORY_IMAGE_UNREADABLE),
    ("memory file not a save image", {"allow_respawn": True}, "running-memory", {},
     probe(_files_with("/images/web1.s1.mem", kind="raw")), ErrorCode.MEMORY_IMAGE_INVALID),
    ("no <domain>", {"allow_respawn": True}, "no-domain", {}, probe(), ErrorCode.SNAPSHOT_NO_DOMAIN),
    ("backing missing", {"allow_respawn": True}, "running-memory", {},
     probe(_files_without("/images/web1.base.qcow2")), ErrorCode.BACKING_MISSING),
    ("backing unreadable", {"allow_respawn": True}, "running-memory", {},
     probe(_files_with("/images/web1.base.qcow2", readable=False)), ErrorCode.BACKING_UNREADABLE),
    ("backing chain broken", {"allow_respawn": True}, "running-memory", {},
     probe(_files_with("/images/web1.base.qcow2", chain_missing="/images/gone.qcow2")), ErrorCode.BACKING_MISSING),
    ("outside roots", {"allow_respawn": True}, "running-memory", {},
     probe(roots=("/srv/vms",)), ErrorCode.FILE_OUTSIDE_ROOTS),
    ("chain outside roots", {"allow_respawn": True}, "running-memory", {},
     probe(_files_with("/images/web1.base.qcow2", chain=("/etc/base.img",))), ErrorCode.FILE_OUTSIDE_ROOTS),
    ("no space", {"allow_respawn": True}, "running-memory", {}, probe(free=2 * OVERLAY_ESTIMATE),
     ErrorCode.INSUFFICIENT_SPACE),
    ("block job", {"allow_respawn": True}, "running-memory", {"block_jobs": ("vda",)}, probe(),
     ErrorCode.BLOCK_JOB_RUNNING),
    ("mixed", {"allow_respawn": True}, "mixed", {}, probe(), ErrorCode.SNAPSHOT_MIXED),
    ("transient to inactive", {}, "disk-only", {"persistent": False}, probe(), ErrorCode.TRANSIENT_INACTIVE),
    ("transient stopped", {"end_state": "stopped"}, "running-memory", {"persistent": False}, probe(),
     ErrorCode.TRANSIENT_INACTIVE),
]


@pytest.mark.parametrize("changes, snap, dom_changes, host, code", [r[1:] for r in REFUSALS],
                         ids=[r[0] for r in REFUSALS])
def test_refusals(changes, snap, dom_changes, host, code):
    with pytest.raises(Refusal) as caught:
        plan(request(**changes), snapshot(snap), domain(**dom_changes), host)
    assert caught.value.code is code
    assert "web1" in caught.value.message  # every refusal names the domain
    assert caught.value.hint


def test_safety_memory_counts_guest_memory_against_free_space():
    need = 2 * OVERLAY_ESTIMATE + 64 * 2 ** 20 + 32 * 2 ** 20  # overlays + reserve + half the guest's 64 MiB
    plan(request(allow_respawn=True), snapshot("running-memory"), domain(), probe(free=need))
    with pytest.raises(Refusal) as caught:
        plan(request(allow_respawn=True, safety_memory=True), snapshot("running-memory"), domain(), probe(free=need))
    assert caught.value.code is ErrorCode.INSUFFICIENT_SPACE


@pytest.mark.parametrize("active, end, persistent, expected", [
    (True, EndState.RUNNING, True, ["stopped", "started", "resumed", "defined"]),
    (True, EndState.PAUSED, True, ["stopped", "started", "suspended", "defined"]),
    (False, EndState.RUNNING, False, ["started", "resumed"]),
    (True, EndState.SHUTOFF, True, ["stopped", "defined"]),
    (False, EndState.SHUTOFF, True, ["defined"]),
])
def test_lifecycle_events_in_libvirt_order(active, end, persistent, expected):
    events = lifecycle_events(active, end, persistent)
    assert [e for e, _ in events] == expected
    assert {d for _, d in events} == {"from-snapshot"}
