"""Benchmark: a batch of N reverts over H hosts against the ideal for the parallelism allowed.

    python bench/batch_bench.py [--hosts 3] [--per-host 4] [--max-per-host 2] [--virt-type qemu|kvm] [--json]

One run starts its own stack (Redis, H libvirtd hosts in mount namespaces, one
worker each), gives every host `per-host` counter guests with a memory
snapshot, then:
  1. reverts every guest alone, one after the other: the single-revert times
     (from the API call to the record's end), summed to S;
  2. reverts them all as one batch with `--max-per-host`: wall time W.
The ideal is S / P with P = min(max-per-host x H, N), the parallelism the
limits allow; efficiency = ideal / W (goal >= 0.8).  It also prints the
dispatch overhead per revert: the time from a revert's first step starting
to its last step ending, less the steps' own durations (the Celery hops),
and the wait between its request and its first step.

TCG guests by default: under nested KVM each first boot takes ~10 s.  With 2
cores, P concurrent reverts also share the CPU: read efficiency with that
in mind (the table prints the core count).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from devstack import guest as counter_guest  # noqa: E402
from devstack.hosts import LibvirtHost, fix_kvm_permissions, open_connection  # noqa: E402
from devstack.redis import RedisServer  # noqa: E402
from devstack.workers import WorkerProcess, env_for  # noqa: E402
from tasks import api  # noqa: E402
from tasks.config import Config  # noqa: E402

SNAPSHOT = "golden"
GOAL = 0.8


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def make_guest(conn, images: Path, name: str, vtype: str) -> None:
    base = counter_guest.build_disk(images / f"{name}.base.qcow2")
    dom = conn.defineXML(counter_guest.domain_xml(name, base, virt_type=vtype))
    dom.create()
    counter_guest.wait_for_counter(dom, 1, timeout=120)
    overlay, mem = images / f"{name}.{SNAPSHOT}.qcow2", images / f"{name}.{SNAPSHOT}.mem"
    dom.snapshotCreateXML(f"<domainsnapshot><name>{SNAPSHOT}</name><memory snapshot='external' file='{mem}'/>"
                          f"<disks><disk name='vda' snapshot='external'><source file='{overlay}'/></disk></disks>"
                          f"</domainsnapshot>", 0)


def overheads(record: dict) -> tuple[float, float]:
    """(hops, queue) in ms: time between the steps, and from the request to the first step."""
    steps = record["steps"]
    from datetime import datetime

    def ts(value: str) -> float:
        return datetime.fromisoformat(value).timestamp()

    span = ts(steps[-1]["finished"]) - ts(steps[0]["started"])
    inside = sum(s["duration_ms"] or 0 for s in steps) / 1000
    return (span - inside) * 1000, (ts(steps[0]["started"]) - ts(record["requested"])) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--per-host", type=int, default=4)
    parser.add_argument("--max-per-host", type=int, default=2)
    parser.add_argument("--virt-type", choices=("qemu", "kvm"), default="qemu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    fix_kvm_permissions()
    root = Path(tempfile.mkdtemp(prefix="virt-revert-bbench-", dir="/var/tmp"))
    root.chmod(0o755)
    started: list = []
    try:
        redis = RedisServer().start()
        started.append(redis)
        config = Config(broker_url=redis.url, state_dir=str(root / "state"), heartbeat_interval=1, heartbeat_ttl=5)
        cluster = api.Cluster(config)
        names: dict[str, list[str]] = {}
        for h in range(args.hosts):
            host = f"bh{h}"
            libvirt_host = LibvirtHost(host, root / host).start()
            started.append(libvirt_host)
            env = env_for(dataclasses.replace(config, storage_roots=(str(libvirt_host.images_dir),),
                                              state_dir=str(root / host / "state")))
            worker = WorkerProcess(host, libvirt_host.uri, env, concurrency=4, log_path=root / f"worker-{host}.log")
            started.append(worker.start())
            conn = open_connection(libvirt_host.uri)
            names[host] = [f"vrbb-{host}-{n}-{os.getpid()}" for n in range(args.per_host)]
            for name in names[host]:
                make_guest(conn, libvirt_host.images_dir, name, args.virt_type)
            conn.close()
            log(f"host {host}: {args.per_host} guests with snapshot '{SNAPSHOT}'")
        for host, domains in names.items():
            wait_until(lambda: {r["name"] for r in cluster.inventory(host)} >= set(domains), 30, "inventory")

        flags = {"allow_respawn": True}
        singles = []
        for host, domains in names.items():
            for name in domains:
                t0 = time.monotonic()
                record = api.revert(name, SNAPSHOT, host, cluster=cluster, **flags).wait(300)
                assert record["state"] == "succeeded", record["error"]
                singles.append(time.monotonic() - t0)
        log(f"single reverts: {len(singles)}, sum {sum(singles):.2f} s")

        n = len(singles)
        parallelism = min(args.max_per_host * args.hosts, n)
        t0 = time.monotonic()
        batch = api.revert_batch(SNAPSHOT, ["vrbb-*"], max_per_host=args.max_per_host, cluster=cluster, **flags)
        result = batch.wait(600)
        wall = time.monotonic() - t0
        states = [i["state"] for i in result["items"]]
        assert states.count("succeeded") == n, result["counts"]
        hops, queues = zip(*(overheads(cluster.store.record(i["revert_id"]).to_dict()) for i in result["items"]))
        ideal = sum(singles) / parallelism
        report = {
            "hosts": args.hosts, "reverts": n, "max_per_host": args.max_per_host, "parallelism": parallelism,
            "virt_type": args.virt_type, "cores": os.cpu_count(),
            "single_median_s": round(statistics.median(singles), 3), "single_sum_s": round(sum(singles), 3),
            "batch_wall_s": round(wall, 3), "ideal_s": round(ideal, 3), "efficiency": round(ideal / wall, 3),
            "hops_ms_median": round(statistics.median(hops), 1),
            "queue_wait_ms_median": round(statistics.median(queues), 1),
        }
        if args.json:
            print(json.dumps(report))
            return
        print(f"virt-revert batch benchmark: {n} reverts over {args.hosts} hosts, max {args.max_per_host} per host "
              f"({args.virt_type}, {os.cpu_count()} cores)")
        for key, value in report.items():
            print(f"  {key:<22} {value}")
        print(f"efficiency ideal/wall = {report['efficiency']:.3f}  (goal >= {GOAL}: "
              f"{'met' if report['efficiency'] >= GOAL else 'NOT met'})")
    finally:
        for thing in reversed(started):
            thing.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
