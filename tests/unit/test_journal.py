"""The host-local journal: append, fold, a torn last line, what counts as unfinished."""
from __future__ import annotations

from workers.journal import OUTCOME_ROLLED_BACK, Journal, unfinished


def test_fold_tracks_intents_claims_and_steps(tmp_path):
    journal = Journal(tmp_path, "r1")
    journal.append("begin", request={"revert_id": "r1"}, plan={"domain_uuid": "u"}, pre={"state": "running"},
                   snapshot_xml="<domainsnapshot/>", lock={"uuid": "u", "owner": "r1"})
    journal.append("step", step="stop", status="started")
    journal.append("intent", action="safety-snapshot", path=None)
    journal.append("done", action="safety-snapshot", path=None)
    journal.append("step", step="stop", status="ended", detail={"destroyed": True})
    journal.append("intent", action="create", path="/i/a.qcow2")  # announced, never claimed: not ours
    journal.append("intent", action="create", path="/i/b.qcow2")
    journal.append("done", action="claim", path="/i/b.qcow2")
    state = journal.state()
    assert state.begun and state.lock == {"uuid": "u", "owner": "r1"}
    assert state.did("safety-snapshot") and not state.restored
    assert state.claimed_files == ["/i/b.qcow2"]
    assert state.starts["stop"] == 1 and state.ended_steps["stop"] == {"destroyed": True}
    assert [j.revert_id for j in unfinished(tmp_path)] == ["r1"]
    assert journal.marker.exists()
    journal.append("end", outcome=OUTCOME_ROLLED_BACK)
    assert journal.state().outcome == OUTCOME_ROLLED_BACK and unfinished(tmp_path) == []
    assert not journal.marker.exists()  # finished journals are no longer scanned


def test_state_applied_entry_by_entry_equals_the_fold(tmp_path):
    journal = Journal(tmp_path, "r4")
    state = journal.state()
    for kind, fields in [("step", {"step": "stop", "status": "started"}), ("intent", {"action": "destroy"}),
                         ("done", {"action": "destroy"}), ("memory", {"restore_xml": "<domain/>"})]:
        state.apply(journal.append(kind, **fields))
    assert state == journal.state()


def test_a_torn_last_line_is_ignored(tmp_path):
    journal = Journal(tmp_path, "r2")
    journal.append("step", step="validate", status="started")
    with open(journal.path, "a") as fh:
        fh.write('{"type": "intent", "act')  # a crash in the middle of a write
    assert journal.state().starts["validate"] == 1
    assert journal.state().intents == []


def test_locked_is_exclusive_and_non_blocking_reports_it(tmp_path):
    import pytest

    journal = Journal(tmp_path, "r3")
    with journal.locked():
        with pytest.raises(BlockingIOError):
            with Journal(tmp_path, "r3").locked(blocking=False):
                pass
