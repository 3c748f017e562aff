"""Benchmark: a revert through the whole pipeline against the same calls made directly.

    python bench/revert_bench.py [--rounds N] [--virt-type kvm|qemu] [--json]

One run starts its own stack (a throwaway Redis, one libvirtd host in a
mount namespace under a subreaper, one Celery worker with 2 threads), boots
one counter guest, takes ONE external memory+disk snapshot "s1" of it while
it runs, then reverts that same guest to "s1" again and again, alternating:

  pipeline  `tasks.api.revert(..., allow_respawn=True)`, timed from the call
            until the client sees the `resume` step's finished entry (the
            guest is running) and until it sees the record's `finished`;
  direct    the same libvirt and qemu-img calls in this process, with no
            Celery and no Redis (lookup, snapshot XML, save-image XML, safety
            snapshot, destroy, overlay, define, restore paused, redefine
            snapshot current, resume).

Rounds alternate pipeline/direct (ABAB...) to cancel drift; one warm-up
round of each is not counted.  After every round the guest must be running
with its memory counter back near its value at snapshot time.

Goal: pipeline-to-running median <= 1.15 x direct median.
Progress goes to stderr; stdout holds the table (or one JSON object).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import libvirt  # noqa: E402

from devstack import guest as counter_guest  # noqa: E402
from devstack.hosts import LibvirtHost, fix_kvm_permissions, open_connection, virt_type  # noqa: E402
from devstack.redis import RedisServer  # noqa: E402
from devstack.workers import WorkerProcess, env_for  # noqa: E402
from tasks import api  # noqa: E402
from tasks.config import Config  # noqa: E402
from tasks.model import STEPS, RevertState, StepStatus  # noqa: E402
from workers.overlays import create_overlay  # noqa: E402
from workers.plan import KIND_EXTERNAL, DiskPlan, overlay_path  # noqa: E402
from workers.safety import safety_snapshot_xml  # noqa: E402
from workers.snapshot_xml import Snapshot, with_disk_sources  # noqa: E402

HOST = "bench"
SNAPSHOT = "s1"
GOAL = 1.15
# The guest counts PIT ticks at 18.2 Hz; let it run this many ticks past the snapshot before each
# round, so "memory restored" (counter went back) is unambiguous.
TICKS_BEFORE_ROUND = 10

DIRECT_CALLS = (
    "lookupByName",
    "snapshot XML",
    "saveImageGetXMLDesc",
    "safety snapshot",
    "destroy",
    "qemu-img create",
    "defineXML",
    "restoreFlags",
    "redefine current",
    "resume",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


# --- the stack ---------------------------------------------------------------------------------

def wait_for_host(cluster: api.Cluster, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while name not in cluster.store.live_hosts():
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker for host {name} sent no heartbeat in {timeout} s")
        time.sleep(0.1)


# --- the guest -----------------------------------------------------------------------------------

class BenchGuest:
    """The one counter guest every round reverts, and what the snapshot holds."""

    def __init__(self, conn: libvirt.virConnect, images: Path, vtype: str):
        self.conn = conn
        self.images = images
        self.name = f"vrb-{uuid.uuid4().hex[:8]}"
        base = counter_guest.build_disk(images / f"{self.name}.base.qcow2")
        self.dom = conn.defineXML(counter_guest.domain_xml(self.name, base, virt_type=vtype))
        self.uuid = self.dom.UUIDString()
        t0 = time.monotonic()
        self.dom.create()
        counter_guest.wait_for_counter(self.dom, 1, timeout=60)
        self.boot_s = time.monotonic() - t0
        counter_guest.wait_for_counter(self.dom, TICKS_BEFORE_ROUND, timeout=30)
        overlay = images / f"{self.name}.{SNAPSHOT}.qcow2"
        mem = images / f"{self.name}.{SNAPSHOT}.mem"
        xml = (f"<domainsnapshot><name>{SNAPSHOT}</name><memory snapshot='external' file='{mem}'/>"
               f"<disks><disk name='vda' snapshot='external'><driver type='qcow2'/><source file='{overlay}'/>"
               f"</disk></disks></domainsnapshot>")
        # The memory is captured when libvirt pauses the guest at the start of the call.
        self.counter_before_snapshot = counter_guest.read_counter(self.dom)
        self.dom.snapshotCreateXML(xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
        self.counter_after_snapshot = counter_guest.read_counter(self.dom)

    def refresh(self) -> libvirt.virDomain:
        self.dom = self.conn.lookupByUUIDString(self.uuid)
        return self.dom

    def before_round(self) -> int:
        """Let the guest run past the snapshot's counter; return the counter now."""
        dom = self.refresh()
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING, f"guest not running: {dom.state()}"
        return counter_guest.wait_for_counter(dom, self.counter_after_snapshot + TICKS_BEFORE_ROUND, timeout=30)

    def check_after_round(self, counter_before: int, how: str) -> dict:
        dom = self.refresh()
        state = dom.state()[0]
        if state != libvirt.VIR_DOMAIN_RUNNING:
            raise RuntimeError(f"{how}: guest not running after the revert (state {state})")
        counter = counter_guest.read_counter(dom)
        if not (self.counter_before_snapshot <= counter < counter_before):
            raise RuntimeError(f"{how}: memory not restored: counter {counter}, at snapshot "
                               f"{self.counter_before_snapshot}..{self.counter_after_snapshot}, "
                               f"before the revert {counter_before}")
        current = dom.snapshotCurrent().getName()
        if current != SNAPSHOT:
            raise RuntimeError(f"{how}: current snapshot is {current}, not {SNAPSHOT}")
        return {"counter_before": counter_before, "counter_after": counter}


