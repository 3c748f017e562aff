"""Folding a revert's progress log into its record."""
from __future__ import annotations

from tasks.model import (
    STEPS, RevertRequest, RevertState, StepStatus, finished_entry, fold, requested_entry, step_entry,
)


def test_fold_follows_the_log():
    req = RevertRequest("web1", "s1", "hv1", revert_id="r1")
    log = [requested_entry(req, 10.0), step_entry("validate", StepStatus.STARTED, 10.5),
           step_entry("validate", StepStatus.SUCCEEDED, 10.75, kind="external")]
    record = fold("r1", log)
    assert (record.domain, record.snapshot, record.host, record.state) == ("web1", "s1", "hv1", RevertState.RUNNING)
    assert record.step("validate").duration == 0.25
    assert record.step("validate").detail == {"kind": "external"}
    assert record.step("stop").status is StepStatus.PENDING

    log.append(step_entry("open_memory_image", StepStatus.SKIPPED, 11.0, reason="x"))
    log.append(finished_entry(RevertState.SUCCEEDED, 12.0, end_state="running", created_files=["/a"],
                              safety_snapshot="virt-revert-pre-r1"))
    out = fold("r1", log).to_dict()
    assert out["state"] == "succeeded" and out["end_state"] == "running"
    assert out["created_files"] == ["/a"] and out["safety_snapshot"] == "virt-revert-pre-r1"
    assert [s["name"] for s in out["steps"]] == list(STEPS)
    assert out["steps"][1]["status"] == "skipped" and out["steps"][1]["started"] == out["steps"][1]["finished"]
    assert out["error"] is None
    assert set(out) >= {"revert_id", "domain", "snapshot", "host", "state", "end_state", "steps", "created_files",
                        "safety_snapshot", "error"}


def test_refused_before_any_step():
    req = RevertRequest("web1", "s1", "")
    record = fold(req.revert_id, [requested_entry(req, 1.0), finished_entry(
        RevertState.REFUSED, 1.0, error={"code": "host-unknown", "message": "m", "hint": "h"})])
    assert record.state is RevertState.REFUSED and record.error["code"] == "host-unknown"


def test_request_round_trip_and_safety_name():
    req = RevertRequest("web1", "s1", "hv1", end_state="paused", allow_respawn=True)
    assert RevertRequest.from_dict(req.to_dict()) == req
    assert req.safety_snapshot_name == f"virt-revert-pre-{req.revert_id}"
    assert len(req.revert_id) == 12
