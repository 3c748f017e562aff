"""`virt-revert`: a virsh-like command line over the Python API.

Exit statuses are stable (:class:`ExitStatus`); `--json` prints exactly one
object (the revert record) on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
from enum import IntEnum, unique
from typing import Any, Sequence, TextIO

from tasks import api
from tasks.model import RevertState


@unique
class ExitStatus(IntEnum):
    """Only ever added to: scripts depend on these."""

    SUCCESS = 0
    FAILURE = 1
    REFUSED = 2
    PARTIAL = 3
    INTERRUPTED = 130


EXIT_FOR_STATE = {
    RevertState.SUCCEEDED: ExitStatus.SUCCESS,
    RevertState.REFUSED: ExitStatus.REFUSED,
    RevertState.FAILED: ExitStatus.FAILURE,
    RevertState.PENDING: ExitStatus.SUCCESS,
    RevertState.RUNNING: ExitStatus.SUCCESS,
}


def add_revert_flags(p: argparse.ArgumentParser) -> None:
    state = p.add_mutually_exclusive_group()
    for flag in api.END_STATES:
        state.add_argument(f"--{flag}", dest="end_state", action="store_const", const=flag,
                           help=f"end {flag} whatever the snapshot's state")
    p.add_argument("--allow-respawn", action="store_true", help="allow replacing a running QEMU process")
    p.add_argument("--force", action="store_true",
                   help="use the domain's current definition when the snapshot has none")
    p.add_argument("--cold-boot", action="store_true", help="boot the reverted disks when there is no memory image")
    p.add_argument("--no-safety-snapshot", dest="safety_snapshot", action="store_false",
                   help="do not snapshot the pre-revert state first")
    p.add_argument("--safety-memory", action="store_true", help="include memory in the safety snapshot")


def revert_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {"end_state": args.end_state, "allow_respawn": args.allow_respawn, "force": args.force,
            "cold_boot": args.cold_boot, "safety_snapshot": args.safety_snapshot,
            "safety_memory": args.safety_memory}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="virt-revert", description="Revert libvirt domains to external snapshots.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("revert", help="revert one domain to a snapshot")
    r.add_argument("domain", help="domain name or UUID")
    r.add_argument("snapshot", help="snapshot name, or 'current'")
    r.add_argument("--host", help="host running the domain (default: the live host whose inventory has it)")
    add_revert_flags(r)
    r.add_argument("--no-wait", dest="wait", action="store_false", help="print the revert id and return")
    r.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
    r.add_argument("--json", action="store_true", help="print the revert record as JSON")

    b = sub.add_parser("batch", help="revert many domains across the cluster to one snapshot")
    b.add_argument("patterns", nargs="*", metavar="DOMAIN_GLOB", help="domains to revert (shell globs)")
    b.add_argument("--snapshot", help="the snapshot every domain goes back to")
    b.add_argument("--from-file", metavar="F", help="domain names, one per line ('-' for stdin)")
    b.add_argument("--hosts", default="", help="only these hosts, comma-separated")
    b.add_argument("--max-per-host", type=int, default=0, metavar="N", help="reverts at once per host (0: all)")
    b.add_argument("--max-total", type=int, default=0, metavar="N", help="reverts at once in all (0: all)")
    b.add_argument("--stop-on-error", action="store_true", help="start nothing more after a failure or refusal")
    b.add_argument("--dry-run", action="store_true", help="validate every item on its host, change nothing")
    b.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    b.add_argument("--attach", metavar="BATCH_ID", help="follow a batch already running")
    b.add_argument("--json", action="store_true")
    add_revert_flags(b)

    c = sub.add_parser("cancel", help="start nothing more of a batch (reverts in flight finish)")
    c.add_argument("batch_id")

    s = sub.add_parser("status", help="show a revert's or a batch's record")
    s.add_argument("revert_id")
    s.add_argument("--json", action="store_true")

    h = sub.add_parser("hosts", help="list hosts with a live worker")
    h.add_argument("--json", action="store_true")

    ls = sub.add_parser("ls", help="list the domains of the live hosts, from the inventory")
    ls.add_argument("--host", help="only this host")
    ls.add_argument("--snapshot", help="only domains that have this snapshot")
    ls.add_argument("--json", action="store_true")

    rc = sub.add_parser("recover", help="settle a host's interrupted reverts now (the worker does it at start)")
    rc.add_argument("--host")
    rc.add_argument("--stale-after", type=float, default=None,
                    help="leave alone reverts whose journal moved in the last N seconds (default: host setting)")
    rc.add_argument("--json", action="store_true")

    pr = sub.add_parser("prune", help="remove kept pre-revert state nothing uses any more")
    pr.add_argument("domain")
    pr.add_argument("--host")
    pr.add_argument("--keep", type=int, default=1, help="keep the newest N safety snapshots (default 1)")
    pr.add_argument("--older-than", type=parse_age, default=0.0, metavar="AGE",
                    help="only those older than AGE: 90s, 30m, 12h, 7d")
    pr.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")
    pr.add_argument("--json", action="store_true")

    w = sub.add_parser("worker", help="run the worker of one host (needs the [worker] extra)")
    w.add_argument("--host", required=True, help="this host's name; the worker consumes queue host.NAME")
    w.add_argument("--uri", default="qemu:///system", help="libvirt URI of this host's libvirtd")
    w.add_argument("--concurrency", type=int, default=4, help="steps run at once (threads)")
    w.add_argument("--loglevel", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED


def cmd_revert(args: argparse.Namespace) -> ExitStatus:
    handle = api.revert(args.domain, args.snapshot, args.host, **revert_flags(args))
    if not args.wait:
        record = handle.record()
        print(json.dumps(record) if args.json else handle.id)
        return EXIT_FOR_STATE[RevertState(record["state"])]
    out = None if args.json else sys.stdout
    record = None
    try:
        printed: set[str] = set()
        for current in handle.follow(args.timeout):
            record = current.to_dict()
            if out is not None:
                _print_progress(record, printed, out)
    except KeyboardInterrupt:
        print(f"\nrevert {handle.id} goes on; follow it with `virt-revert status {handle.id}`", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    record = record or handle.record()
    if not RevertState(record["state"]).finished:
        print(f"revert {handle.id} not finished after {args.timeout} s; "
              f"follow it with `virt-revert status {handle.id}`", file=sys.stderr)
        return ExitStatus.FAILURE
    if args.json:
        print(json.dumps(record))
    else:
        _print_outcome(record, sys.stdout)
    return EXIT_FOR_STATE[RevertState(record["state"])]


def cmd_status(args: argparse.Namespace) -> ExitStatus:
    batch = api.BatchHandle(args.revert_id).record()
    if batch is not None:
        print(json.dumps(batch) if args.json else _batch_summary(batch))
        return _batch_exit(batch)
    record = api.status(args.revert_id)
    if record is None:
        print(f"error: no revert '{args.revert_id}' is recorded (records are kept for a week)", file=sys.stderr)
        return ExitStatus.FAILURE
    if args.json:
        print(json.dumps(record))
    else:
        printed: set[str] = set()
        _print_progress(record, printed, sys.stdout)
        _print_outcome(record, sys.stdout)
    return EXIT_FOR_STATE[RevertState(record["state"])]


def cmd_hosts(args: argparse.Namespace) -> ExitStatus:
    live = api.default_cluster().store.live_hosts()
    if args.json:
        print(json.dumps(live))
        return ExitStatus.SUCCESS
    print(f" {'Host':<16} {'libvirt':<9} {'QEMU':<9} {'Domains':>7}  URI")
    print("-" * 72)
    for name, info in sorted(live.items()):
        print(f" {name:<16} {info.get('libvirt_version', '?'):<9} {info.get('qemu_version', '?'):<9} "
              f"{len(info.get('domains', ())):>7}  {info.get('uri')}")
    return ExitStatus.SUCCESS


def cmd_ls(args: argparse.Namespace) -> ExitStatus:
    rows = api.default_cluster().inventory(args.host, args.snapshot)
    if args.json:
        print(json.dumps(rows))
        return ExitStatus.SUCCESS
    print(f" {'Host':<14} {'Domain':<24} {'State':<10} Snapshots (kind/state, * current)")
    print("-" * 90)
    for row in rows:
        snaps = ", ".join(f"{s['name']}{'*' if s['current'] else ''} ({s['kind']}/{s['state']})"
                          for s in row["snapshots"] if not args.snapshot or s["name"] == args.snapshot)
        print(f" {row['host']:<14} {row['name']:<24} {row['state'] or '?':<10} {snaps or '-'}")
    return ExitStatus.SUCCESS


def cmd_batch(args: argparse.Namespace) -> ExitStatus:
    if args.attach:
        return _follow_batch(api.BatchHandle(args.attach), args.json)
    if not args.snapshot:
        print("error: --snapshot is required (or --attach BATCH_ID)", file=sys.stderr)
        return ExitStatus.REFUSED
    names = _read_names(args.from_file) if args.from_file else []
    hosts = [h for h in args.hosts.split(",") if h]
    if not args.patterns and not names:
        print("error: name the domains: DOMAIN_GLOB ... or --from-file F", file=sys.stderr)
        return ExitStatus.REFUSED
    flags = revert_flags(args)
    if args.dry_run:
        rows = api.plan_batch(args.snapshot, args.patterns, names, hosts, **flags)
        print(json.dumps(rows) if args.json else _plan_table(rows))
        return ExitStatus.REFUSED if rows and all(r["refusal"] for r in rows) else ExitStatus.SUCCESS
    items = api.select_batch(args.snapshot, args.patterns, names, hosts)
    if not items:
        print("error: no domain of the live inventory matches", file=sys.stderr)
        return ExitStatus.REFUSED
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: refusing to revert {len(items)} domain(s) without --yes when not on a terminal",
                  file=sys.stderr)
            return ExitStatus.REFUSED
        answer = input(f"Revert {len(items)} domain(s) on {len({i.host for i in items if i.host})} host(s) "
                       f"to '{args.snapshot}'? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return ExitStatus.REFUSED
    handle = api.revert_batch(args.snapshot, args.patterns, names, hosts, max_per_host=args.max_per_host,
                              max_total=args.max_total, stop_on_error=args.stop_on_error, **flags)
    if not args.json:
        print(f"batch {handle.id}: {len(items)} domain(s) to '{args.snapshot}' "
              f"(follow again with `virt-revert batch --attach {handle.id}`)", file=sys.stderr)
    return _follow_batch(handle, args.json)


def cmd_cancel(args: argparse.Namespace) -> ExitStatus:
    handle = api.BatchHandle(args.batch_id)
    if handle.record() is None:
        print(f"error: no batch '{args.batch_id}' is recorded", file=sys.stderr)
        return ExitStatus.FAILURE
    handle.cancel()
    print(f"batch {args.batch_id} cancelled: nothing more starts; reverts in flight finish or roll back")
    return ExitStatus.SUCCESS


def _read_names(path: str) -> list[str]:
    text = sys.stdin.read() if path == "-" else open(path).read()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _follow_batch(handle: "api.BatchHandle", as_json: bool) -> ExitStatus:
    record = None
    tty = sys.stderr.isatty()
    last = None
    try:
        for record in handle.follow():
            if record is None:
                print(f"error: no batch '{handle.id}' is recorded", file=sys.stderr)
                return ExitStatus.FAILURE
            line = _progress_line(record)
            if line != last and not as_json:
                print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
                last = line
    except KeyboardInterrupt:
        print(f"\nbatch {handle.id} goes on; `virt-revert batch --attach {handle.id}`", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    if tty and not as_json:
        print(file=sys.stderr)
    print(json.dumps(record) if as_json else _batch_summary(record))
    return _batch_exit(record)


def _progress_line(record: dict[str, Any], width: int = 24) -> str:
    total = len(record["items"])
    done = sum(record["counts"].get(s, 0) for s in ("succeeded", "failed", "refused", "not-started"))
    bar = "#" * (width * done // total if total else width)
    hosts = "  ".join(f"{host} ok {c.get('succeeded', 0)} fail {c.get('failed', 0) + c.get('refused', 0)} "
                      f"run {c.get('running', 0)} wait {c.get('pending', 0)}"
                      for host, c in sorted(record["hosts"].items()))
    return f"[{bar:<{width}}] {done}/{total}  {hosts}"


def _batch_summary(record: dict[str, Any]) -> str:
    lines = [f" {'Domain':<24} {'Host':<12} {'State':<12} {'End state':<10} Error", "-" * 90]
    for item in record["items"]:
        error = item["error"]
        lines.append(f" {item['domain']:<24} {item['host'] or '-':<12} {item['state']:<12} "
                     f"{item['end_state'] or '-':<10} {error['code'] + ': ' + error['message'] if error else ''}")
    counts = ", ".join(f"{n} {state}" for state, n in record["counts"].items())
    lines.append(f"batch {record['batch_id']} to '{record['snapshot']}': {counts}"
                 + (f" ({record['halted']})" if record["halted"] else ""))
    return "\n".join(lines)


def _plan_table(rows: list[dict[str, Any]]) -> str:
    lines = [f" {'Domain':<24} {'Host':<12} {'Now':<9} {'End':<9} Risks / refusal", "-" * 90]
    for row in rows:
        if row["refusal"]:
            note = f"REFUSED {row['refusal']['code']}: {row['refusal']['message']}"
            lines.append(f" {row['domain']:<24} {row['host'] or '-':<12} {'-':<9} {'-':<9} {note}")
        else:
            note = "; ".join(row["risks"] + [f"{row['free_bytes'] // 2**20} MiB free"])
            lines.append(f" {row['domain']:<24} {row['host']:<12} {row['current_state']:<9} "
                         f"{row['end_state']:<9} {note}")
    refused = sum(1 for r in rows if r["refusal"])
    lines.append(f"dry run: {len(rows) - refused} would be reverted, {refused} refused; nothing was changed")
    return "\n".join(lines)


def _batch_exit(record: dict[str, Any]) -> ExitStatus:
    if not record["finished"]:
        return ExitStatus.SUCCESS
    states = [i["state"] for i in record["items"]]
    if all(s == "succeeded" for s in states):
        return ExitStatus.SUCCESS
    if all(s in ("refused", "not-started") for s in states):
        return ExitStatus.REFUSED
    return ExitStatus.PARTIAL


def cmd_recover(args: argparse.Namespace) -> ExitStatus:
    reports = api.recover(args.host, stale_after=args.stale_after)
    if args.json:
        print(json.dumps(reports))
        return ExitStatus.SUCCESS
    if not reports:
        print("nothing to recover")
    for report in reports:
        print(f"revert {report['revert_id']}: {report['outcome']}"
              + (f" (interrupted in {report['interrupted_step']})" if report.get("interrupted_step") else ""))
        for action in report.get("actions", []):
            print(f"  - {action}")
    return ExitStatus.SUCCESS


def cmd_prune(args: argparse.Namespace) -> ExitStatus:
    report = api.prune(args.domain, args.host, keep=args.keep, older_than=args.older_than, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report))
        return ExitStatus.SUCCESS
    verb = "would drop" if report["dry_run"] else "dropped"
    print(f"{verb} {len(report['snapshots'])} safety snapshot(s) of '{report['domain']}': "
          f"{', '.join(report['snapshots']) or '-'}")
    for path in report["files"]:
        print(f"  {'would delete' if report['dry_run'] else 'deleted'} {path}")
    for path, why in report["kept"].items():
        print(f"  kept {path}: {why}")
    return ExitStatus.SUCCESS


def parse_age(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = text.strip()
    try:
        return float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an age like 90s, 30m, 12h or 7d") from None


def cmd_worker(args: argparse.Namespace) -> ExitStatus:
    try:
        from workers.worker import main as worker_main
    except ImportError as err:
        print(f"error: the worker needs libvirt-python ({err}); install virt-revert[worker]", file=sys.stderr)
        return ExitStatus.FAILURE
    worker_main(args.host, args.uri, args.concurrency, args.loglevel)
    return ExitStatus.SUCCESS


COMMANDS = {
    "revert": cmd_revert, "batch": cmd_batch, "cancel": cmd_cancel, "status": cmd_status, "hosts": cmd_hosts,
    "ls": cmd_ls, "recover": cmd_recover, "prune": cmd_prune, "worker": cmd_worker,
}


def _print_progress(record: dict[str, Any], printed: set[str], out: TextIO) -> None:
    if "header" not in printed and record["domain"]:
        printed.add("header")
        print(f"Reverting domain '{record['domain']}' to snapshot '{record['snapshot']}' "
              f"on host '{record['host'] or '?'}' (revert {record['revert_id']})", file=out)
    for number, step in enumerate(record["steps"], 1):
        if step["name"] in printed or step["status"] in ("pending", "started"):
            continue
        printed.add(step["name"])
        took = f"{step['duration_ms']:9.1f} ms" if step["duration_ms"] is not None else ""
        note = step["detail"].get("reason", "") if step["status"] == "skipped" else ""
        print(f" [{number}/{len(record['steps'])}] {step['name']:<18} {step['status']:<9} {took}  {note}".rstrip(),
              file=out)
    out.flush()


def _print_outcome(record: dict[str, Any], out: TextIO) -> None:
    state = record["state"]
    if state == "succeeded":
        print(f"Domain '{record['domain']}' reverted to '{record['snapshot']}': now {record['end_state']}.", file=out)
        if record["safety_snapshot"]:
            print(f"Pre-revert state kept as snapshot '{record['safety_snapshot']}'.", file=out)
    elif record["error"]:
        error = record["error"]
        print(f"error: {state}: {error['code']}: {error['message']}", file=out)
        if error.get("hint"):
            print(f"hint: {error['hint']}", file=out)
    else:
        print(f"revert {record['revert_id']} is {state}", file=out)


if __name__ == "__main__":
    sys.exit(main())