# --- the two ways to revert ------------------------------------------------------------------------

def pipeline_round(cluster: api.Cluster, guest: BenchGuest, timeout: float = 300) -> dict:
    """tasks.api.revert, timed from the call until the client sees `resume` done and `finished`."""
    wall0 = time.time()
    t0 = time.perf_counter()
    handle = api.revert(guest.name, SNAPSHOT, HOST, allow_respawn=True, cluster=cluster)
    t_returned = time.perf_counter()
    t_running = None
    record = None
    for record in handle.follow(timeout):
        if t_running is None and record.step("resume").status is StepStatus.SUCCEEDED:
            t_running = time.perf_counter()
        if record.state.finished:
            break
    t_finished = time.perf_counter()
    if record is None or record.state is not RevertState.SUCCEEDED:
        raise RuntimeError(f"pipeline revert {handle.id}: {record.to_dict() if record else 'no record'}")
    if t_running is None:
        raise RuntimeError(f"pipeline revert {handle.id}: resume step never succeeded")
    steps = {s.name: s for s in record.steps}
    as_dict = record.to_dict()
    # Where the wall time goes, on the worker's clock (same machine): client send, the hop to each
    # step (queue + Celery + the step's own "started" write), each step, and the client noticing.
    gaps = {"client: call -> requested entry": (record.requested - wall0) * 1000,
            "hop: requested -> validate start": (steps["validate"].started - record.requested) * 1000}
    for prev, step in zip(STEPS, STEPS[1:]):
        gaps[f"hop: {prev} -> {step}"] = (steps[step].started - steps[prev].finished) * 1000
    gaps["client sees resume done"] = (wall0 + (t_running - t0) - steps["resume"].finished) * 1000
    gaps["emit_events end -> finished entry"] = (record.finished - steps["emit_events"].finished) * 1000
    outage_ms = (steps["resume"].finished - steps["stop"].started) * 1000
    return {
        "revert_id": handle.id,
        "to_running_ms": (t_running - t0) * 1000,
        "to_finished_ms": (t_finished - t0) * 1000,
        "call_returned_ms": (t_returned - t0) * 1000,
        "steps_ms": {s["name"]: s["duration_ms"] for s in as_dict["steps"]},
        "gaps_ms": gaps,
        "outage_ms": outage_ms,
    }


class Direct:
    """The pipeline's libvirt and qemu-img calls, in order, in one process: no Celery, no Redis."""

    def __init__(self, conn: libvirt.virConnect, guest: BenchGuest):
        self.conn = conn
        self.guest = guest

    def round(self) -> dict:
        conn, name = self.conn, self.guest.name
        revert_id = "d" + uuid.uuid4().hex[:11]
        calls: dict[str, float] = {}
        t0 = time.perf_counter()
        last = t0

        def lap(label: str) -> None:
            nonlocal last
            now = time.perf_counter()
            calls[label] = (now - last) * 1000
            last = now

        dom = conn.lookupByName(name)
        lap("lookupByName")
        snapshot_xml = dom.snapshotLookupByName(SNAPSHOT).getXMLDesc(libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
        snapshot = Snapshot.parse(snapshot_xml)
        definition = snapshot.domain
        vda = definition.disk("vda")
        after = next(d for d in snapshot.disks if d.name == "vda")
        overlay = overlay_path(revert_id, name, "vda", after.source, vda.source)
        lap("snapshot XML")
        saved_xml = conn.saveImageGetXMLDesc(snapshot.memory_file, libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE)
        restore_xml = with_disk_sources(saved_xml, {"vda": overlay})
        lap("saveImageGetXMLDesc")
        safety_name = f"virt-revert-pre-{revert_id}"
        safety = SimpleNamespace(  # the Plan fields workers.safety.safety_snapshot_xml reads
            safety_snapshot=safety_name, domain=name, revert_id=revert_id, snapshot=SNAPSHOT,
            kind=KIND_EXTERNAL, safety_memory_file=None, safety_skipped=(),
            safety_overlays=(("vda", str(self.guest.images / f"{name}.vda.{safety_name}.qcow2")),))
        dom.snapshotCreateXML(safety_snapshot_xml(safety), libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                              | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
        lap("safety snapshot")
        dom.destroy()
        lap("destroy")
        create_overlay(DiskPlan("vda", vda.source, vda.driver_type or "qcow2", overlay))
        lap("qemu-img create")
        conn.defineXML(with_disk_sources(definition.xml, {"vda": overlay}))
        lap("defineXML")
        conn.restoreFlags(snapshot.memory_file, restore_xml, libvirt.VIR_DOMAIN_SAVE_PAUSED)
        lap("restoreFlags")
        dom = conn.lookupByUUIDString(definition.uuid)
        dom.snapshotCreateXML(snapshot_xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
                              | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT)
        lap("redefine current")
        dom.resume()
        lap("resume")
        outage = sum(calls[c] for c in DIRECT_CALLS[DIRECT_CALLS.index("safety snapshot"):])
        return {"revert_id": revert_id, "total_ms": (last - t0) * 1000, "calls_ms": calls, "outage_ms": outage}


# --- the run ---------------------------------------------------------------------------------------

def run(rounds: int, vtype: str) -> dict:
    root = Path(tempfile.mkdtemp(prefix="virt-revert-bench-", dir="/var/tmp"))
    root.chmod(0o755)  # every path component must be searchable by libvirt-qemu
    started = []
    try:
        redis = RedisServer().start()
        started.append(redis)
        host = LibvirtHost(HOST, root / HOST).start()
        started.append(host)
        config = Config(broker_url=redis.url, storage_roots=(str(host.images_dir),),
                        state_dir=str(root / "state"))
        cluster = api.Cluster(config)
        worker = WorkerProcess(HOST, host.uri, env_for(config), concurrency=2,
                               log_path=root / f"worker-{HOST}.log").start()
        started.append(worker)
        conn = open_connection(host.uri)
        try:
            wait_for_host(cluster, HOST)
            log(f"stack up in {root}: redis pid {redis.pid}, host pid {host.pid}, worker pid {worker.pid}")
            guest = BenchGuest(conn, host.images_dir, vtype)
            log(f"guest {guest.name} ({vtype}) booted in {guest.boot_s:.1f} s; snapshot {SNAPSHOT} at counter "
                f"{guest.counter_before_snapshot}..{guest.counter_after_snapshot}")
            direct = Direct(conn, guest)
            facts = machine_facts(conn, vtype, guest)
            pipeline_runs, direct_runs = [], []
            for index in range(rounds + 1):
                counted = index > 0
                for kind in ("pipeline", "direct"):
                    before = guest.before_round()
                    result = pipeline_round(cluster, guest) if kind == "pipeline" else direct.round()
                    result.update(guest.check_after_round(before, kind))
                    total = result["to_running_ms"] if kind == "pipeline" else result["total_ms"]
                    log(f"{'round ' + str(index) if counted else 'warm-up'} {kind:<8} {total:8.1f} ms"
                        + (f" (finished {result['to_finished_ms']:.1f} ms)" if kind == "pipeline" else "")
                        + f"  counter {result['counter_before']} -> {result['counter_after']}")
                    if counted:
                        (pipeline_runs if kind == "pipeline" else direct_runs).append(result)
        finally:
            conn.close()
        return summarize(facts, pipeline_runs, direct_runs)
    finally:
        for thing in reversed(started):
            try:
                thing.stop()
            except Exception as exc:  # keep stopping the rest
                log(f"stopping {thing!r} failed: {exc}")
        shutil.rmtree(root, ignore_errors=True)


def machine_facts(conn: libvirt.virConnect, vtype: str, guest: BenchGuest) -> dict:
    import celery
    import kombu
    import redis as redis_py
    return {
        "virt_type": vtype,
        "libvirt_daemon": version(conn.getLibVersion()),
        "libvirt_python": version(libvirt.getVersion()),
        "qemu": version(conn.getVersion()),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis_py.__version__,
        "guest_memory_mib": 64,
        "guest_first_boot_s": round(guest.boot_s, 1),
        "worker_concurrency": 2,
    }


def summarize(facts: dict, pipeline_runs: list[dict], direct_runs: list[dict]) -> dict:
    to_running = stats([r["to_running_ms"] for r in pipeline_runs])
    to_finished = stats([r["to_finished_ms"] for r in pipeline_runs])
    direct = stats([r["total_ms"] for r in direct_runs])
    ratio = to_running["median"] / direct["median"] if direct["median"] else None
    ratio_finished = to_finished["median"] / direct["median"] if direct["median"] else None
    return {
        "machine": facts,
        "rounds": len(pipeline_runs),
        "pipeline_to_running_ms": to_running,
        "pipeline_to_finished_ms": to_finished,
        "pipeline_call_returned_ms": stats([r["call_returned_ms"] for r in pipeline_runs]),
        "direct_ms": direct,
        # Rounds alternate, so pairing each pipeline round with the direct round after it cancels drift.
        "paired_difference_ms": stats([p["to_running_ms"] - d["total_ms"] for p, d in zip(pipeline_runs, direct_runs)]),
        "pipeline_outage_ms": stats([r["outage_ms"] for r in pipeline_runs]),
        "direct_outage_ms": stats([r["outage_ms"] for r in direct_runs]),
        "ratio_running_over_direct": None if ratio is None else round(ratio, 3),
        "ratio_finished_over_direct": None if ratio_finished is None else round(ratio_finished, 3),
        "goal_ratio": GOAL,
        "goal_met": ratio is not None and ratio <= GOAL,
        "pipeline_steps_ms": {step: stats([r["steps_ms"][step] for r in pipeline_runs
                                           if r["steps_ms"][step] is not None]) for step in STEPS},
        "pipeline_gaps_ms": {gap: stats([r["gaps_ms"][gap] for r in pipeline_runs])
                             for gap in (pipeline_runs[0]["gaps_ms"] if pipeline_runs else {})},
        "direct_calls_ms": {call: stats([r["calls_ms"][call] for r in direct_runs]) for call in DIRECT_CALLS},
        "raw": {"pipeline": pipeline_runs, "direct": direct_runs},
    }


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"virt-revert benchmark: {result['rounds']} rounds each, alternating, after 1 warm-up each",
        f"machine: virt type {m['virt_type']}, libvirt {m['libvirt_daemon']} (python binding "
        f"{m['libvirt_python']}), QEMU {m['qemu']}, {m['cores']} cores, kernel {m['kernel']}, "
        f"Python {m['python']}, celery {m['celery']}, kombu {m['kombu']}, redis-py {m['redis_py']}",
        f"guest: counter boot sector, {m['guest_memory_mib']} MiB, first boot {m['guest_first_boot_s']} s; "
        f"worker: 1 process, {m['worker_concurrency']} threads",
        "",
        f"{'':<42}{'median':>9}{'min':>9}{'max':>9}   ms",
    ]

    def row(label: str, s: dict) -> None:
        lines.append(f"{label:<42}{fmt(s['median']):>9}{fmt(s['min']):>9}{fmt(s['max']):>9}")

    row("pipeline: call -> running (resume seen)", result["pipeline_to_running_ms"])
    row("pipeline: call -> record finished", result["pipeline_to_finished_ms"])
    row("pipeline: call -> revert() returned", result["pipeline_call_returned_ms"])
    row("direct: lookup -> resumed", result["direct_ms"])
    row("pipeline - direct, paired by round", result["paired_difference_ms"])
    row("pipeline: stop step start -> resumed", result["pipeline_outage_ms"])
    row("direct: safety snapshot start -> resumed", result["direct_outage_ms"])
    lines.append(f"ratio pipeline-to-running / direct (median): {result['ratio_running_over_direct']:.3f}  "
                 f"(goal <= {result['goal_ratio']}: {'met' if result['goal_met'] else 'NOT met'}); "
                 f"to finished / direct: {result['ratio_finished_over_direct']:.3f}")
    lines.append("")
    lines.append("pipeline steps (record duration_ms):")
    for step, s in result["pipeline_steps_ms"].items():
        row(f"  {step}", s)
    lines.append(f"  {'sum of step medians':<40}{sum(s['median'] or 0 for s in result['pipeline_steps_ms'].values()):>9.1f}")
    lines.append("pipeline time outside the steps (record timestamps):")
    for gap, s in result["pipeline_gaps_ms"].items():
        row(f"  {gap}", s)
    lines.append("")
    lines.append("direct calls:")
    for call, s in result["direct_calls_ms"].items():
        row(f"  {call}", s)
    lines.append(f"  {'sum of call medians':<40}{sum(s['median'] or 0 for s in result['direct_calls_ms'].values()):>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="counted rounds of each kind (default 7)")
    parser.add_argument("--virt-type", choices=["kvm", "qemu"],
                        help="domain type (default: kvm when QEMU can use /dev/kvm, else qemu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    fix_kvm_permissions()
    vtype = args.virt_type or virt_type()
    result = run(args.rounds, vtype)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
